"""msgpack + numpy wire encoding, byte-compatible with openpi's ``msgpack_numpy``.

Why its own module: both the server and the client (and any third-party openpi client) must agree on
one encoding, and the decoder is the first thing untrusted bytes touch, so it is kept small and strict.

Format (same as openpi): an ndarray travels as a msgpack map with *binary* keys
``{b"__ndarray__": True, b"data": <raw C-order bytes>, b"dtype": dtype.str, b"shape": [..]}``
and a numpy scalar as ``{b"__npgeneric__": True, b"data": <python value>, b"dtype": dtype.str}``.

Security: never pickle. Only plain numeric, bool and fixed-width string dtypes are accepted (object,
void/structured, complex, datetime are refused); the byte count must match the declared shape exactly;
msgpack ext types are refused; map keys must be str or bytes.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack
import numpy as np

__all__ = ["WireError", "packb", "unpackb", "encode_array", "decode_array", "ALLOWED_DTYPE_KINDS"]

# b: bool, i/u: ints, f: floats, U/S: fixed-width strings (openpi round-trips string arrays too).
ALLOWED_DTYPE_KINDS = frozenset("biufUS")
MAX_NDIM = 16

_ND = b"__ndarray__"
_NG = b"__npgeneric__"


class WireError(ValueError):
    """Raised for bytes that are not a valid message, or values that cannot be encoded safely."""


def _check_dtype(dtype: np.dtype, where: str) -> np.dtype:
    if dtype.hasobject or dtype.kind not in ALLOWED_DTYPE_KINDS or dtype.itemsize == 0:
        raise WireError(
            f"{where}: dtype {dtype.str!r} (kind {dtype.kind!r}) is not allowed; "
            f"use bool, int, uint, float or fixed-width string arrays"
        )
    return dtype


def _parse_dtype(raw: Any, where: str) -> np.dtype:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    if not isinstance(raw, str) or len(raw) > 16:
        raise WireError(f"{where}: 'dtype' must be a short numpy dtype string like '<f4', got {raw!r:.40}")
    try:
        dtype = np.dtype(raw)
    except (TypeError, ValueError) as e:
        raise WireError(f"{where}: unknown dtype {raw!r}") from e
    return _check_dtype(dtype, where)


def encode_array(obj: Any) -> Any:
    """msgpack ``default`` hook: ndarray / numpy scalar -> openpi dict; anything else is refused."""
    if isinstance(obj, np.ndarray):
        _check_dtype(obj.dtype, "encode")
        return {_ND: True, b"data": np.ascontiguousarray(obj).tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        _check_dtype(obj.dtype, "encode")
        return {_NG: True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise WireError(f"encode: cannot serialize object of type {type(obj).__name__}")


def _get(obj: dict, key: bytes) -> Any:
    if key in obj:
        return obj[key]
    return obj.get(key.decode())


def decode_array(obj: dict) -> Any:
    """msgpack ``object_hook``: turn an openpi ndarray/scalar map back into numpy; other maps pass through."""
    if _ND in obj or "__ndarray__" in obj:
        dtype = _parse_dtype(_get(obj, b"dtype"), "ndarray")
        shape, data = _get(obj, b"shape"), _get(obj, b"data")
        if not isinstance(shape, (list, tuple)) or len(shape) > MAX_NDIM:
            raise WireError(f"ndarray: 'shape' must be a list of at most {MAX_NDIM} ints, got {shape!r:.60}")
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise WireError(f"ndarray: 'shape' entries must be non-negative ints, got {shape!r:.60}")
        if not isinstance(data, bytes):
            raise WireError(f"ndarray: 'data' must be binary, got {type(data).__name__}")
        expected = math.prod(shape) * dtype.itemsize
        if expected != len(data):
            raise WireError(
                f"ndarray: shape {tuple(shape)} x dtype {dtype.str} needs {expected} bytes, got {len(data)}"
            )
        # copy(): own, writable memory instead of a read-only view into the message buffer.
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()
    if _NG in obj or "__npgeneric__" in obj:
        dtype = _parse_dtype(_get(obj, b"dtype"), "npgeneric")
        data = _get(obj, b"data")
        if not isinstance(data, (bool, int, float, str, bytes)):
            raise WireError(f"npgeneric: 'data' must be a scalar, got {type(data).__name__}")
        try:
            return dtype.type(data)
        except (TypeError, ValueError, OverflowError) as e:
            raise WireError(f"npgeneric: cannot make a {dtype.str} scalar from {data!r:.40}") from e
    return obj


def _refuse_ext(code: int, data: bytes) -> Any:
    raise WireError(f"msgpack ext type {code} is not allowed")


def packb(obj: Any) -> bytes:
    """Encode a message (dicts/lists/str/numbers/bytes/None plus numpy arrays) to msgpack bytes."""
    try:
        return msgpack.packb(obj, default=encode_array, use_bin_type=True)
    except WireError:
        raise
    except (TypeError, ValueError, OverflowError) as e:
        raise WireError(f"encode: {e}") from e


def unpackb(data: bytes | bytearray | memoryview) -> Any:
    """Decode msgpack bytes from an untrusted peer; any malformation becomes a ``WireError``."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError(f"expected a binary msgpack frame, got {type(data).__name__}")
    try:
        return msgpack.unpackb(
            data, object_hook=decode_array, ext_hook=_refuse_ext, raw=False, strict_map_key=True, use_list=True
        )
    except WireError:
        raise
    except msgpack.ExtraData as e:
        raise WireError("not a single msgpack object: trailing bytes after the message") from e
    except (msgpack.UnpackException, ValueError, TypeError, UnicodeDecodeError, RecursionError) as e:
        raise WireError(f"not valid msgpack: {type(e).__name__}: {e}"[:300]) from e
    except Exception as e:  # noqa: BLE001 - msgpack raises assorted errors on garbage input
        raise WireError(f"not valid msgpack: {type(e).__name__}"[:300]) from e
