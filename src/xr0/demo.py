"""`xr0 demo`: the main job a newcomer runs.

With the embedded MetaWorld checkpoint: asynchronous execution in MetaWorld under a simulated inference latency
(success rate, control rate held, latency, a video and an action plot). Without it (or with --synthetic): the tiny
preset on a synthetic observation, printing one chunk and its latency.
"""

from __future__ import annotations

import json
import time

import numpy as np


def add_arguments(p) -> None:
    p.add_argument("--synthetic", action="store_true", help="tiny random-weight preset on a synthetic observation")
    p.add_argument("--preset", default="tiny", help="preset for --synthetic")
    p.add_argument("--runs", type=int, default=20, help="timed chunks for --synthetic")
    p.add_argument("--episodes", type=int, default=2, help="MetaWorld episodes per task")
    p.add_argument("--seed", type=int, default=2000, help="MetaWorld placement seed (unseen in training)")
    p.add_argument("--out", default="runs/demo", help="where the video and the plot go")


def synthetic(preset: str = "tiny", runs: int = 20) -> dict:
    from . import XR0Policy

    policy = XR0Policy.from_preset(preset, seed=0)
    h, w = policy.config.image_size
    rng = np.random.default_rng(0)
    obs = dict(images={c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in policy.config.cameras},
               instruction="pick up the red block and put it in the bowl",
               state=rng.normal(size=policy.config.state_dim).astype(np.float32))
    policy.sample(**obs)  # warm-up (builds the tokenizer cache on first use)
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        chunk = policy.sample(**obs, seed=i)
        times.append((time.perf_counter() - t0) * 1000)
    np.set_printoptions(precision=3, suppress=True, linewidth=120)
    print(f"preset {preset}: action chunk {chunk.shape} (T x D), first 3 steps, first 7 dims:\n{chunk[:3, :7]}")
    out = {"preset": preset, "chunk_shape": list(chunk.shape), "runs": runs,
           "latency_p50_ms": float(np.median(times)), "latency_p95_ms": float(np.percentile(times, 95))}
    print(json.dumps(out))
    return out


def run(args) -> int:
    if not args.synthetic:
        from .sim.demo import metaworld_demo

        status = metaworld_demo(args)
        if status >= 0:
            return status
    synthetic(args.preset, args.runs)
    return 0
