"""AdamW parameter groups, the warm-up + cosine schedule and the autocast dtype."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..model.dtypes import resolve_dtype as precision

NO_DECAY = ("bias", "norm", "ln", "rotary_emb", "adaln")  # released no-weight-decay name patterns (spec §6.6)


def lr_at(step: int, peak: float, warmup: int, total: int, floor: float = 5e-7) -> float:
    """LR of optimiser step `step` (0-based): linear floor -> peak over `warmup`, cosine peak -> floor at `total`."""
    floor = min(floor, peak)
    if step < warmup:
        return floor + (peak - floor) * step / warmup
    if total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / (total - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay, and no decay for names containing bias/norm/ln/rotary_emb/adaln."""
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (no_decay if any(k in name for k in NO_DECAY) else decay).append((name, p))
    return [{"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
            {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0}]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32): --dtype through `model.dtypes.resolve_dtype` (its "auto" avoids bf16 on
    CPUs that only emulate it, much slower there), except that "auto" trains in bf16 on any GPU, as the recipe does."""
    if device.type == "cuda" and name == "auto":
        return torch.bfloat16
    return None if precision(name, device.type) == "fp32" else torch.bfloat16
