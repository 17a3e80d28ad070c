"""`xr0 COMMAND ...`: one entry point; each command lives in its own module and is imported only when used.

A command module provides `add_arguments(parser)` and `run(args) -> int`.
"""

from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "inspect": ("xr0.inspect", "parameter counts per part and whether the layout matches the official checkpoint"),
    "demo": ("xr0.demo", "run the policy and show what it does"),
    "serve": ("xr0.runtime.server", "serve a policy over websocket + msgpack (openpi's client works unchanged)"),
    "train": ("xr0.train.cli", "train with a recipe: stage1 | stage2 | post-sync | post-async"),
    "data": ("xr0.datagen", "generate datasets (MetaWorld demonstrations, synthetic VQA) or compute a dataset's "
                            "statistics"),
    "eval": ("xr0.sim.cli", "evaluate a policy in a simulator"),
    "bench": ("xr0.bench", "latency and throughput benchmarks (JSON)"),
    "convert": ("xr0.convert", "convert an official Xiaomi-Robotics-0 checkpoint to xr0's format"),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    rows = "\n".join(f"  {name:<{width}}  {helptext}" for name, (_, helptext) in COMMANDS.items())
    return f"usage: xr0 COMMAND [options]\n\ncommands:\n{rows}\n\n`xr0 COMMAND --help` for a command's options."


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"xr0: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, helptext = COMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):
            print(f"xr0 {name}: not available in this build ({module_name} is missing)", file=sys.stderr)
            return 2
        raise
    parser = argparse.ArgumentParser(prog=f"xr0 {name}", description=helptext)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
