"""Normalisation statistics: per-timestep (T, D) action mean/std and state mean/std.

XR-0 normalises each position of the chunk with its own statistics, (a − mean[t]) / (std[t] + 1e-6)
(spec §6.7), because later steps of a chunk spread wider than early ones. Statistics are taken over
valid (non-padded) steps only, in one streaming pass (Welford, float64), without decoding video.
ChunkStats only holds them: the normalising is xr0.processing.RobotSpec's (xr0.train.inputs.robot_spec_from_data
turns these statistics into one).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

CHUNK_STATS = "meta/xr0_chunk_stats.json"  # beside a LeRobot dataset: {str(T): ChunkStats.to_dict()}, `xr0 data stats`


@dataclass
class ChunkStats:
    """Population (ddof=0) statistics; `count[t]` is how many valid chunks reached step t."""

    action_mean: np.ndarray  # (T, D) float64
    action_std: np.ndarray  # (T, D)
    state_mean: np.ndarray  # (Ds,)
    state_std: np.ndarray  # (Ds,)
    count: np.ndarray  # (T,) int64
    n_samples: int

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


BLOCK = 4096  # samples per vectorised block


def _block(dataset, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(states (B, Ds), actions (B, T, D), valid (B, T)) of `indices`: the dataset's `lowdim_block` when it has one
    (vectorised), else its `lowdim(i)` or its samples stacked."""
    block = getattr(dataset, "lowdim_block", None)
    if block is not None:
        return block(indices)
    lowdim = getattr(dataset, "lowdim", None)
    rows = [lowdim(i) if lowdim is not None else
            (lambda s: (s["state"], s["actions"], s["action_valid"]))(dataset[i]) for i in indices]
    stack = lambda k, dtype: np.stack([np.asarray(r[k], dtype) for r in rows])  # noqa: E731
    return stack(0, np.float64), stack(1, np.float64), stack(2, bool)


def _combine(n_a, mean_a, m2_a, n_b, mean_b, m2_b):
    """Chan et al.'s pairwise update of (count, mean, sum of squared deviations), elementwise (exact, stable)."""
    n = n_a + n_b
    safe = np.maximum(n, 1)
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / safe)
    m2 = m2_a + m2_b + delta ** 2 * (n_a * n_b / safe)
    return n, mean, m2


def compute_stats(dataset, max_samples: int | None = None, stride: int = 1) -> ChunkStats:
    """Every `stride`-th sample of `dataset` (at most `max_samples`), in vectorised blocks of BLOCK samples
    combined exactly (Chan's pairwise mean / variance update, float64), without decoding video. Steps never valid
    in any chunk get mean 0 and std 0."""
    n_total = len(dataset)
    if n_total == 0:
        raise ValueError("cannot compute statistics of an empty dataset")
    indices = np.arange(0, n_total, max(1, stride))
    if max_samples is not None:
        indices = indices[:max_samples]
    count = mean = m2 = s_mean = s_m2 = None
    n = 0
    for start in range(0, len(indices), BLOCK):
        states, actions, valid = _block(dataset, [int(i) for i in indices[start: start + BLOCK]])
        v = valid[:, :, None].astype(np.float64)
        c = valid.sum(0)[:, None].astype(np.float64)  # (T, 1) valid chunks per step
        b_mean = (actions * v).sum(0) / np.maximum(c, 1)
        b_m2 = (((actions - b_mean) * v) ** 2).sum(0)
        sb = len(states)
        sb_mean = states.mean(0)
        sb_m2 = ((states - sb_mean) ** 2).sum(0)
        if count is None:
            count, mean, m2, s_mean, s_m2, n = c, b_mean, b_m2, sb_mean, sb_m2, sb
        else:
            count, mean, m2 = _combine(count, mean, m2, c, b_mean, b_m2)
            n, s_mean, s_m2 = _combine(n, s_mean, s_m2, sb, sb_mean, sb_m2)
    counts = count[:, 0].astype(np.int64)
    return ChunkStats(mean, np.sqrt(m2 / np.maximum(count, 1)), s_mean, np.sqrt(s_m2 / n), counts, int(n))


def read_chunk_stats(root, chunk_len: int, n_samples: int) -> ChunkStats | None:
    """The chunk statistics `xr0 data stats` wrote beside the dataset at `root` for this chunk length, if they
    cover exactly `n_samples` samples (the dataset as it is now); else None."""
    from pathlib import Path

    file = Path(root) / CHUNK_STATS
    if not file.is_file():
        return None
    try:
        entry = json.loads(file.read_text()).get(str(chunk_len))
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(entry, dict) or entry.get("n_samples") != n_samples:
        return None
    try:
        return ChunkStats.from_dict(entry)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{file} [{chunk_len}]: {e}") from e


def write_chunk_stats(root, chunk_len: int, stats: ChunkStats) -> None:
    """Add (or replace) the entry of this chunk length in the dataset's CHUNK_STATS file (atomic)."""
    from pathlib import Path

    from ..checkpoints import atomic_write

    file = Path(root) / CHUNK_STATS
    table = json.loads(file.read_text()) if file.is_file() else {}
    table[str(chunk_len)] = stats.to_dict()
    atomic_write(file, lambda tmp: Path(tmp).write_text(json.dumps(table)))
