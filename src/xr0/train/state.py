"""Trainer state without pickle: RNG states as JSON, optimiser moments flattened into safetensors tensors."""

from __future__ import annotations

import base64
import os
import random
from pathlib import Path

import numpy as np
import torch


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict:
    """Global RNG states as JSON (no pickle). Training draws come from derived streams; these are for completeness."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": [py[0], list(py[1]), py[2]],
           "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
           "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict) -> None:
    v, keys, gauss = state["python"]
    random.setstate((v, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """{"state": {fqn: {k: tensor}}, "param_groups": [...]} -> safetensors tensors + JSON meta."""
    tensors, scalars = {}, {}
    for fqn, entry in sd["state"].items():
        for k, v in entry.items():
            if torch.is_tensor(v):
                tensors[f"state/{fqn}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{fqn}/{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict] = {}
    for key, t in tensors.items():
        if key.startswith("state/"):
            fqn, k = key[len("state/"):].rsplit("/", 1)
            state.setdefault(fqn, {})[k] = t.clone()  # own, aligned memory (not a view of the file buffer)
    for key, v in meta.get("scalars", {}).items():
        fqn, k = key.rsplit("/", 1)
        state.setdefault(fqn, {})[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def fsync_tree(root: Path) -> None:
    for p in root.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
