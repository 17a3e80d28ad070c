"""Reactivity under simulated latency: reach-v3 with the goal moved mid-episode, per executor and chunk source.

"policy" chunks come from the checkpoint; "expert" chunks from an oracle that reads the true goal (MetaWorld's
scripted reach expert rolled out on a kinematic hand model), which isolates what the execution scheme itself costs
in reaction time. The move tick steps through --move-at, --move-at + 1, ... over the episodes, so it falls at every
phase of the execution cycle. Prints one JSON line per cell and a last JSON line with all of them.
Usage: python benchmarks/reactivity.py [--checkpoint embedded] [--episodes 14] [--latency-ms 100] [--k 10]
       [--executors sync,async,naive-async,rtc] [--chunkers expert,policy]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

from xr0.sim.evaluate import EXECUTORS, checkpoint_setup, load_policy, reactivity, render_view  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="embedded")
    ap.add_argument("--episodes", type=int, default=14, help="episodes per cell (14 covers a sync cycle at k=10, 100 ms)")
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--k", type=int, default=None, help="actions left when the next inference starts (default T/2)")
    ap.add_argument("--move-at", type=int, default=12, help="tick of the first episode's goal move")
    ap.add_argument("--seed", type=int, default=3001)
    ap.add_argument("--executors", default="sync,async,naive-async,rtc")
    ap.add_argument("--chunkers", default="expert,policy", help="comma-separated subset of expert,policy")
    args = ap.parse_args()
    executors, chunkers = args.executors.split(","), args.chunkers.split(",")
    unknown = sorted(set(executors) - set(EXECUTORS)) + sorted(set(chunkers) - {"expert", "policy"})
    if unknown:
        ap.error(f"unknown executors/chunkers {unknown}; executors: {sorted(EXECUTORS)}, chunkers: expert, policy")
    setup = checkpoint_setup(args.checkpoint)
    policy = load_policy(args.checkpoint, None)
    rows = []
    for chunker in chunkers:
        for ex in executors:
            if chunker == "expert" and ex == "rtc":
                continue  # RTC steers the policy's denoiser; the oracle has none (it would run as naive async)
            row = reactivity(policy, ex, args.latency_ms, episodes=args.episodes, seed=args.seed, move_at=args.move_at,
                             k=args.k, chunker=chunker, **render_view(setup))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({"k": args.k, "latency_ms": args.latency_ms, "reactivity": rows}))


if __name__ == "__main__":
    main()
