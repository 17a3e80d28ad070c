"""An xr0 checkpoint or training run -> a folder `lerobot-eval --policy.path=FOLDER` runs: LeRobot's config.json
with the env's features, the plugin's processors, and xr0's weights in bf16 with the frozen token embedding left
out (regenerated from its seed at load; the plugin loads the weights in fp32).

Usage (LeRobot's venv): python -m lerobot_policy_xr0.export RUN_OR_CHECKPOINT OUT [--env metaworld] [--robot-type N]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path

import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.utils.constants import ACTION, OBS_IMAGE, OBS_STATE

import xr0
from xr0.checkpoints import LEROBOT_XR0_CONFIG, resolve_checkpoint

from .configuration_xr0 import XR0Config
from .modeling_xr0 import XR0Policy

# LeRobot env -> (its one camera's key and (C, H, W), the action dims that are per-step deltas)
ENVS = {"metaworld": (OBS_IMAGE, (3, 480, 480), (0, 1, 2))}


def export(source: str, out: str | Path, env: str = "metaworld", robot_type: str | None = None) -> dict:
    if env not in ENVS:
        raise ValueError(f"--env must be one of {sorted(ENVS)}, got {env!r}")
    image_key, image_shape, delta_dims = ENVS[env]
    inner = xr0.XR0Policy.from_pretrained(resolve_checkpoint(source), dtype=torch.float32)
    if robot_type is None:
        if len(inner.robots) != 1:
            raise ValueError(f"--robot-type is needed: {source} has {sorted(inner.robots)}")
        robot_type = next(iter(inner.robots))
    robot = inner.robot(robot_type)
    if len(robot.cameras) != 1:
        raise ValueError(f"LeRobot's {env} env has one camera; robot type {robot_type!r} has {list(robot.cameras)}")
    inner.robots = {robot_type: dataclasses.replace(robot, delta_dims=delta_dims)}
    config = XR0Config(chunk_len=robot.chunk_len, robot_type=robot_type, device="cpu", push_to_hub=False,
                       input_features={image_key: PolicyFeature(FeatureType.VISUAL, image_shape),
                                       OBS_STATE: PolicyFeature(FeatureType.STATE, (robot.state_dim,))},
                       output_features={ACTION: PolicyFeature(FeatureType.ACTION, (robot.action_dim,))})
    policy = XR0Policy(config, inner=inner)
    from lerobot.policies.factory import make_pre_post_processors

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config._save_pretrained(tmp)
    inner.save_pretrained(tmp, dtype=torch.bfloat16, store_embedding=False, config_name=LEROBOT_XR0_CONFIG)
    for processor in make_pre_post_processors(config):
        processor.save_pretrained(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return {"exported": str(out), "source": str(source), "robot_type": robot_type, "env": env,
            "bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
            "chunk_len": robot.chunk_len, "actions_per_chunk": policy.config.actions_per_chunk}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", help="xr0 checkpoint folder or training run (its newest checkpoint)")
    ap.add_argument("out", help="folder to write (replaced)")
    ap.add_argument("--env", default="metaworld", choices=sorted(ENVS))
    ap.add_argument("--robot-type", default=None, help="the robot type to export (default: the only one)")
    args = ap.parse_args()
    print(json.dumps(export(args.source, args.out, args.env, args.robot_type)))


if __name__ == "__main__":
    main()
