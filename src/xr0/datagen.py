"""`xr0 data ACTION ...`: generate datasets (MetaWorld demonstrations from xr0.sim, synthetic VQA from xr0.data) and
compute a dataset's statistics once (`xr0 data stats`)."""

from __future__ import annotations

from .data import stats_cli, vqa
from .sim import metaworld_data, mt50

SOURCES = {"metaworld": (metaworld_data, "MetaWorld scripted-expert demonstrations -> LeRobotDataset v3"),
           "mt50": (mt50, "MetaWorld MT50 expert demonstrations through LeRobot's own env (run in .venv-lerobot) "
                          "-> LeRobotDataset v3"),
           "vqa": (vqa, "synthetic VQA about rendered shape scenes (exact labels) -> VL JSONL for stage 1"),
           "stats": (stats_cli, "a LeRobot dataset's statistics (meta/stats.json, LeRobot's layout) and xr0's chunk "
                                "statistics, written beside it once; xr0 train reads them")}


def add_arguments(p) -> None:
    sub = p.add_subparsers(dest="source", required=True)
    for name, (module, helptext) in SOURCES.items():
        module.add_arguments(sub.add_parser(name, help=helptext))


def run(args) -> int:
    return SOURCES[args.source][0].run(args)
