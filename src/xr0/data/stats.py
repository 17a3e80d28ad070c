"""Normalisation statistics: per-timestep (T, D) action mean/std and state mean/std.

XR-0 normalises each position of the chunk with its own statistics, (a − mean[t]) / (std[t] + 1e-6)
(spec §6.7), because later steps of a chunk spread wider than early ones. Statistics are taken over
valid (non-padded) steps only, in one streaming pass (Welford, float64), without decoding video.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

STD_EPS = 1e-6


@dataclass
class ChunkStats:
    """Population (ddof=0) statistics; `count[t]` is how many valid chunks reached step t."""

    action_mean: np.ndarray  # (T, D) float64
    action_std: np.ndarray  # (T, D)
    state_mean: np.ndarray  # (Ds,)
    state_std: np.ndarray  # (Ds,)
    count: np.ndarray  # (T,) int64
    n_samples: int

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return ((actions - self.action_mean) / (self.action_std + STD_EPS)).astype(np.float32)

    def denormalize_actions(self, actions: np.ndarray) -> np.ndarray:
        return (actions * (self.action_std + STD_EPS) + self.action_mean).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-ready nested lists (no pickle anywhere)."""
        return {"action_mean": self.action_mean.tolist(), "action_std": self.action_std.tolist(),
                "state_mean": self.state_mean.tolist(), "state_std": self.state_std.tolist(),
                "count": self.count.tolist(), "n_samples": int(self.n_samples)}

    @classmethod
    def from_dict(cls, d: dict) -> ChunkStats:
        arr = lambda k, dt=np.float64: np.asarray(d[k], dtype=dt)  # noqa: E731
        return cls(arr("action_mean"), arr("action_std"), arr("state_mean"), arr("state_std"),
                   arr("count", np.int64), int(d["n_samples"]))

    def sha256(self) -> str:
        """Stable hash of the values, for checkpoints and the server handshake."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def compute_stats(dataset, max_samples: int | None = None, stride: int = 1) -> ChunkStats:
    """One pass over `dataset` (every `stride`-th sample, at most `max_samples`).

    Uses `dataset.lowdim(i)` when available (no video decoding), else `dataset[i]`. Steps never
    valid in any chunk get mean 0 and std 0.
    """
    n_total = len(dataset)
    if n_total == 0:
        raise ValueError("cannot compute statistics of an empty dataset")
    indices = range(0, n_total, max(1, stride))
    if max_samples is not None:
        indices = indices[:max_samples]
    lowdim = getattr(dataset, "lowdim", None)

    mean = m2 = s_mean = s_m2 = count = None
    n = 0
    for i in indices:
        if lowdim is not None:
            state, actions, valid = lowdim(i)
        else:
            sample = dataset[i]
            state, actions, valid = sample["state"], sample["actions"], sample["action_valid"]
        actions = np.asarray(actions, dtype=np.float64)
        state = np.asarray(state, dtype=np.float64)
        if mean is None:
            mean, m2 = np.zeros_like(actions), np.zeros_like(actions)
            count = np.zeros(len(actions), dtype=np.int64)
            s_mean, s_m2 = np.zeros_like(state), np.zeros_like(state)
        # Welford update per timestep, only where the step is valid.
        v = np.asarray(valid, dtype=bool)
        count[v] += 1
        delta = actions[v] - mean[v]
        mean[v] += delta / count[v, None]
        m2[v] += delta * (actions[v] - mean[v])
        n += 1
        d = state - s_mean
        s_mean += d / n
        s_m2 += d * (state - s_mean)
    denom = np.maximum(count, 1)[:, None]
    return ChunkStats(mean, np.sqrt(m2 / denom), s_mean, np.sqrt(s_m2 / n), count, n)
