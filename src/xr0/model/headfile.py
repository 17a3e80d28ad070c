"""Trainable side modules saved beside a checkpoint (the stage-1 choice heads, the env-state head): one
safetensors file, its format name and JSON config in the header, written atomically."""

from __future__ import annotations

import json
import pathlib

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..checkpoints import atomic_write


def save_head(target: pathlib.Path, tensors: dict[str, torch.Tensor], fmt: str, config: dict) -> pathlib.Path:
    atomic_write(target, lambda tmp: save_file(tensors, tmp, metadata={"format": fmt, "config": json.dumps(config)}))
    return target


def load_head(path: str | pathlib.Path, name: str, fmt: str,
              what: str) -> tuple[pathlib.Path, dict, dict[str, torch.Tensor]]:
    """A folder holding `name` (or the file itself) -> (file, config, tensors). Missing: FileNotFoundError;
    unreadable, another format or a bad config: ValueError naming the file."""
    path = pathlib.Path(path)
    file = path / name if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: no {what} saved there")
    try:
        with safe_open(str(file), "pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(file))
    except Exception as e:  # safetensors raises its own types for truncated / corrupt headers
        raise ValueError(f"{file} is not a readable safetensors file: {e}") from e
    if meta.get("format") != fmt or "config" not in meta:
        raise ValueError(f"{file} holds no {what} (format {meta.get('format')!r})")
    try:
        config = json.loads(meta["config"])
    except ValueError as e:
        raise ValueError(f"{file}: invalid {what} config: {e}") from e
    return file, config, tensors
