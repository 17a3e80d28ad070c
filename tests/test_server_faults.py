"""The server under abusive clients, and the robot side when the server dies or freezes (docs/reliability.md).

Fast tests use an in-process server with a fake policy; the slow ones run the real `xr0 serve` as a process and
kill or freeze it (SIGKILL / SIGSTOP), and run benchmarks/soak_server.py for 30 s.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from websockets.sync.client import connect

from xr0.runtime import AsyncExecutor, InferenceFailed, RealClock, Watchdog, wire
from xr0.runtime.client import PolicyClient, parse_reply
from xr0.runtime.server import PolicyServer

from test_server import CAMS, FakePolicy, H, MAX_MSG, SD, W

ROOT = pathlib.Path(__file__).resolve().parents[1]
HZ = 20.0


def stats(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/stats")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def wait_for(predicate, timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_abusive_clients_free_every_slot_and_good_clients_are_served():
    """Half-sent frames, vanishing peers, oversize frames and idle sockets: each connection is released (GET /stats
    counts them), the process keeps serving, and no request reaches the policy half-read."""
    policy = FakePolicy()
    with PolicyServer(policy, port=0, max_message_bytes=MAX_MSG, idle_timeout_s=1.0) as srv:
        uri = f"ws://127.0.0.1:{srv.port}"
        good = PolicyClient(port=srv.port)
        obs = {"images": {c: np.zeros((H, W, 3), np.uint8) for c in CAMS}, "state": np.zeros(SD, np.float32),
               "prompt": "pick", "seed": 5}
        reference = good.infer(obs)["actions"]
        for _ in range(3):
            ws = connect(uri, compression=None, legacy=True)  # half frame: header + 10 of 1,000 bytes, then gone
            ws.recv(timeout=5)
            ws.socket.sendall(bytes([0x82, 0xFE]) + (1000).to_bytes(2, "big") + os.urandom(14))
            ws.socket.close()
            with socket.create_connection(("127.0.0.1", srv.port)) as s:  # half an HTTP upgrade
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
            ws = connect(uri, compression=None, legacy=True)  # a request, then gone before the reply
            ws.recv(timeout=5)
            ws.send(wire.packb(obs))
            ws.socket.close()
            ws = connect(uri, compression=None, legacy=True, max_size=None)  # oversize, then over the cap
            ws.recv(timeout=5)
            ws.send(b"\0" * (MAX_MSG + 1))
            assert parse_reply(ws.recv(timeout=5))["error"]["type"] == "payload_too_large"
            ws.send(b"\0" * (3 * MAX_MSG))
            ws.close()
        idle = connect(uri, compression=None, legacy=True)  # closed by the 1 s idle timeout
        idle.recv(timeout=5)
        assert np.array_equal(good.infer(obs)["actions"], reference)
        good.close()
        assert wait_for(lambda: stats(srv.port)["connections"] == 0, timeout=5.0), stats(srv.port)
        s = stats(srv.port)
        assert s["internal_errors"] == 0 and s["pending"] == 0 and s["chunks"] >= 2
        assert s["connections_opened"] >= 3 * 3 + 2  # the half-handshake never became a websocket
        idle.close()


class WireEnv:
    """A robot whose observations match the test server's metadata; records every command and its wall time."""

    def __init__(self, state_dim: int, images: dict):
        self.state_dim, self.images = state_dim, images
        self.acts, self.times = [], []

    def observe(self) -> dict:
        return {"images": self.images, "state": np.zeros(self.state_dim, np.float32), "prompt": "pick up the cube"}

    def act(self, action) -> None:
        self.acts.append(np.asarray(action))
        self.times.append(time.perf_counter())


def run_until_server_fails(port: int, images: dict, state_dim: int, fail, fail_after_s: float = 1.0,
                           stall_s: float = 0.6, max_age_s: float = 0.5):
    """An AsyncExecutor on RealClock at 20 Hz talking to the server at `port`; `fail()` is called after
    `fail_after_s`. Returns (trace, raised InferenceFailed or None, env, wall seconds from the failure to the end)."""
    client = PolicyClient(port=port, timeout_s=2.0, max_retries=1, backoff_s=0.05, open_timeout_s=1.0)
    env = WireEnv(state_dim, images)
    ex = AsyncExecutor(env, client.as_policy_fn(), RealClock(HZ), k=4,
                       watchdog=Watchdog(stall_s=stall_s, max_age_s=max_age_s))
    t_fail = [None]

    def stop():
        if t_fail[0] is None and env.times and env.times[-1] - env.times[0] >= fail_after_s:
            t_fail[0] = time.perf_counter()
            fail()
        return False

    error = None
    try:
        trace = ex.run(2000, stop=stop)
    except InferenceFailed as e:
        trace, error = e.trace, e
    after = time.perf_counter() - t_fail[0]
    client.close()  # waits for the abandoned request's own timeout (timeout_s)
    return trace, error, env, after


def check_robot_side(trace, env, max_age_s: float) -> None:
    """Commands every control period throughout; no action older than max_age_s; holds only at the end."""
    period = 1 / HZ
    assert np.diff(env.times).max() < 3 * period
    started = {r.chunk_id: r.start_tick for r in trace.inferences if r.status == "ok"}
    fresh = [t for t in trace.ticks if not t.idle]
    assert len(started) >= 3 and fresh  # it ran normally before the failure
    assert all((t.tick - started[t.chunk_id]) * period <= max_age_s + 1e-9 for t in fresh)
    last_fresh = max(t.tick for t in fresh)
    assert all(t.idle for t in trace.ticks if t.tick > last_fresh)


def test_watchdog_stops_cleanly_when_the_in_process_server_stops_or_freezes():
    freeze = FakePolicy()
    with PolicyServer(freeze, port=0) as srv:
        images = {c: np.zeros((H, W, 3), np.uint8) for c in CAMS}
        # freeze: every later inference takes 2.5 s (the server stays alive, the reply comes long after stall_s)
        trace, error, env, after = run_until_server_fails(srv.port, images, SD, lambda: setattr(freeze, "delay", 2.5))
        assert error is None and "stalled" in trace.stop_reason and after < 0.6 + 0.5
        check_robot_side(trace, env, 0.5)
        freeze.delay = 0
    srv2 = PolicyServer(FakePolicy(), port=0).start()
    trace, error, env, after = run_until_server_fails(srv2.port, images, SD, srv2.stop)
    # stopped: the connection closes, reconnecting is refused: either the watchdog's stall or max_failures ends it
    assert (error is not None) or "stalled" in (trace.stop_reason or "")
    assert after < 0.6 + 1.5
    check_robot_side(trace, env, 0.5)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["kill", "freeze"])
def test_watchdog_against_a_real_xr0_serve_killed_or_frozen(how, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = pathlib.Path(sys.executable).parent / "xr0"
    proc = subprocess.Popen([str(exe), "serve", "--preset", "tiny", "--port", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        meta = PolicyClient(port=port, max_retries=100, backoff_max_s=0.5).metadata
        h, w = meta["image_size"]
        images = {c: np.zeros((h, w, 3), np.uint8) for c in meta["cameras"]}
        fail = (lambda: proc.send_signal(signal.SIGKILL)) if how == "kill" else (lambda: proc.send_signal(signal.SIGSTOP))
        trace, error, env, after = run_until_server_fails(port, images, meta["state_dim"], fail, stall_s=0.6)
        if how == "freeze":
            assert error is None and "stalled" in trace.stop_reason
        else:
            assert error is not None or "stalled" in (trace.stop_reason or "")
        assert after < 0.6 + 1.5
        check_robot_side(trace, env, 0.5)
        assert all(a.shape == (meta["action_dim"],) for a in env.acts)
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.wait(10)


@pytest.mark.slow
def test_soak_script_30s():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "soak_server.py"), "--duration", "30",
                          "--idle-timeout-s", "3"], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert out.returncode == 0, result
    assert result["good_errors"] == 0 and result["good_requests"] > 30
    assert result["connections_at_end"] == 0 and result["server_totals"]["internal_errors"] == 0
    assert all(n > 0 for n in result["attacks"].values())
    assert result["fds"]["end"] <= result["fds"]["start"] + 2
