"""Policy server / client / wire tests: loopback only, a fake policy, a few seconds in total."""

from __future__ import annotations

import http.client
import threading
import time

import msgpack
import numpy as np
import pytest

import websockets
from websockets.sync.client import connect

from xr0.runtime import wire
from xr0.runtime.client import AuthError, PolicyClient, PolicyServerError, ServerBusyError, parse_reply
from xr0.runtime.server import PolicyServer, add_arguments, run

CAMS = ("Base View", "Left-Wrist View")
H, W, SD, AD, T = 32, 24, 8, 7, 10
MAX_MSG = 64 * 1024


class FakePolicy:
    """Same API as xr0.XR0Policy; records concurrency so tests can prove inference is serialized."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.calls = 0
        self.active = 0
        self.max_active = 0
        self._lock = threading.Lock()

    def metadata(self) -> dict:
        return {"cameras": list(CAMS), "image_size": [H, W], "state_dim": SD, "action_dim": AD, "chunk_len": T,
                "control_hz": 30.0, "norm_stats_hash": "sha256:fake", "max_prefix": 6}

    def sample(self, images, instruction, state, prefix=None, steps=5, seed=0):
        with self._lock:
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self.calls += 1
        try:
            if instruction == "policy-value-error":
                raise ValueError("instruction: the fake policy refuses this prompt")
            if instruction == "policy-crash":
                raise RuntimeError("fake crash")
            time.sleep(self.delay)
            out = np.random.default_rng(seed).standard_normal((T, AD)).astype(np.float32)
            out[:, 0] = steps
            if prefix is not None:
                out[: len(prefix)] = prefix
            return out
        finally:
            with self._lock:
                self.active -= 1


def make_obs(**over) -> dict:
    obs = {
        "images": {c: np.full((H, W, 3), i, np.uint8) for i, c in enumerate(CAMS)},
        "state": np.linspace(-1, 1, SD).astype(np.float32),
        "prompt": "pick up the cube",
    }
    obs.update(over)
    return obs


@pytest.fixture(scope="module")
def policy():
    return FakePolicy()


@pytest.fixture(scope="module")
def server(policy):
    srv = PolicyServer(policy, port=0, max_message_bytes=MAX_MSG).start()
    yield srv
    srv.stop()


def raw_conn(port, headers=None):
    ws = connect(f"ws://127.0.0.1:{port}", compression=None, proxy=None, max_size=None, additional_headers=headers,
                 legacy=True)
    first = wire.unpackb(ws.recv(timeout=5))
    return ws, first


def roundtrip(ws, payload):
    ws.send(payload)
    return parse_reply(ws.recv(timeout=5))


# ------------------------------------------------------------------------------------------------ wire


@pytest.mark.parametrize("arr", [
    np.random.default_rng(0).standard_normal((30, 32)).astype(np.float32),
    np.random.default_rng(1).integers(0, 256, (48, 64, 3)).astype(np.uint8),
    np.array([np.nan, np.inf, -np.inf, -0.0], np.float32),
    np.arange(24, dtype=np.float32).reshape(4, 6)[:, ::2],  # non-contiguous
    np.zeros((0, 5), np.float32),
    np.array(3.5, np.float64),
    np.array([1, -2], ">i4"),
    np.array([True, False]),
    np.array(["asdf", "qwer"]),
])
def test_wire_array_roundtrip_exact(arr):
    out = wire.unpackb(wire.packb({"x": arr, "nested": [arr]}))
    for got in (out["x"], out["nested"][0]):
        assert got.dtype == arr.dtype and got.shape == arr.shape
        assert got.tobytes() == np.ascontiguousarray(arr).tobytes()
        assert got.flags.writeable


def test_wire_scalars_and_openpi_layout():
    assert wire.unpackb(wire.packb(np.float32(1.5))) == np.float32(1.5)
    assert type(wire.unpackb(wire.packb(np.int64(7)))) is np.int64
    # The bytes are openpi's msgpack_numpy layout: a map with *binary* keys.
    raw = msgpack.unpackb(wire.packb(np.ones((2, 3), np.float32)), raw=False)
    assert set(raw) == {b"__ndarray__", b"data", b"dtype", b"shape"}
    assert raw[b"dtype"] == "<f4" and raw[b"shape"] == [2, 3] and len(raw[b"data"]) == 24
    # ...and a message written the way openpi's packer writes it decodes here.
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    openpi_bytes = msgpack.packb({"a": {b"__ndarray__": True, b"data": a.tobytes(), b"dtype": a.dtype.str,
                                        b"shape": a.shape}})
    np.testing.assert_array_equal(wire.unpackb(openpi_bytes)["a"], a)


def _nd(dtype: str, shape, data: bytes) -> bytes:
    return msgpack.packb({b"__ndarray__": True, b"data": data, b"dtype": dtype, b"shape": list(shape)})


@pytest.mark.parametrize("payload,needle", [
    (_nd("|O", (1,), b"\0" * 8), "not allowed"),
    (_nd("i4,O", (1,), b"\0" * 12), "not allowed"),
    (_nd("(2,)f4", (1,), b"\0" * 8), "not allowed"),
    (_nd("<f4", (2, 2), b"\0" * 12), "needs 16 bytes"),
    (_nd("<f4", (-1,), b""), "non-negative"),
    (_nd("nonsense", (1,), b"\0"), "dtype"),
    (msgpack.packb(msgpack.ExtType(5, b"x")), "ext type"),
    (msgpack.packb({"a": 1}) + b"\x01", "trailing"),
    (b"\xc1\xc1", "not valid msgpack"),
    (b"\x91" * 5000 + b"\x90", "not valid msgpack"),
])
def test_wire_rejects_unsafe_or_malformed(payload, needle):
    with pytest.raises(wire.WireError, match=needle):
        wire.unpackb(payload)


def test_wire_refuses_to_encode_object_dtype():
    with pytest.raises(wire.WireError, match="not allowed"):
        wire.packb({"x": np.array([object()], dtype=object)})
    with pytest.raises(wire.WireError):
        wire.packb({"x": {1, 2}})


# ----------------------------------------------------------------------------------------- server core


def test_metadata_on_connect(server):
    with PolicyClient("127.0.0.1", server.port) as c:
        m = c.metadata
    assert m["cameras"] == list(CAMS) and m["image_size"] == [H, W]
    assert (m["state_dim"], m["action_dim"], m["chunk_len"], m["control_hz"]) == (SD, AD, T, 30.0)
    assert m["norm_stats_hash"] == "sha256:fake" and m["protocol"] == "xr0-ws/1"
    assert m["max_message_bytes"] == MAX_MSG


def test_valid_request_actions_and_timing(server):
    with PolicyClient("127.0.0.1", server.port) as c:
        r1 = c.infer(make_obs())
        prefix = np.full((3, AD), 0.25, np.float32)
        r2 = c.infer(make_obs(action_prefix=prefix, steps=7, seed=3))
    a = r1["actions"]
    assert a.shape == (T, AD) and a.dtype == np.float32
    assert r1["server_timing"]["infer_ms"] > 0 and "queue_ms" in r1["server_timing"]
    assert r1["policy_timing"]["infer_ms"] == r1["server_timing"]["infer_ms"] and r1["seed"] >= 0
    assert "prev_total_ms" in r2["server_timing"]
    np.testing.assert_array_equal(r2["actions"][:3], prefix)
    assert r2["actions"][5, 0] == 7  # steps reached the policy


def _bad_requests():
    good = make_obs()

    def obs(**over):
        return wire.packb(make_obs(**over))

    def without(key):
        o = dict(good)
        del o[key]
        return wire.packb(o)

    imgs = dict(good["images"])
    return [
        # (name, payload, error type, substring the message must contain)
        ("garbage bytes", b"\xc1\xc1\xc1", "decode_error", "msgpack"),
        ("text frame", "hello", "decode_error", "text frame"),
        ("truncated msgpack", wire.packb(good)[:50], "decode_error", "msgpack"),
        ("not a dict", wire.packb([1, 2, 3]), "invalid_request", "map"),
        ("missing images", without("images"), "invalid_request", "images"),
        ("missing state", without("state"), "invalid_request", "state"),
        ("missing prompt", without("prompt"), "invalid_request", "prompt"),
        ("unknown field", obs(prefix=np.zeros((2, AD), np.float32)), "invalid_request", "prefix"),
        ("images not a map", obs(images=[1, 2]), "invalid_request", "images"),
        ("unknown camera", obs(images={**imgs, "Top": imgs[CAMS[0]]}), "invalid_request", "Top"),
        ("missing camera", obs(images={CAMS[0]: imgs[CAMS[0]]}), "invalid_request", CAMS[1]),
        ("image float dtype", obs(images={**imgs, CAMS[0]: imgs[CAMS[0]].astype(np.float32)}), "invalid_request",
         "uint8"),
        ("image 4 channels", obs(images={**imgs, CAMS[1]: np.zeros((H, W, 4), np.uint8)}), "invalid_request",
         CAMS[1]),
        ("image wrong size", obs(images={**imgs, CAMS[0]: np.zeros((16, 16, 3), np.uint8)}), "invalid_request",
         "image_size"),
        ("image is a list", obs(images={**imgs, CAMS[0]: [[1, 2, 3]]}), "invalid_request", CAMS[0]),
        ("state NaN", obs(state=np.full(SD, np.nan, np.float32)), "invalid_request", "state"),
        ("state inf", obs(state=np.array([np.inf] + [0] * (SD - 1), np.float64)), "invalid_request", "state"),
        ("state wrong shape", obs(state=np.zeros(SD + 1, np.float32)), "invalid_request", "state"),
        ("state a string", obs(state="zeros"), "invalid_request", "state"),
        ("prefix wrong dim", obs(action_prefix=np.zeros((3, AD + 1), np.float32)), "invalid_request",
         "action_prefix"),
        ("prefix NaN", obs(action_prefix=np.full((3, AD), np.nan, np.float32)), "invalid_request", "action_prefix"),
        ("prefix too long", obs(action_prefix=np.zeros((7, AD), np.float32)), "invalid_request", "action_prefix"),
        ("prompt not a string", obs(prompt=42), "invalid_request", "prompt"),
        ("prompt huge", obs(prompt="x" * 5000), "invalid_request", "prompt"),
        ("steps zero", obs(steps=0), "invalid_request", "steps"),
        ("seed a bool", obs(seed=True), "invalid_request", "seed"),
        ("object dtype array", msgpack.packb({"images": {}, "state": {b"__ndarray__": True, b"data": b"\0" * 8,
                                                                        b"dtype": "|O", b"shape": [1]}}),
         "decode_error", "not allowed"),
        ("ext type", msgpack.packb({"state": msgpack.ExtType(1, b"x")}), "decode_error", "ext"),
        ("oversize payload", obs(prompt="y" * (MAX_MSG + 1000)), "payload_too_large", "max_message_bytes"),
        ("policy ValueError", obs(prompt="policy-value-error"), "invalid_request", "instruction"),
        ("policy crash", obs(prompt="policy-crash"), "internal_error", "RuntimeError"),
    ]


def test_malformed_corpus_gets_errors_and_connection_survives(server):
    ws, meta = raw_conn(server.port)
    good = wire.packb(make_obs())
    cases = _bad_requests()
    assert len(cases) >= 15
    try:
        for name, payload, etype, needle in cases:
            reply = roundtrip(ws, payload)
            assert "error" in reply, name
            assert reply["error"]["type"] == etype, (name, reply)
            assert needle in reply["error"]["message"], (name, reply)
            ok = roundtrip(ws, good)
            assert ok["actions"].shape == (T, AD), name
    finally:
        ws.close()


def test_far_oversize_payload_closes_only_that_connection(server):
    ws, _ = raw_conn(server.port)
    ws.send(b"\0" * (3 * MAX_MSG))
    with pytest.raises(websockets.ConnectionClosed) as ei:
        ws.recv(timeout=5)
    assert ei.value.rcvd is not None and ei.value.rcvd.code == 1009
    with PolicyClient("127.0.0.1", server.port) as c:
        assert c.infer(make_obs())["actions"].shape == (T, AD)


def test_healthz(server):
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/healthz")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b"OK\n"
    conn.close()


def test_three_concurrent_clients_are_served_and_serialized():
    pol = FakePolicy(delay=0.01)
    with PolicyServer(pol, port=0) as srv:
        errors, counts = [], [0, 0, 0]

        def worker(i):
            try:
                with PolicyClient("127.0.0.1", srv.port) as c:
                    for k in range(6):
                        r = c.infer(make_obs(seed=i * 100 + k))
                        assert r["actions"].shape == (T, AD)
                        counts[i] += 1
            except Exception as e:  # noqa: BLE001
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
    assert not errors and counts == [6, 6, 6]
    assert pol.max_active == 1  # the policy never ran two samples at once


def test_busy_when_queue_full():
    pol = FakePolicy(delay=0.4)
    with PolicyServer(pol, port=0, max_queue=1) as srv:
        a = PolicyClient("127.0.0.1", srv.port)
        b = PolicyClient("127.0.0.1", srv.port, retry_busy=False)
        t = threading.Thread(target=a.infer, args=(make_obs(),))
        t.start()
        deadline = time.time() + 5
        while pol.active == 0 and time.time() < deadline:
            time.sleep(0.005)
        with pytest.raises(ServerBusyError, match="busy"):
            b.infer(make_obs())
        t.join(5)
        assert b.infer(make_obs())["actions"].shape == (T, AD)  # queue drained: served again
        a.close()
        b.close()


# ------------------------------------------------------------------------------------------------ auth


def test_token_required_when_configured(policy):
    with PolicyServer(policy, port=0, token="s3cret") as srv:
        with pytest.raises(AuthError, match="requires a token"):
            PolicyClient("127.0.0.1", srv.port)
        with pytest.raises(AuthError, match="401"):
            PolicyClient("127.0.0.1", srv.port, token="wrong")
        with PolicyClient("127.0.0.1", srv.port, token="s3cret") as c:
            assert c.metadata["state_dim"] == SD
            assert c.infer(make_obs())["actions"].shape == (T, AD)

        # Token in the first message instead of a header; a bad token is an error reply, not a crash.
        ws, first = raw_conn(srv.port)
        assert first == {"auth_required": True, "protocol": "xr0-ws/1", "server": "xr0"}
        r = roundtrip(ws, wire.packb(make_obs()))
        assert r["error"]["type"] == "auth_error" and "token" in r["error"]["message"]
        r = roundtrip(ws, wire.packb({"token": "wrong"}))
        assert r["error"]["type"] == "auth_error"
        meta = roundtrip(ws, wire.packb({"token": "s3cret"}))
        assert meta["chunk_len"] == T
        assert roundtrip(ws, wire.packb(make_obs()))["actions"].shape == (T, AD)
        ws.close()

        # Three failures close the connection.
        ws, _ = raw_conn(srv.port)
        for _ in range(3):
            roundtrip(ws, wire.packb({"token": "nope"}))
        with pytest.raises(websockets.ConnectionClosed):
            ws.recv(timeout=5)

        # Health checks need no token.
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()


# ----------------------------------------------------------------------------------------- client side


def test_client_reconnects_after_server_restart(policy):
    srv = PolicyServer(policy, port=0).start()
    port = srv.port
    c = PolicyClient("127.0.0.1", port, backoff_s=0.05, max_retries=8)
    assert c.infer(make_obs())["actions"].shape == (T, AD)
    srv.stop()
    srv2 = PolicyServer(policy, port=port)
    threading.Timer(0.2, srv2.start).start()  # comes back while the client is backing off
    try:
        assert c.infer(make_obs())["actions"].shape == (T, AD)
        assert c.reconnects == 1
    finally:
        c.close()
        time.sleep(0.3)
        srv2.stop()


def test_client_gives_up_after_bounded_retries():
    with pytest.raises(ConnectionError, match="after 3 tries"):
        PolicyClient("127.0.0.1", 1, max_retries=2, backoff_s=0.01)


def test_client_raises_clear_error_and_idle_timeout(policy):
    with PolicyServer(policy, port=0, idle_timeout_s=0.3) as srv:
        c = PolicyClient("127.0.0.1", srv.port, backoff_s=0.01)
        with pytest.raises(PolicyServerError, match=r"\[invalid_request\]: state: expected shape") as ei:
            c.infer(make_obs(state=np.zeros(3, np.float32)))
        assert ei.value.field == "state"
        time.sleep(0.6)  # server closes the idle connection; the client reconnects transparently
        assert c.infer(make_obs())["actions"].shape == (T, AD)
        assert c.reconnects == 1
        c.close()


def test_as_policy_fn(server):
    with PolicyClient("127.0.0.1", server.port) as c:
        fn = c.as_policy_fn()
        obs = make_obs()
        prefix = np.ones((2, AD), np.float32)
        out = fn(obs, prefix)
        assert out.shape == (T, AD)
        np.testing.assert_array_equal(out[:2], prefix)
        assert fn(obs, None).shape == (T, AD)
        assert "action_prefix" not in obs  # caller's dict untouched


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_arguments_and_load_failure(monkeypatch):
    import argparse

    from xr0.runtime import server as server_mod

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--preset", "tiny", "--port", "0", "--max-message-mb", "2"])
    assert (args.host, args.port, args.max_message_mb, args.preset, args.checkpoint) == ("127.0.0.1", 0, 2.0, "tiny", None)
    with pytest.raises(SystemExit):
        p.parse_args(["--preset", "tiny", "--checkpoint", "x"])  # exactly one policy source

    def boom(_args):
        raise RuntimeError("no such preset")

    monkeypatch.setattr(server_mod, "_build_policy", boom)
    assert run(args) == 2


def test_real_tiny_policy_over_the_wire():
    """The real XR0Policy behind the server: metadata, a chunk equal to a direct call, and a bad request survived."""
    from xr0 import XR0Policy

    policy = XR0Policy.from_preset("tiny", seed=0)
    meta = policy.metadata()
    h, w = meta["image_size"]
    rng = np.random.default_rng(0)
    obs = {"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in meta["cameras"]},
           "state": rng.normal(size=meta["state_dim"]).astype(np.float32), "prompt": "push the block"}
    direct = policy.sample(images=obs["images"], instruction=obs["prompt"], state=obs["state"], seed=0)
    with PolicyServer(policy, port=0) as server:
        client = PolicyClient("127.0.0.1", server.port)
        try:
            assert client.metadata["norm_stats_hash"] == meta["norm_stats_hash"]
            with pytest.raises(PolicyServerError, match="state"):
                client.infer({**obs, "state": np.full(meta["state_dim"], np.nan, np.float32)})
            reply = client.infer({**obs, "seed": 0})
        finally:
            client.close()
    assert np.array_equal(reply["actions"], direct)
