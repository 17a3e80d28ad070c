"""`xr0 convert`: an official release folder or an April DeepSpeed checkpoint -> xr0's format (xr0.official)."""

from __future__ import annotations

import json
import pathlib
import sys

import torch
from safetensors import safe_open

from .checkpoints import WEIGHTS
from .config import add_runtime_arguments, runtime_settings
from .official import ASSUMPTIONS, CONFIG, OfficialFormatError, find_deepspeed, read_april, read_release
from .processing.tokenizer import folder_tokenizer
from .policy import XR0Policy

DTYPES = {"keep": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
STORED_DTYPES = {"BF16": str(torch.bfloat16), "F16": str(torch.float16), "F32": str(torch.float32)}  # safetensors codes


def convert(official: str | pathlib.Path, out: str | pathlib.Path, dtype: torch.dtype | None = None,
            stats_file: str | pathlib.Path | None = None, vlm_config: str | pathlib.Path | None = None,
            **settings) -> dict:
    """Official release folder or April DeepSpeed checkpoint -> xr0 folder; returns a short summary."""
    official, out = pathlib.Path(official), pathlib.Path(out)
    if out.resolve() == official.resolve():
        raise ValueError("--out must differ from --official (the official files would be overwritten)")
    deepspeed = None if (official / CONFIG).is_file() else find_deepspeed(official)
    if deepspeed is not None:
        parts = read_april(deepspeed, stats_file, vlm_config, **settings)
    else:
        parts = read_release(official, stats_file, **settings)
    tokenizer = None if deepspeed is not None else folder_tokenizer(official)  # the folder's own travels along
    policy = XR0Policy.from_state(*parts, tokenizer=tokenizer)
    policy.save_pretrained(out, dtype=dtype)
    with safe_open(str(out / WEIGHTS), "pt") as f:  # what was written, without a second copy of the weights
        names = list(f.keys())
        stored = STORED_DTYPES.get(f.get_slice(names[0]).get_dtype(), "unknown")
    c = policy.config
    return {"official": str(official), "out": str(out), "tensors": len(names), "robot_types": sorted(policy.robots),
            "robots": {name: r.setup() for name, r in policy.robots.items()},
            "expert": {"layers": c.expert.num_layers, "hidden": c.expert.hidden_size},
            "source": "deepspeed" if deepspeed is not None else "release", "runtime": c.runtime(),
            "dtype": stored}


def add_arguments(p) -> None:
    p.add_argument("--official", help="an official release folder (config.json with model_type mibot), or a DeepSpeed "
                                      "checkpoint of the April post-training code (mp_rank_00_model_states.pt or "
                                      "the run folder holding it)")
    p.add_argument("--out", help="where to write the xr0-format checkpoint")
    p.add_argument("--stats", default=None, help="the processor statistics JSON, if it is not found in --official")
    p.add_argument("--vlm-config", default=None, help="DeepSpeed only: a Qwen3VLConfig JSON (or a release "
                                                      "config.json) if the VLM is not Qwen3-VL-4B-Instruct")
    p.add_argument("--dtype", default="keep", choices=sorted(DTYPES), help="weight dtype to write (default: as stored)")
    p.add_argument("--assumptions", action="store_true", help="print the official-format assumptions and exit")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_runtime_arguments(p)


def run(args) -> int:
    if args.assumptions:
        print(ASSUMPTIONS)
        return 0
    if not args.official or not args.out:
        print("xr0 convert: --official DIR and --out DIR are required", file=sys.stderr)
        return 2
    try:
        summary = convert(args.official, args.out, DTYPES[args.dtype], args.stats, args.vlm_config,
                          **runtime_settings(args))
    except (OfficialFormatError, FileNotFoundError, ValueError) as e:
        print(f"xr0 convert: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    else:
        robots = "; ".join(f"{name}: T = {r['chunk_len']}, cameras {r['cameras']}, images "
                           f"{r['image']['size'] or 'any size, smart_resize'}" for name, r in summary["robots"].items())
        print(f"wrote {summary['out']}: {summary['tensors']} tensors, robot types {robots}, "
              f"runtime {summary['runtime']}")
    return 0
