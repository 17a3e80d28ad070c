"""Load test for ``xr0 serve``: N concurrent clients x R requests against a server on 127.0.0.1.

Why: the server serializes inference on one worker, so per-request latency under load is queueing +
inference + wire cost. This measures that end to end and prints one JSON line, e.g.

    python benchmarks/bench_server_load.py --clients 3 --requests 50            # fake policy (default)
    python benchmarks/bench_server_load.py --policy preset --preset tiny        # real model, random weights

Bounded: at most 64 clients x 10,000 requests, and every client stops at --max-seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time

import numpy as np

from xr0.runtime.client import PolicyClient
from xr0.runtime.server import PolicyServer


class FakePolicy:
    """Stands in for xr0.XR0Policy (same API); sleeps ``delay_s`` to mimic inference time."""

    def __init__(self, delay_s: float, image_size=(256, 256), cameras=("Base View", "Left-Wrist View")):
        self.delay_s = delay_s
        self.image_size = list(image_size)
        self.cameras = list(cameras)

    def metadata(self) -> dict:
        return {"cameras": self.cameras, "image_size": self.image_size, "state_dim": 32, "action_dim": 32,
                "chunk_len": 30, "control_hz": 30.0, "norm_stats_hash": "fake", "max_prefix": 6}

    def sample(self, images, instruction, state, prefix=None, steps=5, seed=0):
        time.sleep(self.delay_s)
        return np.random.default_rng(seed).standard_normal((30, 32)).astype(np.float32)


def _percentile(xs: list[float], q: float) -> float | None:
    return round(float(np.percentile(xs, q)), 3) if xs else None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--requests", type=int, default=50, help="requests per client")
    p.add_argument("--policy", choices=("fake", "preset"), default="fake")
    p.add_argument("--preset", default="tiny", help="preset name for --policy preset")
    p.add_argument("--delay-ms", type=float, default=5.0, help="fake policy inference time")
    p.add_argument("--prefix", type=int, default=3, help="action prefix length sent with each request (0 = none)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="wall-clock bound for the whole run")
    args = p.parse_args(argv)
    clients = max(1, min(args.clients, 64))
    requests = max(1, min(args.requests, 10_000))

    if args.policy == "fake":
        policy = FakePolicy(args.delay_ms / 1e3)
    else:
        from xr0 import XR0Policy

        policy = XR0Policy.from_preset(args.preset)

    server = PolicyServer(policy, host="127.0.0.1", port=0, max_queue=max(8, clients)).start()
    meta = server.metadata
    h, w = meta["image_size"]
    rng = np.random.default_rng(0)
    obs = {
        "images": {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in meta["cameras"]},
        "state": np.zeros(meta["state_dim"], np.float32),
        "prompt": "pick up the red block",
    }
    if args.prefix > 0:
        obs["action_prefix"] = np.zeros((min(args.prefix, meta.get("max_prefix", args.prefix)), meta["action_dim"]),
                                        np.float32)

    latencies: list[float] = []
    infer_ms: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    deadline = time.monotonic() + args.max_seconds

    def worker(i: int) -> None:
        try:
            client = PolicyClient("127.0.0.1", server.port, timeout_s=args.max_seconds, retry_busy=True)
        except Exception as e:  # noqa: BLE001 - counted, reported
            with lock:
                errors.append(f"connect: {e}")
            return
        with client:
            for k in range(requests):
                if time.monotonic() > deadline:
                    break
                t0 = time.perf_counter()
                try:
                    r = client.infer({**obs, "seed": i * requests + k})
                    dt = (time.perf_counter() - t0) * 1e3
                    with lock:
                        latencies.append(dt)
                        infer_ms.append(r["server_timing"]["infer_ms"])
                except Exception as e:  # noqa: BLE001
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}"[:200])

    t_start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()) + 5)
    wall = time.perf_counter() - t_start
    server.stop()

    result = {
        "bench": "server_load",
        "policy": args.policy if args.policy == "fake" else f"preset:{args.preset}",
        "clients": clients,
        "requests_per_client": requests,
        "completed": len(latencies),
        "errors": len(errors),
        "p50_ms": _percentile(latencies, 50),
        "p95_ms": _percentile(latencies, 95),
        "max_ms": round(max(latencies), 3) if latencies else None,
        "server_infer_p50_ms": _percentile(infer_ms, 50),
        "throughput_rps": round(len(latencies) / wall, 2) if wall > 0 else None,
        "wall_s": round(wall, 3),
        "image_size": [h, w],
        "cameras": len(meta["cameras"]),
    }
    if errors:
        result["first_error"] = errors[0]
    print(json.dumps(result))
    return 0 if not errors and len(latencies) == clients * requests else 1


if __name__ == "__main__":
    sys.exit(main())
