"""`xr0 eval BENCHMARK ...`: MetaWorld (the embedded demo task set) and LIBERO (official protocol)."""

from __future__ import annotations

import json
import sys

from ..config import add_runtime_arguments, runtime_settings
from . import libero_cli
from .metaworld import ORIENTATIONS


def add_metaworld_arguments(p) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="checkpoint folder, or 'embedded' for the shipped MetaWorld policy")
    src.add_argument("--preset", help="random weights of a preset (a smoke test of the harness)")
    p.add_argument("--tasks", default=None, help="comma-separated tasks (default: the checkpoint's training tasks)")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task")
    p.add_argument("--executor", default="async", choices=["sync", "async", "naive-async", "rtc"],
                   help="rtc: inference-time RTC guidance, for checkpoints not trained async")
    p.add_argument("--latency-ms", type=float, default=100.0, help="simulated inference latency")
    p.add_argument("--k", type=int, default=None,
                   help="actions left when the next inference starts (default 10, at most T/2)")
    p.add_argument("--max-ticks", type=int, default=100, help="control ticks per episode at most")
    p.add_argument("--seed", type=int, default=1000, help="placement seed (training data used seed 0)")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the checkpoint's)")
    p.add_argument("--video", default=None, metavar="DIR",
                   help="write one MP4 and one plot of the executed actions (chunk switches marked) per episode here")
    p.add_argument("--orientation", choices=ORIENTATIONS, default=None,
                   help="image orientation the policy was trained with (default: the checkpoint's metaworld.json, "
                        "else upright; see xr0 data metaworld)")
    p.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    add_runtime_arguments(p)


def run_metaworld(args) -> int:
    from .evaluate import checkpoint_setup, evaluate, load_policy, print_table, render_view

    try:
        policy = load_policy(args.checkpoint, args.preset, **runtime_settings(args))
        policy.config.check_executor(args.executor)
        setup = checkpoint_setup(args.checkpoint)
        setup["orientation"] = args.orientation or setup["orientation"]
    except (FileNotFoundError, ValueError) as e:  # no embedded checkpoint yet, a bad folder, an unknown preset
        print(f"xr0 eval metaworld: {e}", file=sys.stderr)
        return 2
    result, _ = evaluate(policy, args.tasks or setup["tasks"], args.episodes, args.executor,
                         args.latency_ms, args.seed, args.k, args.max_ticks, args.video, args.steps,
                         **render_view(setup))
    print_table(result)
    if args.json:
        print(json.dumps(result))
    return 0


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True)
    add_metaworld_arguments(sub.add_parser("metaworld", help="MetaWorld v3 under simulated latency"))
    libero_cli.add_arguments(sub.add_parser("libero", help="LIBERO, official XR-0 protocol"))


def run(args) -> int:
    if args.benchmark == "metaworld":
        return run_metaworld(args)
    return libero_cli.run(args)
