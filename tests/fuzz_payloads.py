"""Hostile msgpack frames for the policy server, as a hypothesis strategy (tests/test_fuzz.py, benchmarks/fuzz_server.py).

`frames(valid)` draws one (kind, bytes) from: random msgpack structures, random bytes, truncations and
concatenations of a valid request, openpi ndarray maps with random dtypes / shapes / byte counts (huge, negative,
zero), msgpack ext types, deep nesting, non-UTF-8 strings, and the valid request with one field replaced by a
random value. `send(ws, frame)` returns what the server answered, classified.
"""

from __future__ import annotations

import msgpack
import numpy as np
from hypothesis import strategies as st

from xr0.runtime import wire
from xr0.runtime.client import parse_reply

SCALARS = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=True)
           | st.text(max_size=20) | st.binary(max_size=40))
VALUES = st.recursive(SCALARS, lambda kids: st.lists(kids, max_size=5)
                      | st.dictionaries(st.text(max_size=8) | st.binary(max_size=8), kids, max_size=5), max_leaves=25)
DTYPES = st.sampled_from(["<f4", "<f8", "|u1", "<i8", "|b1", "<U3", "|S2", "|O", "<c8", "<M8[s]", "|V4", "V0",
                          "<f2", ">f4", "float32", "x", "", "<" * 40])
SHAPES = st.lists(st.one_of(st.integers(-3, 5), st.just(2**40), st.just(2**62), st.just(True)), max_size=20)


def _ndarray_map(draw) -> dict:
    shape = draw(SHAPES)
    dtype = draw(DTYPES)
    data = draw(st.binary(max_size=96))
    m = {b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": shape}
    if draw(st.booleans()):  # type confusion in one of the fields
        m[draw(st.sampled_from([b"data", b"dtype", b"shape"]))] = draw(SCALARS)
    return m


def _ext(draw) -> bytes:
    return msgpack.packb({"images": msgpack.ExtType(draw(st.integers(0, 127)), draw(st.binary(max_size=16)))})


def _nested(draw) -> bytes:
    depth = draw(st.integers(100, 5000))
    return b"\x91" * depth + b"\xc0"  # [[[...[nil]...]]]


def _bad_utf8(draw) -> bytes:
    junk = draw(st.binary(min_size=1, max_size=8).filter(lambda b: not _utf8(b)))
    return b"\x81\xa6prompt" + bytes([0xA0 | len(junk)]) + junk  # {"prompt": <str with invalid UTF-8>}


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@st.composite
def frames(draw, valid: dict) -> tuple[str, bytes]:
    """One hostile frame; `valid` is a request the server accepts."""
    good = wire.packb(valid)
    kind = draw(st.sampled_from(["structure", "bytes", "truncated", "concatenated", "ndarray", "ext", "nested",
                                 "utf8", "mutated", "mutated_array"]))
    if kind == "structure":
        return kind, msgpack.packb(draw(VALUES), use_bin_type=True)
    if kind == "bytes":
        return kind, draw(st.binary(max_size=200))
    if kind == "truncated":
        return kind, good[: draw(st.integers(0, len(good) - 1))]
    if kind == "concatenated":
        return kind, good + draw(st.sampled_from([good, b"\xc0", msgpack.packb(draw(SCALARS))]))
    if kind == "ndarray":
        field = draw(st.sampled_from(["images", "state", "action_prefix", "prefix_weights"]))
        return kind, msgpack.packb({**valid_raw(valid), field: _ndarray_map(draw)}, use_bin_type=True)
    if kind == "ext":
        return kind, _ext(draw)
    if kind == "nested":
        return kind, _nested(draw)
    if kind == "utf8":
        return kind, _bad_utf8(draw)
    field = draw(st.sampled_from(["images", "state", "prompt", "action_prefix", "prefix_weights", "steps", "seed",
                                  "unknown_field"]))
    if kind == "mutated":
        value = draw(VALUES)
    else:  # a real ndarray of a wrong shape or dtype
        shape = tuple(draw(st.lists(st.integers(0, 6), max_size=4)))
        dtype = draw(st.sampled_from([np.float32, np.float64, np.uint8, np.int64, np.bool_, np.float16]))
        value = np.zeros(shape, dtype)
        if value.size and dtype in (np.float32, np.float64) and draw(st.booleans()):
            value.flat[0] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e30]))
    return kind, wire.packb({**valid, field: value})


def valid_raw(valid: dict) -> dict:
    """The valid request with its arrays as openpi maps (what msgpack.packb needs without xr0's hook)."""
    return msgpack.unpackb(wire.packb(valid), raw=False)


def send(ws, frame: bytes) -> tuple[str, dict]:
    """("chunk", reply) or ("error", error dict) for one frame; anything else fails the caller's assertion."""
    ws.send(frame)
    reply = parse_reply(ws.recv(timeout=30))
    if "error" in reply:
        return "error", reply["error"]
    assert isinstance(reply.get("actions"), np.ndarray), reply
    return "chunk", reply
