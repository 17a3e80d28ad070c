"""`xr0 train`: flags -> TrainConfig -> Trainer.run(). Also runnable as `torchrun ... -m xr0.train.cli` (DDP/FSDP2).

Every flag defaults to the TrainConfig / recipe default, so `--help` and the dataclasses never disagree.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from .config import TrainConfig
from .lora import DEFAULT_TARGETS
from .recipes import FREEZE_PARTS, RECIPES, Recipe
from .trainer import Trainer

# flag -> (TrainConfig field, type, help)
_FIELDS = [
    ("--preset", "preset", str, "model preset for a fresh run: tiny | small | xr0-4b"),
    ("--recipe", "recipe", str, f"training recipe: {' | '.join(RECIPES)}"),
    ("--data", "data", str, "LeRobotDataset v3 folder (meta/info.json) or a folder of official JSON episodes"),
    ("--robot-type", "robot_type", str, "name of the robot type the normalisation stats are stored under"),
    ("--out", "out", str, "run folder: metrics.jsonl and checkpoints/"),
    ("--chunk-len", "chunk_len", int, "action chunk length T of a fresh run or of a new robot type under --init "
                                      "(default: the preset's / the checkpoint's; an existing robot type keeps its own)"),
    ("--steps", "steps", int, "optimiser steps (the schedule's length)"),
    ("--batch-size", "batch_size", int, "samples per process per micro-batch"),
    ("--grad-accum", "grad_accum", int, "micro-batches per optimiser step"),
    ("--lr", "lr", float, "peak learning rate"),
    ("--min-lr", "min_lr", float, "learning rate at the start of warm-up and at the end of the cosine"),
    ("--warmup", "warmup", int, "linear warm-up steps"),
    ("--weight-decay", "weight_decay", float, "AdamW weight decay (never on bias/norm/ln/rotary_emb/adaln)"),
    ("--grad-clip", "grad_clip", float, "gradient-norm clip"),
    ("--dtype", "dtype", str, "autocast dtype: bf16 | fp32 | auto (bf16 on CUDA and on CPUs with native bf16)"),
    ("--seed", "seed", int, "seed of the initialisation, sample order, augmentation and noise"),
    ("--save-every", "save_every", int, "checkpoint every K steps (and at the end)"),
    ("--keep", "keep_checkpoints", int, "keep only the newest K checkpoints"),
    ("--log-every", "log_every", int, "write a metrics row every K steps"),
    ("--init", "init", str, "start from this checkpoint, run folder, official release folder or cached Hub id "
                            "with a fresh optimiser (e.g. stage2 -> post-async); with --resume: only when --out "
                            "has no checkpoint yet"),
    ("--stats-samples", "stats_samples", int, "read at most this many samples for the normalisation statistics"),
    ("--num-workers", "num_workers", int, "data worker processes: reading, decoding, augmentation and batching "
                                          "run there (the same batches as 0, which loads in process)"),
    ("--prefetch", "prefetch", int, "micro-batches each data worker prepares ahead (with --num-workers)"),
    ("--stop-after", "stop_after", int, "stop after this many steps without changing the schedule"),
    ("--device", "device", str, "auto | cpu | cuda"),
    ("--tracker", "tracker", str, "also log to: none | auto | wandb | trackio (only if installed)"),
    ("--vl-data", "vl_data", str, "stage1: VL JSONL co-training data"),
    ("--state-dropout", "state_dropout", float, "probability that a training sample's state is replaced by the mean "
                                                "state, so the actions have to be read from the images"),
    ("--start-frames", "start_frames", int, "draw the first N frames of every episode --start-repeat times per "
                                            "epoch (where a target's position decides the motion; 0: off)"),
    ("--start-repeat", "start_repeat", int, "how often each of the --start-frames frames is drawn per epoch"),
    ("--lora-rank", "lora_rank", int, "fine-tune with LoRA adapters of this rank on the VLM text layers (merged "
                                      "on save; the rest of the VLM frozen, the DiT trained; 0: off)"),
    ("--lora-alpha", "lora_alpha", float, "LoRA scaling alpha (the update is alpha / rank * B A; default: rank)"),
]
_SWITCHES = [
    ("--resume", "resume", True, "continue from the latest complete checkpoint in --out"),
    ("--keep-stats", "keep_stats", True, "--init: keep the checkpoint's statistics of --robot-type (default: computed "
                                         "from --data, and the run says which)"),
    ("--fsdp", "fsdp", True, "shard with FSDP2 (torch.distributed.fsdp.fully_shard) instead of DDP"),
    ("--grad-checkpointing", "grad_checkpointing", True, "activation checkpointing: recompute every VLM text "
                                                         "layer, vision block and DiT layer in backward"),
    ("--skip-bad", "skip_bad", True, "skip bad episodes (reported at the end) instead of failing"),
    ("--no-augment", "augment", False, "turn off image augmentation"),
    ("--raw-state", "raw_state", True, "feed the state unnormalised (the released pipeline)"),
    ("--overfit-batch", "overfit_batch", True, "reuse the first batch and its t/noise draw every step (sanity check)"),
    ("--no-progress", "progress", False, "no progress bar"),
]
_RECIPE_FLAGS = [
    ("--no-lambda-mask", "lambda_mask", False, "plain causal attention among action tokens (no Λ band)"),
    ("--no-rope-offset", "rope_offset", 0, "no +10 RoPE shift of noisy action tokens"),
    ("--no-reweight", "reweight", False, "no L1 loss re-weighting"),
    ("--no-prefix-dropout", "prefix_dropout", 0.0, "never hide prefix tokens"),
]


_CHOICES = {"recipe": sorted(RECIPES), "dtype": ["auto", "bf16", "fp32"],
            "tracker": ["none", "auto", "wandb", "trackio"]}


def _recipe_default(name: str):
    """A Recipe field's default, for help texts (defaults live once, in recipes.py)."""
    return next(f.default for f in dataclasses.fields(Recipe) if f.name == name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    g = parser.add_argument_group("training")
    for flag, name, typ, helptext in _FIELDS:
        g.add_argument(flag, dest=name, type=typ, default=None, choices=_CHOICES.get(name),
                       help=f"{helptext} (default: {getattr(d, name)})")
    g.add_argument("--image-size", default=None, metavar="H[,W]",
                   help="resize camera images to H x W, multiples of 32, in a fresh run or for a new robot type "
                        "under --init (default: the preset's / the checkpoint's first robot type's image settings)")
    g.add_argument("--freeze", default=None, metavar="PART[,PART]",
                   help="keep these parts fixed besides what the recipe freezes: " + ", ".join(FREEZE_PARTS))
    g.add_argument("--lora-targets", default=None, metavar="NAME[,NAME]",
                   help="linears of the VLM text layers that get LoRA adapters (default: "
                        + ",".join(DEFAULT_TARGETS) + ")")
    g.add_argument("--cameras", default=None,
                   help="comma-separated dataset cameras, in the model's camera order (default: all, by name)")
    for flag, name, value, helptext in _SWITCHES:
        g.add_argument(flag, dest=name, action="store_const", const=value, default=None, help=helptext)
    a = parser.add_argument_group("recipe switches (ablations)")
    for flag, name, value, helptext in _RECIPE_FLAGS:
        a.add_argument(flag, dest=f"r_{name}", action="store_const", const=value, default=None, help=helptext)
    a.add_argument("--freq-weight", dest="r_freq_weight", type=float, default=None, metavar="C",
                   help=f"weight c of the rFFT loss term (default {_recipe_default('freq_weight')}; 0 disables it)")
    a.add_argument("--repeat", dest="r_repeat", type=int, default=None, metavar="R",
                   help=f"training_repeat: noise/time draws per VLM pass (default {_recipe_default('repeat')})")
    a.add_argument("--max-prefix", dest="r_max_prefix", type=int, default=None, metavar="N",
                   help=f"post-async: longest action prefix (default {_recipe_default('max_prefix')})")
    a.add_argument("--env-state-loss", dest="r_env_state_weight", type=float, default=None, metavar="W",
                   help="training-only: also predict the dataset's supervision.environment_state (object and goal "
                        "positions) from the image tokens, weight W (default "
                        f"{_recipe_default('env_state_weight'):g}: off; xr0.train.env_state)")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    values = {}
    for f in dataclasses.fields(TrainConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    if getattr(args, "cameras", None):
        values["cameras"] = tuple(c.strip() for c in args.cameras.split(",") if c.strip())
    for name in ("freeze", "lora_targets"):
        if getattr(args, name, None):
            values[name] = tuple(c.strip() for c in getattr(args, name).split(",") if c.strip())
    if getattr(args, "image_size", None):
        values["image_size"] = parse_image_size(args.image_size)
    values["recipe_overrides"] = {k[2:]: v for k, v in vars(args).items() if k.startswith("r_") and v is not None}
    return TrainConfig(**values)


def parse_image_size(text: str) -> tuple[int, int]:
    """"256" or "192,256" -> (H, W); a ValueError naming the flag otherwise."""
    try:
        hw = tuple(int(v) for v in text.split(","))
    except ValueError:
        hw = ()
    if len(hw) == 1:
        hw = hw * 2
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"--image-size must be H or H,W in pixels, got {text!r}")
    return hw


def run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
        result = Trainer(cfg).run()
    except (ValueError, FileNotFoundError, FileExistsError) as e:  # bugs keep their traceback
        print(f"xr0 train: error: {e}", file=sys.stderr)
        return 2
    finally:
        _shutdown()
    return 0 if result.steps_done > 0 else 1


def _shutdown() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xr0 train", description="train with a recipe: "
                                     "stage1 | stage2 | post-sync | post-async")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
