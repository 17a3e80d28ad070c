"""Robot and vision-language data for XR-0: readers, writers, statistics, augmentation, mixing.

Every robot reader returns the same torch-free sample dict, so training code never cares which
on-disk format a dataset came from::

    {"images": {cam: uint8 (H, W, 3)}, "instruction": str, "state": float32 (Ds,),
     "actions": float32 (T, Da), "action_valid": bool (T,), "episode": int, "frame": int}

Bad data raises `DataError` naming the file and the episode; readers built with `skip_bad=True`
skip such episodes instead and list them in `dataset.skipped`, so nothing is dropped silently.

Heavy submodules (pyarrow, PyAV) load lazily: `from xr0.data import DataError` costs nothing.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

import numpy as np


class DataError(ValueError):
    """A dataset file is missing, corrupt or inconsistent. The message names the file and episode."""


class Skipped(NamedTuple):
    """One episode left out by a reader built with `skip_bad=True`, and why."""

    episode: int
    file: str
    reason: str


def chunk_window(n_frames: int, start: int, chunk_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame indices of the chunk starting at `start`, clamped to the last frame, and their validity.

    Padding repeats the episode's last action (spec §6.7), so the mask, not the value, marks the
    padded tail.
    """
    idx = start + np.arange(chunk_len)
    valid = idx < n_frames
    return np.minimum(idx, n_frames - 1), valid


_LAZY = {
    "LeRobotV3Writer": "lerobot_v3",
    "LeRobotV3Dataset": "lerobot_v3",
    "OfficialJsonDataset": "official_json",
    "write_official_episode": "official_json",
    "relative_chunk": "official_json",
    "ChunkStats": "stats",
    "compute_stats": "stats",
    "ImageAugment": "augment",
    "VLDataset": "vl",
}

__all__ = ["DataError", "Skipped", "chunk_window", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class EpisodeIndex:
    """Sample index -> (episode, frame) over the kept episodes; subclasses fill `_episodes` and `_offsets`."""

    _episodes: list
    _offsets: np.ndarray  # cumulative sample counts, starting at 0

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def episodes(self) -> list[int]:
        """Indices of the episodes kept (after skipping bad ones)."""
        return [e.index for e in self._episodes]

    def frame_indices(self) -> np.ndarray:
        """Each sample's frame index within its episode (len(self),)."""
        return np.concatenate([np.arange(n) for n in np.diff(self._offsets)]) if len(self) else np.zeros(0, int)

    def _locate(self, i: int):
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"sample {i} out of range for {n} samples")
        pos = int(np.searchsorted(self._offsets, i, side="right")) - 1
        return self._episodes[pos], i - int(self._offsets[pos])
