"""Sync vs async vs naive-async vs inference-time RTC in MetaWorld under simulated inference latency.

Prints one JSON line per (executor, latency) and a last JSON line with the whole table; writes a PNG plot.
Usage: python benchmarks/latency_sweep.py [--checkpoint embedded] [--episodes 4] [--latencies 0,50,100,200]
       [--executors sync,async,naive-async,rtc] [--jobs 2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os

os.environ.setdefault("MUJOCO_GL", "egl")

from PIL import Image, ImageDraw  # noqa: E402

from xr0.sim.metaworld_eval import EXECUTORS, checkpoint_setup, evaluate, load_policy, render_view  # noqa: E402

COLORS = {"sync": (214, 39, 40), "async": (44, 160, 44), "naive-async": (31, 119, 180), "rtc": (148, 103, 189)}


def plot(rows: list[dict], path: str, executors: list[str]) -> None:
    """Two panels: success rate and mean time to success against latency, one line per executor."""
    w, h, pad = 900, 360, 50
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    lats = sorted({r["latency_ms"] for r in rows})
    panels = [("success rate", "success_rate", 0.0, 1.0),
              ("mean time to success (s)", "mean_time_to_success_s", 0.0,
               max((r["mean_time_to_success_s"] or 0) for r in rows) * 1.1 or 1.0)]
    pw = (w - 3 * pad) // 2
    for i, (title, key, lo, hi) in enumerate(panels):
        x0 = pad + i * (pw + pad)
        d.rectangle([x0, pad, x0 + pw, h - pad], outline="black")
        d.text((x0, pad - 20), title, fill="black")
        d.text((x0 - 30, pad), f"{hi:.2f}", fill="black")
        d.text((x0 - 30, h - pad - 10), f"{lo:.2f}", fill="black")
        X = lambda lat: x0 + pw * (lats.index(lat) / max(len(lats) - 1, 1))  # noqa: E731
        Y = lambda v: h - pad - (h - 2 * pad) * (v - lo) / (hi - lo)  # noqa: E731
        for lat in lats:
            d.text((X(lat) - 10, h - pad + 5), f"{lat:g}ms", fill="black")
        for j, ex in enumerate(executors):
            pts = [(X(r["latency_ms"]), Y(r[key])) for r in rows if r["executor"] == ex and r[key] is not None]
            if len(pts) > 1:
                d.line(pts, fill=COLORS[ex], width=3)
            for p in pts:
                d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=COLORS[ex])
            d.text((x0 + 10, pad + 10 + 14 * j), ex, fill=COLORS[ex])
    img.save(path)


_WORKER: dict = {}


def _load(checkpoint: str) -> None:
    """Per process: one thread (cells run side by side), the policy and its MetaWorld setup, loaded once."""
    import torch

    torch.set_num_threads(1)
    setup = checkpoint_setup(checkpoint)
    _WORKER.update(policy=load_policy(checkpoint, None), tasks=setup["tasks"], view=render_view(setup))


def _cell(job: tuple) -> dict:
    """(executor, latency_ms, episodes, seed) -> that cell's result."""
    ex, lat, episodes, seed = job
    w = _WORKER
    return evaluate(w["policy"], w["tasks"], episodes, ex, lat, seed, progress=False, **w["view"])[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="embedded")
    ap.add_argument("--episodes", type=int, default=4, help="episodes per task and cell")
    ap.add_argument("--latencies", default="0,50,100,200")
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--plot", default="docs/latency_sweep.png")
    ap.add_argument("--executors", default=",".join(COLORS), help=f"comma-separated subset of {list(COLORS)}")
    ap.add_argument("--jobs", type=int, default=1, help="cells evaluated in parallel, one process and thread each")
    args = ap.parse_args()
    executors = args.executors.split(",")
    unknown = sorted(set(executors) - set(EXECUTORS))
    if unknown:
        ap.error(f"unknown executors {unknown}; choose from {sorted(EXECUTORS)}")
    cells = [(ex, float(lat), args.episodes, args.seed) for lat in args.latencies.split(",") for ex in executors]
    if args.jobs > 1:
        pool = multiprocessing.get_context("spawn").Pool(args.jobs, initializer=_load, initargs=(args.checkpoint,))
        results = pool.imap(_cell, cells)
    else:
        _load(args.checkpoint)
        pool, results = None, map(_cell, cells)
    rows = []
    for result in results:
        rows.append(result)
        print(json.dumps(result), flush=True)
    if pool is not None:
        pool.close()
    plot(rows, args.plot, executors)
    print(json.dumps({"table": [{k: r[k] for k in ("executor", "latency_ms", "success_rate", "mean_time_to_success_s",
                                                     "idle_fraction", "boundary_discontinuity")} for r in rows]}))


if __name__ == "__main__":
    main()
