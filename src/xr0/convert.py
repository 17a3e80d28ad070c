"""`xr0 convert`: an official release folder or an April DeepSpeed checkpoint -> xr0's format (xr0.model.official)."""

from __future__ import annotations

import json
import sys

import torch

from .config import add_runtime_arguments, runtime_settings
from .model.official import ASSUMPTIONS, OfficialFormatError, convert

DTYPES = {"keep": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


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
        print(f"wrote {summary['out']}: {summary['tensors']} tensors, robot types {summary['robot_types']}, "
              f"chunk length {summary['chunk_len']}, cameras {summary['cameras']} at {summary['image_size']}, "
              f"runtime {summary['runtime']}")
    return 0
