"""Sync vs async vs naive-async execution in MetaWorld under simulated inference latency (issue: real-time execution).

Prints one JSON line per (executor, latency) and a last JSON line with the whole table; writes a PNG plot.
Usage: python benchmarks/latency_sweep.py [--checkpoint embedded] [--episodes 4] [--latencies 0,50,100,200]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

from PIL import Image, ImageDraw  # noqa: E402

from xr0.sim.evaluate import evaluate, load_policy, reactivity  # noqa: E402
from xr0.sim.metaworld import DEFAULT_TASKS  # noqa: E402

EXECUTORS = ("sync", "async", "naive-async")
COLORS = {"sync": (214, 39, 40), "async": (44, 160, 44), "naive-async": (31, 119, 180)}


def plot(rows: list[dict], path: str) -> None:
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
        for j, ex in enumerate(EXECUTORS):
            pts = [(X(r["latency_ms"]), Y(r[key])) for r in rows if r["executor"] == ex and r[key] is not None]
            if len(pts) > 1:
                d.line(pts, fill=COLORS[ex], width=3)
            for p in pts:
                d.ellipse([p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3], fill=COLORS[ex])
            d.text((x0 + 10, pad + 10 + 14 * j), ex, fill=COLORS[ex])
    img.save(path)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="embedded")
    ap.add_argument("--episodes", type=int, default=4)
    ap.add_argument("--latencies", default="0,50,100,200")
    ap.add_argument("--seed", type=int, default=3000)
    ap.add_argument("--plot", default="docs/latency_sweep.png")
    args = ap.parse_args()
    policy = load_policy(args.checkpoint, None)
    rows = []
    for lat in [float(x) for x in args.latencies.split(",")]:
        for ex in EXECUTORS:
            result, _ = evaluate(policy, list(DEFAULT_TASKS), args.episodes, ex, lat, args.seed, progress=False)
            rows.append(result)
            print(json.dumps(result), flush=True)
    plot(rows, args.plot)
    react = []
    for ex in EXECUTORS:
        react.append(reactivity(policy, ex, 100.0, episodes=args.episodes, seed=args.seed + 1))
        print(json.dumps(react[-1]), flush=True)
    print(json.dumps({"table": [{k: r[k] for k in ("executor", "latency_ms", "success_rate", "mean_time_to_success_s",
                                                     "idle_fraction", "boundary_discontinuity")} for r in rows],
                      "reactivity_100ms": react}))


if __name__ == "__main__":
    main()
