"""`xr0 eval BENCHMARK ...`: MetaWorld (the embedded demo task set), MT50 on LeRobot's env, and LIBERO, CALVIN and SimplerEnv with the
official clients' protocols (their simulators are optional installs; a missing one is named with its install step)."""

from __future__ import annotations

import json
import sys

from ..config import add_runtime_arguments, runtime_settings
from . import libero_cli, mt50_eval
from .common import add_noise_seed_argument, noise_seeds
from .metaworld import ORIENTATIONS, MetaWorldNotInstalled


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
    p.add_argument("--server", default=None, metavar="ws://HOST:PORT",
                   help="take the chunks from a running `xr0 serve` of the same checkpoint (the checkpoint then only "
                        "sets up the tasks)")
    p.add_argument("--realtime", action="store_true",
                   help="step the simulator at its control rate in wall-clock time, inference in a second thread "
                        "(--latency-ms is then what it measures, not a setting)")
    p.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    add_runtime_arguments(p)


def run_metaworld(args) -> int:
    from .metaworld_eval import checkpoint_setup, evaluate, load_policy, print_table, render_view

    try:
        policy = load_policy(args.checkpoint, args.preset, **runtime_settings(args))
        policy.config.check_executor(args.executor)
        setup = checkpoint_setup(args.checkpoint)
        setup["orientation"] = args.orientation or setup["orientation"]
    except (FileNotFoundError, ValueError) as e:  # no embedded checkpoint yet, a bad folder, an unknown preset
        print(f"xr0 eval metaworld: {e}", file=sys.stderr)
        return 2
    try:
        result, _ = evaluate(policy, args.tasks or setup["tasks"], args.episodes, args.executor,
                             args.latency_ms, args.seed, args.k, args.max_ticks, args.video, args.steps,
                             server=args.server, realtime=args.realtime, **render_view(setup))
    except (ConnectionError, ValueError, MetaWorldNotInstalled) as e:  # no server there, another policy, no MetaWorld
        print(f"xr0 eval metaworld: {e}", file=sys.stderr)
        return 2
    print_table(result)
    if args.json:
        print(json.dumps(result))
    return 0


def add_policy_arguments(p) -> None:
    """The checkpoint, device and runtime flags of xr0 eval calvin / simpler."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="an official Xiaomi-Robotics-0 release folder (or an xr0 checkpoint)")
    src.add_argument("--preset", help="random weights of a preset (a smoke test of the harness)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=libero_cli.DTYPE_CHOICES, help="auto = bf16 on GPU, as stored on CPU")
    add_noise_seed_argument(p)
    p.add_argument("--json", action="store_true", help="print a JSON object as the last line")
    add_runtime_arguments(p)


def add_calvin_arguments(p) -> None:
    add_policy_arguments(p)
    p.add_argument("--dataset", required=True, help="a CALVIN split folder with validation/ (e.g. task_ABCD_D)")
    p.add_argument("--config", required=True,
                   help="the official eval_calvin/config folder (new_playtable_tasks.yaml, "
                        "new_playtable_validation.yaml, eval_sequences.json)")
    p.add_argument("--split", choices=("abc", "abcd"), default="abcd",
                   help="robot type calvin_<split>_orig (the official client's default: abcd)")
    p.add_argument("--sequences", type=int, default=1000, help="sequences evaluated (official: 1000)")


def add_simpler_arguments(p) -> None:
    add_policy_arguments(p)
    p.add_argument("--env-options", required=True,
                   help="an official eval_simplerenv/env_options JSON (bridge.json or fractal.json)")
    p.add_argument("--episodes", type=int, default=None, help="the first N entries (default: all)")


def run_benchmark(args) -> int:
    """xr0 eval calvin / simpler."""
    from . import calvin, simpler

    name = f"xr0 eval {args.benchmark}"
    try:
        seeds = noise_seeds(args.noise_seed)
        if args.benchmark == "calvin":
            calvin.require_calvin()
        else:
            simpler.require_simpler()
        policy = libero_cli.load_policy(args.checkpoint, args.preset, args.device, args.dtype, runtime_settings(args))
        if args.benchmark == "calvin":
            result = calvin.evaluate(policy, args.dataset, args.config, args.split, args.sequences, seeds)
            print(f"CALVIN {args.split}: average length {result['avg_len']:.3f} over {result['sequences']} sequences",
                  file=sys.stderr)
        else:
            result = simpler.evaluate(policy, args.env_options, args.episodes, seeds)
            print(f"SimplerEnv: {result['successes']}/{result['episodes']} successful", file=sys.stderr)
    except (ImportError, FileNotFoundError, ValueError) as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    return 0


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True)
    add_metaworld_arguments(sub.add_parser("metaworld", help="MetaWorld v3 under simulated latency"))
    mt50_eval.add_arguments(sub.add_parser("mt50", help="MetaWorld MT50 on LeRobot's env with xr0's executors "
                                                        "(run in .venv-lerobot)"))
    libero_cli.add_arguments(sub.add_parser("libero", help="LIBERO, official XR-0 protocol"))
    add_calvin_arguments(sub.add_parser("calvin", help="CALVIN, official XR-0 protocol (needs calvin_env)"))
    add_simpler_arguments(sub.add_parser("simpler", help="SimplerEnv Bridge / Fractal, official XR-0 protocol "
                                                         "(needs SimplerEnv)"))


def run(args) -> int:
    if args.benchmark == "metaworld":
        return run_metaworld(args)
    if args.benchmark == "mt50":
        return mt50_eval.run(args)
    if args.benchmark in ("calvin", "simpler"):
        return run_benchmark(args)
    return libero_cli.run(args)
