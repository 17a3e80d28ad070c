"""`xr0 data SOURCE ...`: generate or convert datasets."""

from __future__ import annotations

from ..train import vl_tasks
from . import metaworld_gen

SOURCES = {"metaworld": (metaworld_gen, "MetaWorld scripted-expert demonstrations -> LeRobotDataset v3"),
           "vqa": (vl_tasks, "synthetic VQA about rendered shape scenes (exact labels) -> VL JSONL for stage 1")}


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="source", required=True)
    for name, (module, helptext) in SOURCES.items():
        module.add_arguments(sub.add_parser(name, help=helptext))


def run(args) -> int:
    return SOURCES[args.source][0].run(args)
