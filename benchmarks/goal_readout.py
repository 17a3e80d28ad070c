"""Where a MetaWorld checkpoint's image tokens put the reach goal: the training run's environment-state head
(`xr0 train --env-state-loss`, its readout of the VLM's last-layer image-token values, the K/V the action expert
reads) predicts the goal's xyz, once at reset (hand at its own start) and once with the hand parked where failed
reach episodes end (PARK: 5 cm beyond and 6 cm under the goal, driven there by a proportional controller).
Per placement: the readout's error (cm); summary per split (unseen: evaluation placements; train: the data's own)
and goal height third: median error norm, mean error xyz, and the hand pull, the error's component along the
goal -> hand direction over the goal-hand distance (0: the goal is read where it is; 1: the hand is read as the goal).
Usage: python benchmarks/goal_readout.py --checkpoint EXPORT --head RUN/checkpoints/step_N/env_state_head.safetensors
       [--seeds 1000,2000,3000,4000] [--episodes 10] [--train-episodes 40]
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import torch

os.environ.setdefault("MUJOCO_GL", "egl")

from xr0.sim.metaworld import ENV_STATE_NAMES  # noqa: E402
from xr0.sim.metaworld_eval import checkpoint_setup, load_policy, make_env, render_view  # noqa: E402
from xr0.train.env_state import EnvStateHead, image_values  # noqa: E402

PARK = np.array([0.0, 0.05, -0.06])  # m from the goal: where v7/v8's failed reach episodes end (docs/changelog.md, v8)
GOAL = slice(ENV_STATE_NAMES.index("goal_x"), ENV_STATE_NAMES.index("goal_z") + 1)


def goal_readout(policy, head: EnvStateHead, obs: dict) -> np.ndarray:
    """The head's goal xyz (m) from the image-token values of one observation."""
    batch = policy.processor(obs["images"], obs["prompt"])
    with torch.inference_mode():
        tokens = image_values(policy.model.encode(batch).values[-1], batch["mm_token_type_ids"])
        return head.read_images(tokens)[0, GOAL].double().numpy()


def park(env, point: np.ndarray, ticks: int = 40) -> np.ndarray:
    """Drive the hand to `point` (proportional control, gripper open); returns where it ends."""
    for _ in range(ticks):
        error = point - env.sim.tcp_center
        if np.linalg.norm(error) < 0.01:
            break
        env.act(np.concatenate([np.clip(error * 30.0, -1.0, 1.0), [-1.0]]))
    return env.sim.tcp_center.copy()


def summary(rows: list[dict]) -> dict:
    out = {}
    for third, name in enumerate(("lower", "middle", "upper")):
        sel = [r for r in rows if r["third"] == third]
        if not sel:
            continue
        cell = {"n": len(sel)}
        for key in ("reset", "parked"):
            err = np.array([r[f"error_{key}_cm"] for r in sel])
            cell[key] = {"median_cm": round(float(np.median(np.linalg.norm(err, axis=1))), 1),
                         "mean_xyz_cm": err.mean(0).round(1).tolist()}
        cell["parked"]["hand_pull"] = round(float(np.mean([r["hand_pull"] for r in sel])), 2)
        out[name] = cell
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--checkpoint", required=True, help="an exported MetaWorld checkpoint")
    ap.add_argument("--head", required=True, help="env_state_head.safetensors of the run it was exported from")
    ap.add_argument("--seeds", default="1000,2000,3000,4000", help="evaluation placements (mt1)")
    ap.add_argument("--episodes", type=int, default=10, help="per evaluation seed")
    ap.add_argument("--train-episodes", type=int, default=40, help="the data's own placements (fresh, seed 0)")
    args = ap.parse_args()
    policy = load_policy(args.checkpoint, None)
    head = EnvStateHead.load(args.head).eval()
    view = render_view(checkpoint_setup(args.checkpoint))
    splits = {"unseen": [(int(s), "mt1", args.episodes) for s in args.seeds.split(",")],
              "train": [(0, "fresh", args.train_episodes)]}
    result = {"checkpoint": args.checkpoint, "park_m": PARK.tolist()}
    for split, runs in splits.items():
        rows = []
        for seed, placements, episodes in runs:
            env = make_env(policy, "reach-v3", seed, **view, placements=placements)
            low, high = env.sim.goal_space.low[2], env.sim.goal_space.high[2]
            for _ in range(episodes):
                env.reset()
                goal = env.target().copy()
                at_reset = goal_readout(policy, head, env.observe()) - goal
                hand = park(env, goal + PARK)
                parked = goal_readout(policy, head, env.observe()) - goal
                away = hand - goal
                rows.append({"split": split, "seed": seed, "goal": goal.round(3).tolist(),
                             "third": int(min((goal[2] - low) / (high - low) * 3, 2)),
                             "error_reset_cm": (at_reset * 100).round(1).tolist(),
                             "error_parked_cm": (parked * 100).round(1).tolist(),
                             "hand_pull": round(float(parked @ away / (away @ away)), 2)})
                print(json.dumps(rows[-1]), flush=True)
            env.close()
        result[split] = summary(rows)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
