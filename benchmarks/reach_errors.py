"""Where a checkpoint's reach-v3 episodes end relative to their goal: per episode the goal, the hand's closest
approach and its error per axis at the end; then success by goal height (lower, middle, upper third of the range);
then how the first chunk at reset follows the goal's height: for goals at x = 0, y = 0.85 and z = 0.08 ... 0.29 m,
the summed xyz motion of its first 10 actions (mean of 4 sampling seeds) against MetaWorld's scripted expert, and
the least-squares slope of the policy's dz sum on the expert's (1 = follows the height in full, 0 = ignores it).
Usage: python benchmarks/reach_errors.py [--checkpoint embedded] [--seeds 1000,2000] [--episodes 10]
       [--executor async] [--latency-ms 100] [--placements mt1|fresh]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from xr0.sim.common import ChunkPolicy, pad_state  # noqa: E402
from xr0.sim.metaworld import PLACEMENTS  # noqa: E402
from xr0.sim.metaworld_eval import (checkpoint_setup, load_policy, make_env, make_runner,  # noqa: E402
                                    render_view, sampling_seeds)
from xr0.sim.reactivity import expert_chunk  # noqa: E402

HEIGHTS = (0.08, 0.15, 0.22, 0.29)  # goal z (m) of the first-chunk probe, across reach-v3's 0.05-0.30 range


def first_chunk_heights(policy, env, rows: int = 10) -> dict:
    """Summed xyz motion of the first `rows` actions at reset, policy (4 sampling seeds) vs expert, per goal height."""
    state_dim, T = policy.robot(None).state_dim, policy.config.chunk_len
    out = {"goal_z": list(HEIGHTS), "policy_dxyz": [], "expert_dxyz": []}
    for z in HEIGHTS:
        env.reset()
        env.move_target(to=np.array([0.0, 0.85, z]))
        obs = env.observe()
        sums = [np.asarray(policy.sample(obs["images"], obs["prompt"], pad_state(obs["state"], state_dim),
                                         seed=s), dtype=np.float64)[:rows, :3].sum(0) for s in range(4)]
        out["policy_dxyz"].append(np.mean(sums, 0).round(2).tolist())
        expert = np.asarray(expert_chunk(env, T), dtype=np.float64)
        out["expert_dxyz"].append(expert[:rows, :3].sum(0).round(2).tolist())
    pz, ez = np.array(out["policy_dxyz"])[:, 2], np.array(out["expert_dxyz"])[:, 2]
    out["dz_slope"] = round(float(np.polyfit(ez, pz, 1)[0]), 2)
    return out


class _HandLog:
    """Wraps the env: the hand (tool centre) position after every tick."""

    def __init__(self, env):
        self.env, self.hands = env, []

    def observe(self):
        return self.env.observe()

    def act(self, action):
        out = self.env.act(action)
        self.hands.append(self.env.sim.tcp_center.copy())
        return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", default="embedded")
    ap.add_argument("--seeds", default="1000,2000")
    ap.add_argument("--episodes", type=int, default=10, help="per seed")
    ap.add_argument("--executor", default="async")
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--max-ticks", type=int, default=100)
    ap.add_argument("--placements", choices=PLACEMENTS, default="mt1",
                    help="mt1: as `xr0 eval metaworld`; fresh with --seeds 0: the training data's own reach placements "
                         "(`xr0 data metaworld --placements fresh`, seed 0)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    policy = load_policy(args.checkpoint, None)
    view = render_view(checkpoint_setup(args.checkpoint))
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for seed in seeds:
        env = make_env(policy, "reach-v3", seed, **view, placements=args.placements)
        z_range = env.sim.goal_space.low[2], env.sim.goal_space.high[2]
        for ep in range(args.episodes):  # mt1: the same placements and sampling seeds as `xr0 eval metaworld`
            env.reset()
            goal = env.target().copy()
            infer = ChunkPolicy(policy, None, policy.robot(None).action_dim, seed_of_call=sampling_seeds(seed, ep))
            log = _HandLog(env)
            make_runner(policy, args.executor, log, infer, args.latency_ms).run(args.max_ticks,
                                                                              stop=lambda: env.success)
            hands = np.array(log.hands)
            row = {"seed": seed, "episode": ep, "success": bool(env.success), "goal": goal.round(3).tolist(),
                   "end_error": (hands[-1] - goal).round(3).tolist(),
                   "closest_m": round(float(np.linalg.norm(hands - goal, axis=1).min()), 3)}
            rows.append(row)
            print(json.dumps(row), flush=True)
        if seed == seeds[0]:
            heights = first_chunk_heights(policy, env)
        env.close()
    lo, hi = z_range
    third = np.minimum(((np.array([r["goal"][2] for r in rows]) - lo) / (hi - lo) * 3).astype(int), 2)
    ok = np.array([r["success"] for r in rows])
    failed = [r for r in rows if not r["success"]]
    print(json.dumps({"episodes": len(rows), "success_rate": float(ok.mean()),
                      "success_by_goal_height": {name: f"{int(ok[third == i].sum())}/{int((third == i).sum())}"
                                                 for i, name in enumerate(("lower", "middle", "upper"))},
                      "failed_mean_end_error_xyz": np.mean([r["end_error"] for r in failed], 0).round(3).tolist()
                      if failed else None, "first_chunk_vs_goal_height": heights}))


if __name__ == "__main__":
    main()
