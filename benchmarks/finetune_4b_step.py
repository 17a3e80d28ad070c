"""One real optimiser step of the full-size `xr0-4b` preset on this machine: random weights, batch 1, LoRA on the
VLM text layers + activation checkpointing + frozen vision tower, bf16 autocast with the frozen base held in bf16
(fp32 master weights for what trains). Proves the 4B fine-tuning path runs end to end and reports what it costs.

    OMP_NUM_THREADS=2 python benchmarks/finetune_4b_step.py [--preset xr0-4b] [--lora-rank 16] [--steps 1]

Prints one JSON line: parameter counts (total / trainable), peak RSS, RSS after the model is built, seconds to
build and per step, and the step's loss. The model is built directly in bf16 (an fp32 build of 4.7 B parameters
alone would take 19 GB) and handed to the trainer, which puts what trains back in fp32.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def toy_dataset(root: Path, config, frames: int = 40) -> Path:
    """One episode at the preset's cameras and image size, 8-D state, 7-D actions."""
    from xr0.data.lerobot_v3 import LeRobotV3Writer

    h, w = config.image_size
    rng = np.random.default_rng(0)
    cams = {f"cam{i}": (h, w) for i in range(len(config.cameras))}
    with LeRobotV3Writer(root, int(config.control_hz), cams, 8, 7, robot_type="toy") as writer:
        images = {c: rng.integers(0, 256, (frames, h, w, 3), dtype=np.uint8) for c in cams}
        writer.add_episode(images, rng.normal(size=(frames, 8)), rng.normal(size=(frames, 7)), "pick up the cup")
    return root


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="xr0-4b")
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--recipe", default="post-async")
    args = p.parse_args(argv)

    from xr0 import XR0Policy
    from xr0.config import get_preset
    from xr0.model.weights import count_parameters
    from xr0.train import TrainConfig, Trainer

    base_rss = rss_gib()
    t0 = time.perf_counter()
    torch.set_default_dtype(torch.bfloat16)
    try:
        policy = XR0Policy.from_preset(args.preset, seed=0)
    finally:
        torch.set_default_dtype(torch.float32)
    build_s = time.perf_counter() - t0
    built_rss = rss_gib()
    with tempfile.TemporaryDirectory() as tmp:
        data = toy_dataset(Path(tmp) / "data", get_preset(args.preset))
        # steps + 1 with stop_after: the run ends before the final-step checkpoint (19 GB in fp32) is written
        cfg = TrainConfig(preset=args.preset, recipe=args.recipe, data=str(data), out=str(Path(tmp) / "run"),
                          robot_type="toy", steps=args.steps + 1, stop_after=args.steps, batch_size=1, warmup=0,
                          lr=1e-4, dtype="bf16", seed=0, log_every=1, save_every=10**9, progress=False,
                          lora_rank=args.lora_rank, grad_checkpointing=True, freeze=("vision",))
        t0 = time.perf_counter()
        trainer = Trainer(cfg, policy=policy)
        setup_s = time.perf_counter() - t0
        model = trainer.policy.model
        trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
        times, rows = [], []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            values = trainer.train_step()
            times.append(time.perf_counter() - t0)
            rows.append({k: round(v, 4) for k, v in values["losses"].items()} | {"prefix_len": values["prefix_len"],
                                                                                  "grad_norm": values["grad_norm"]})
    out = {"preset": args.preset, "recipe": args.recipe, "batch_size": 1, "lora_rank": args.lora_rank,
           "grad_checkpointing": True, "frozen": ["vision", "vlm (but adapters)"], "dtype": "bf16 autocast, "
           "frozen base bf16, trainable fp32", "parameters": count_parameters(model), "trainable": trainable,
           "threads": torch.get_num_threads(), "rss_start_gib": round(base_rss, 2),
           "rss_after_build_gib": round(built_rss, 2), "peak_rss_gib": round(peak_gib(), 2),
           "build_s": round(build_s, 1), "trainer_setup_s": round(setup_s, 1),
           "step_s": [round(t, 1) for t in times], "steps": rows, "torch": torch.__version__}
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
