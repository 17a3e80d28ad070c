"""Ship a trained MetaWorld run as the embedded checkpoint: bf16 weights, the frozen token embedding left out
(regenerated from its seed at load time), plus metaworld.json (the tasks, cameras, image orientation, render size and goal marker radius of
its training data, from DATA_DIR/meta/xr0_metaworld.json). Usage: python -m xr0.sim.export RUN_DIR DATA_DIR"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import sys

import torch

from ..assets import HERE
from ..checkpoints import resolve_checkpoint
from .metaworld import DELTA_DIMS, STOCK_GOAL_MARKER_RADIUS, check_tasks
from .metaworld_eval import SETUP_FILE


def export(run: str, data: str, dest=HERE / "metaworld") -> int:
    from .. import XR0Policy

    sidecar = json.loads((pathlib.Path(data) / "meta" / "xr0_metaworld.json").read_text())
    setup = {"tasks": check_tasks(list(sidecar["tasks"])), "cameras": sidecar["cameras"],
             "orientation": sidecar["orientation"], "image_size": sidecar.get("image_size"),
             "goal_marker_radius": sidecar.get("goal_marker_radius", STOCK_GOAL_MARKER_RADIUS),
             "goal_marker_color": sidecar.get("goal_marker_color")}
    policy = XR0Policy.from_pretrained(resolve_checkpoint(run))
    policy.robots = {name: dataclasses.replace(spec, delta_dims=DELTA_DIMS) for name, spec in policy.robots.items()}
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp, dtype=torch.bfloat16, store_embedding=False)
    (tmp / SETUP_FILE).write_text(json.dumps(setup, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    size = sum(f.stat().st_size for f in dest.iterdir())
    print(json.dumps({"embedded": str(dest), "bytes": size}))
    return size


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    export(sys.argv[1], sys.argv[2])
