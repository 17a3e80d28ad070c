"""Soak test of ``xr0 serve``: the real policy in its own process, well-behaved and abusive clients, for a bounded time.

    python benchmarks/soak_server.py                       # 10 minutes, tiny preset, 3 good + 4 abusive clients
    python benchmarks/soak_server.py --duration 60 --checkpoint embedded

The server runs as ``xr0 serve`` (a subprocess, so its RSS and open file descriptors are its own). Good clients
(``PolicyClient``) send one observation after another and record each latency and error. Abusive clients loop over
one attack each until the end:
  slow_reader   pipelines 5 requests, reads nothing for 2 s, then reads the replies one every 0.3 s
  half_frame    opens a websocket, sends a frame header and part of its payload, then drops the TCP socket
  vanish        half an HTTP upgrade then close; or a full request and close before the reply
  oversize      a frame just over max_message_bytes (refused with a reply), then one over the transport cap
                (the server closes the connection)
  idle          opens a websocket and sends nothing (closed by the server's idle timeout)
Every 2 s the script samples the server's RSS, open fds and ``GET /stats``. After the clients stop it waits one idle
timeout and checks that every connection slot is free. Prints one JSON line; exits 1 if a good client saw an error, the
server died, or slots stayed taken.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
from websockets.sync.client import connect

from xr0.runtime import wire
from xr0.runtime.client import PolicyClient, parse_reply

ATTACKS = ("slow_reader", "half_frame", "vanish", "oversize", "idle")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, source: list[str], idle_timeout_s: float, max_message_mb: float) -> subprocess.Popen:
    exe = os.path.join(os.path.dirname(sys.executable), "xr0")
    cmd = [exe, "serve", *source, "--port", str(port), "--idle-timeout-s", str(idle_timeout_s),
           "--max-message-mb", str(max_message_mb)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"xr0 serve exited with {proc.returncode} before listening: {' '.join(cmd)}")
        try:
            if http_get(port, "/healthz").startswith("OK"):
                return proc
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise TimeoutError("xr0 serve did not listen within 120 s")


def http_get(port: int, path: str) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def process_sample(pid: int) -> tuple[float, int]:
    """(RSS in MB, open file descriptors) of a Linux process."""
    with open(f"/proc/{pid}/status") as f:
        rss_kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return rss_kb / 1024, len(os.listdir(f"/proc/{pid}/fd"))


def observation(meta: dict, rng: np.random.Generator) -> dict:
    h, w = meta["image_size"]
    obs = {"images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in meta["cameras"]},
           "state": rng.normal(size=meta["state_dim"]).astype(np.float32), "prompt": "pick up the red block"}
    if meta.get("max_prefix", 0) > 0:
        obs["action_prefix"] = np.zeros((min(3, meta["max_prefix"]), meta["action_dim"]), np.float32)
    return obs


class Soak:
    def __init__(self, port: int, meta: dict, deadline: float, idle_timeout_s: float, max_message_bytes: int):
        self.port, self.meta, self.deadline = port, meta, deadline
        self.idle_timeout_s, self.max_message_bytes = idle_timeout_s, max_message_bytes
        self.uri = f"ws://127.0.0.1:{port}"
        self.lock = threading.Lock()
        self.latencies: list[tuple[float, float]] = []  # (time since start, seconds)
        self.good_errors: list[str] = []
        self.attacks = {a: 0 for a in ATTACKS}
        self.attack_outcomes: dict[str, dict[str, int]] = {a: {} for a in ATTACKS}
        self.t0 = time.monotonic()

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def note(self, attack: str, outcome: str, new: bool = True) -> None:
        """Count one outcome; `new` = it is the first outcome of a new attack."""
        with self.lock:
            self.attacks[attack] += int(new)
            d = self.attack_outcomes[attack]
            d[outcome] = d.get(outcome, 0) + 1

    # ---- well-behaved
    def good_client(self, seed: int, clients: list) -> None:
        rng = np.random.default_rng(seed)
        client = PolicyClient(port=self.port, timeout_s=60, max_retries=0, retry_busy=True)
        clients.append(client)
        while self.left() > 0:
            obs = observation(self.meta, rng)
            t = time.monotonic()
            try:
                actions = client.infer(obs)["actions"]
                if actions.shape != (self.meta["chunk_len"], self.meta["action_dim"]) or not np.isfinite(actions).all():
                    raise ValueError(f"bad chunk {actions.shape}")
            except Exception as e:  # noqa: BLE001 - every failure of a good client is reported
                with self.lock:
                    self.good_errors.append(f"{type(e).__name__}: {e}"[:300])
                time.sleep(0.5)
                continue
            with self.lock:
                self.latencies.append((t - self.t0, time.monotonic() - t))

    # ---- abusive
    def _ws(self):
        return connect(self.uri, compression=None, open_timeout=10, max_size=2**26, legacy=True)

    def slow_reader(self, rng) -> None:
        with self._ws() as ws:
            ws.recv(timeout=10)  # metadata
            payload = wire.packb(observation(self.meta, rng))
            for _ in range(5):
                ws.send(payload)
            time.sleep(2.0)
            got = 0
            for _ in range(5):
                reply = parse_reply(ws.recv(timeout=60))
                got += "actions" in reply or "error" in reply
                time.sleep(0.3)
        self.note("slow_reader", f"{got}_replies")

    def half_frame(self, rng) -> None:
        ws = self._ws()
        ws.recv(timeout=10)
        # a masked binary frame announcing 1,000 bytes (0x82, 0xFE, len16), its mask, and only 10 payload bytes
        header = bytes([0x82, 0xFE]) + (1000).to_bytes(2, "big") + os.urandom(4)
        ws.socket.sendall(header + os.urandom(10))
        time.sleep(float(rng.uniform(0.1, 1.0)))
        ws.socket.close()  # no close frame: the peer just vanishes
        self.note("half_frame", "dropped")

    def vanish(self, rng) -> None:
        if rng.random() < 0.5:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n")
            self.note("vanish", "half_handshake")
        else:
            ws = self._ws()
            ws.recv(timeout=10)
            ws.send(wire.packb(observation(self.meta, rng)))
            ws.socket.close()  # gone before the reply is written
            self.note("vanish", "before_reply")

    def oversize(self, rng) -> None:
        with self._ws() as ws:
            ws.recv(timeout=10)
            ws.send(b"\x00" * (self.max_message_bytes + 1))
            reply = parse_reply(ws.recv(timeout=30))
            kind = reply.get("error", {}).get("type") if isinstance(reply, dict) else None
            self.note("oversize", f"reply_{kind}")
            try:
                ws.send(b"\x00" * (2 * self.max_message_bytes + 1))
                ws.recv(timeout=30)
                self.note("oversize", "over_cap_answered", new=False)
            except Exception as e:  # noqa: BLE001 - the expected outcome: the server closed the connection
                code = getattr(getattr(e, "rcvd", None), "code", None)
                self.note("oversize", f"over_cap_closed_{code}", new=False)

    def idle(self, rng) -> None:
        ws = self._ws()
        ws.recv(timeout=10)
        try:
            ws.recv(timeout=self.idle_timeout_s + 10)
            self.note("idle", "unexpected_frame")
        except Exception as e:  # noqa: BLE001 - closed by the server's idle timeout
            code = getattr(getattr(e, "rcvd", None), "code", None)
            self.note("idle", f"closed_{code}")
        finally:
            ws.close()

    def abuser(self, attack: str, seed: int) -> None:
        rng = np.random.default_rng(seed)
        fn = getattr(self, attack)
        while self.left() > 0:
            try:
                fn(rng)
            except Exception as e:  # noqa: BLE001 - counted: an attack the server answered in an unexpected way
                self.note(attack, f"client_saw_{type(e).__name__}")
            time.sleep(float(rng.uniform(0.05, 0.5)))


def minute_stats(latencies: list[tuple[float, float]], duration: float) -> list[dict]:
    out = []
    width = 60.0 if duration >= 120 else duration / 2
    for i in range(int(np.ceil(duration / width))):
        xs = [lat for t, lat in latencies if i * width <= t < (i + 1) * width]
        if xs:
            out.append({"from_s": round(i * width), "requests": len(xs),
                        "p50_ms": round(float(np.percentile(xs, 50)) * 1e3, 1),
                        "p95_ms": round(float(np.percentile(xs, 95)) * 1e3, 1)})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (default 10 minutes)")
    p.add_argument("--good", type=int, default=3, help="well-behaved clients")
    p.add_argument("--attacks", default=",".join(ATTACKS), help=f"abusive clients, one per name: {','.join(ATTACKS)}")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", default="tiny")
    src.add_argument("--checkpoint")
    p.add_argument("--idle-timeout-s", type=float, default=10.0, help="the server's idle timeout")
    p.add_argument("--max-message-mb", type=float, default=2.0, help="the server's message limit")
    args = p.parse_args(argv)
    attacks = [a for a in args.attacks.split(",") if a]
    unknown = sorted(set(attacks) - set(ATTACKS))
    if unknown:
        p.error(f"unknown attack(s) {unknown}; choose from {ATTACKS}")

    port = free_port()
    source = ["--checkpoint", args.checkpoint] if args.checkpoint else ["--preset", args.preset]
    server = start_server(port, source, args.idle_timeout_s, args.max_message_mb)
    samples: list[dict] = []
    try:
        meta = PolicyClient(port=port).metadata
        soak = Soak(port, meta, time.monotonic() + args.duration, args.idle_timeout_s, int(args.max_message_mb * 2**20))
        good_clients: list[PolicyClient] = []
        threads = [threading.Thread(target=soak.good_client, args=(i, good_clients), daemon=True) for i in range(args.good)]
        threads += [threading.Thread(target=soak.abuser, args=(a, 100 + i), daemon=True) for i, a in enumerate(attacks)]
        for t in threads:
            t.start()
        while soak.left() > 0 and server.poll() is None:
            rss, fds = process_sample(server.pid)
            samples.append({"t": round(time.monotonic() - soak.t0, 1), "rss_mb": round(rss, 1), "fds": fds,
                            **json.loads(http_get(port, "/stats"))})
            time.sleep(min(2.0, max(soak.left(), 0.01)))
        for t in threads:
            t.join(timeout=args.idle_timeout_s + 90)
        for c in good_clients:
            c.close()
        time.sleep(args.idle_timeout_s + 2)  # abusive connections left open are closed by the idle timeout by then
        final = json.loads(http_get(port, "/stats")) if server.poll() is None else None
        rss_end, fds_end = process_sample(server.pid) if server.poll() is None else (None, None)
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()

    duration = args.duration
    per_minute = minute_stats(soak.latencies, duration)
    first = next((s for s in samples if s["t"] >= min(60.0, duration / 2)), samples[-1])  # after warm-up
    result = {
        "duration_s": duration, "source": " ".join(source), "good_clients": args.good, "abusive": attacks,
        "good_requests": len(soak.latencies), "good_errors": len(soak.good_errors), "good_error_examples": soak.good_errors[:3],
        "latency_by_period": per_minute,
        "p95_first_over_last": (round(per_minute[-1]["p95_ms"] / per_minute[0]["p95_ms"], 2)
                                if len(per_minute) > 1 else None),
        "attacks": soak.attacks, "attack_outcomes": soak.attack_outcomes,
        "rss_mb": {"start": samples[0]["rss_mb"], "at_1_min": first["rss_mb"], "max": max(s["rss_mb"] for s in samples),
                   "end": rss_end and round(rss_end, 1)},
        "fds": {"start": samples[0]["fds"], "max": max(s["fds"] for s in samples), "end": fds_end},
        "max_connections_seen": max(s["connections"] for s in samples),
        "connections_at_end": final and final["connections"],
        "server_totals": final, "server_alive": final is not None,
        "server_exit_code_on_sigterm": server.returncode,
    }
    print(json.dumps(result))
    ok = result["good_errors"] == 0 and final is not None and final["connections"] == 0 and final["internal_errors"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
