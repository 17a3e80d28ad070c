"""Noise seeds from observations: the official evaluation clients' `hash_data_to_seed`, in one place.

The official clients (Xiaomi-Robotics-0's eval_libero / eval_calvin / eval_simplerenv) seed every request's flow
noise with SHA-256 of the request payload's canonical JSON. xr0's benchmark clients (xr0.sim) hash the same payloads
to replay the official noise; `xr0 serve --seed-mode observation` and ChunkPolicy hash xr0's own request fields.
numpy, PIL and the standard library only (the server imports it without torch).
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
from PIL import Image


def _encode(obj):
    """The official clients' `custom_encoder`: arrays as dtype, shape and the hex of their bytes; PIL images as
    mode, size (W, H) and the MD5 of their bytes; sets sorted."""
    if isinstance(obj, np.ndarray):
        return {"__type__": "numpy", "dtype": str(obj.dtype), "shape": obj.shape, "data": obj.tobytes().hex()}
    if isinstance(obj, Image.Image):
        return {"__type__": "PIL.Image", "mode": obj.mode, "size": obj.size,
                "content_hash": hashlib.md5(obj.tobytes()).hexdigest()}
    if isinstance(obj, set):
        return sorted(obj)
    raise TypeError(f"cannot hash a {type(obj).__name__} into an observation seed")


def observation_seed(payload: dict, nbytes: int = 4) -> int:
    """The official clients' hash_data_to_seed: SHA-256 of the payload's canonical JSON (sorted keys, compact,
    arrays and images as `_encode` writes them), modulo 2**(8 * nbytes). Fed the payload an official client sends
    (its keys, dtypes and PIL images) it gives that client's seed; any payload gives a deterministic seed."""
    text = json.dumps(payload, default=_encode, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return int(hashlib.sha256(text.encode("utf-8")).hexdigest(), 16) % (2 ** (8 * nbytes))


def request_seed(robot_type: str | None, state: np.ndarray, images: dict, prompt: str) -> int:
    """The seed of an xr0 request (not an official payload): SHA-256 of its robot type, prompt, the state (float32)
    and the images (name, dtype, shape and raw bytes, cameras sorted), modulo 2**32. The same observation gives the
    same chunk; hashing the bytes directly keeps it well under a millisecond for two camera images."""
    h = hashlib.sha256(json.dumps([robot_type, prompt], ensure_ascii=False).encode("utf-8"))
    arrays = [("state", np.ascontiguousarray(state, np.float32))]
    arrays += [(str(k), np.ascontiguousarray(images[k])) for k in sorted(images, key=str)]
    for name, arr in arrays:
        h.update(f"{name}:{arr.dtype.str}:{arr.shape}".encode("utf-8"))
        h.update(arr.tobytes())
    return int.from_bytes(h.digest(), "big") % 2**32
