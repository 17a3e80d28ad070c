"""Reactivity under simulated latency: the target moved mid-episode, per task, executor and chunk source.

"policy" chunks come from the checkpoint; "expert" chunks from an oracle that reads the true target (MetaWorld's
scripted expert rolled out on a kinematic hand model), which isolates what the execution scheme itself costs in
reaction time. The move tick steps through --move-at, --move-at + 1, ... (20 ticks, then again) over the episodes,
so it falls at every phase of the execution cycle. Metrics: xr0.sim.reactivity. Prints one JSON line per cell and
a last JSON line with all of them.
Usage: python benchmarks/reactivity.py [--checkpoint embedded] [--episodes 40] [--latency-ms 100] [--k 10]
       [--tasks reach-v3,button-press-topdown-v3] [--executors sync,async,naive-async,rtc] [--chunkers expert,policy]
"""

from __future__ import annotations

import argparse
import json
import os

os.environ.setdefault("MUJOCO_GL", "egl")

from xr0.sim.metaworld_eval import EXECUTORS, checkpoint_setup, load_policy, render_view  # noqa: E402
from xr0.sim.metaworld import MOVABLE_TARGETS  # noqa: E402
from xr0.sim.reactivity import reactivity  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="embedded")
    ap.add_argument("--episodes", type=int, default=40, help="moved episodes per cell")
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--k", type=int, default=None,
                    help="actions left when the next inference starts (default 10, at most T/2)")
    ap.add_argument("--move-at", type=int, default=None,
                    help="tick of the first episode's target move (default per task: xr0.sim.reactivity.MOVE_AT)")
    ap.add_argument("--seed", type=int, default=3001)
    ap.add_argument("--tasks", default=",".join(MOVABLE_TARGETS))
    ap.add_argument("--executors", default="sync,async,naive-async,rtc")
    ap.add_argument("--chunkers", default="expert,policy", help="comma-separated subset of expert,policy")
    args = ap.parse_args()
    tasks, executors, chunkers = args.tasks.split(","), args.executors.split(","), args.chunkers.split(",")
    unknown = (sorted(set(executors) - set(EXECUTORS)) + sorted(set(chunkers) - {"expert", "policy"})
               + sorted(set(tasks) - set(MOVABLE_TARGETS)))
    if unknown:
        ap.error(f"unknown {unknown}; executors: {sorted(EXECUTORS)}, chunkers: expert, policy, "
                 f"tasks: {', '.join(MOVABLE_TARGETS)}")
    setup = checkpoint_setup(args.checkpoint)
    policy = load_policy(args.checkpoint, None)
    rows = []
    for task in tasks:
        for chunker in chunkers:
            for ex in executors:
                if chunker == "expert" and ex == "rtc":
                    continue  # RTC steers the policy's denoiser; the oracle has none (it would run as naive async)
                row = reactivity(policy, ex, args.latency_ms, episodes=args.episodes, seed=args.seed,
                                 move_at=args.move_at, k=args.k, chunker=chunker, task=task, **render_view(setup))
                rows.append({"checkpoint": args.checkpoint, **row})
                print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({"checkpoint": args.checkpoint, "k": args.k, "latency_ms": args.latency_ms, "reactivity": rows}))


if __name__ == "__main__":
    main()
