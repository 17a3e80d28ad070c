"""`xr0 data SOURCE ...`: generate or convert datasets."""

from __future__ import annotations

from . import metaworld_gen

SOURCES = {"metaworld": (metaworld_gen, "MetaWorld scripted-expert demonstrations -> LeRobotDataset v3")}


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="source", required=True)
    for name, (module, helptext) in SOURCES.items():
        module.add_arguments(sub.add_parser(name, help=helptext))


def run(args) -> int:
    return SOURCES[args.source][0].run(args)
