"""Ship a trained MetaWorld run as the embedded checkpoint: bf16 weights, the frozen token embedding left out
(regenerated from its seed at load time), plus the task list. Usage: python -m xr0.sim.export RUN_DIR [TASKS]"""

from __future__ import annotations

import json
import shutil
import sys

import torch

from ..assets import HERE
from ..train.trainer import resolve_checkpoint
from .metaworld import DEFAULT_TASKS, check_tasks


def export(run: str, tasks=DEFAULT_TASKS, dest=HERE / "metaworld") -> int:
    from .. import XR0Policy

    policy = XR0Policy.from_pretrained(resolve_checkpoint(run))
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp, dtype=torch.bfloat16, store_embedding=False)
    (tmp / "tasks.json").write_text(json.dumps(check_tasks(tasks)))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    size = sum(f.stat().st_size for f in dest.iterdir())
    print(json.dumps({"embedded": str(dest), "bytes": size}))
    return size


if __name__ == "__main__":
    export(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else DEFAULT_TASKS)
