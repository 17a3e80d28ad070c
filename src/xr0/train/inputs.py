"""What the trainer reads: datasets, the seeded epoch order, camera mapping and normalisation statistics."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from ..config import PADDED_DIM, PolicyConfig
from ..data.lerobot_v3 import match_cameras
from ..processing import RobotSpec


class EpochSampler:
    """Global sample position k -> dataset index: a fresh seeded permutation per epoch (pure, so resumable).

    `index` (optional): the dataset indices one epoch draws, repeats allowed (default: each of the n samples once);
    n is then the epoch's length.
    """

    def __init__(self, n: int, seed: int, index: np.ndarray | None = None):
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        n = int(n) if self.index is None else len(self.index)
        if n <= 0:
            raise ValueError("the dataset has no samples (every episode skipped or empty)")
        self.n, self.seed = n, int(seed)
        self._cache: tuple[int, np.ndarray] | None = None

    def __getitem__(self, k: int) -> int:
        epoch, pos = divmod(int(k), self.n)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, np.random.default_rng([self.seed, 0x5A4D, epoch]).permutation(self.n))
        i = int(self._cache[1][pos])
        return i if self.index is None else int(self.index[i])


def start_oversampled(dataset, start_frames: int, repeat: int) -> np.ndarray | None:
    """Epoch index that draws the first `start_frames` frames of every episode `repeat` times and the rest once:
    all samples in order, then the start frames again (repeat - 1) times. None when off.

    Where the target's position decides the motion, the first frames of an episode are the few samples that
    show it (later, the arm's own position already says where it is heading); see docs/changelog.md.
    """
    if start_frames <= 0 or repeat <= 1:
        return None
    if not hasattr(dataset, "frame_indices"):
        raise ValueError(f"--start-frames needs a dataset that knows each sample's frame index "
                         f"({type(dataset).__name__} does not)")
    frames = np.asarray(dataset.frame_indices())
    start = np.nonzero(frames < start_frames)[0]
    return np.concatenate([np.arange(len(frames))] + [start] * (repeat - 1))


def open_dataset(path: str | Path, chunk_len: int, cameras=None, skip_bad: bool = False):
    """A LeRobotDataset v3 folder (has meta/info.json) or official JSON episodes (a folder or one .json)."""
    root = Path(path)
    if (root / "meta" / "info.json").is_file():
        from ..data.lerobot_v3 import LeRobotV3Dataset
        return LeRobotV3Dataset(root, chunk_len, cameras=list(cameras) if cameras else None, skip_bad=skip_bad)
    if root.is_dir() or (root.is_file() and root.suffix == ".json"):
        from ..data.official_json import OfficialJsonDataset
        return OfficialJsonDataset([root] if root.is_file() else root, chunk_len,
                                   cameras=list(cameras) if cameras else None, skip_bad=skip_bad)
    raise FileNotFoundError(f"--data {root}: not found (expected a LeRobot v3 folder with meta/info.json, "
                            "or a folder of official JSON episodes)")


def dataset_cameras(ds) -> list[str]:
    cams = getattr(ds, "cameras", None)
    return list(cams) if cams else list(ds[0]["images"])


def camera_map(data_cams: list[str], model_cams: tuple[str, ...], explicit: bool) -> dict[str, str]:
    """Dataset camera -> model camera (`match_cameras`: by view title, else by position when the counts match).
    explicit: the cameras (and their order) came from --cameras."""
    n = len(model_cams)
    hint = f"--cameras must name {n}, in the model's order" if explicit else f"pick {n} and their order with --cameras"
    return match_cameras(data_cams, model_cams, source="the dataset", hint=hint, warn=not explicit)


def robot_spec_from_data(ds, config: PolicyConfig, max_samples: int | None = None,
                         raw_state: bool = False, chunk_len: int | None = None) -> RobotSpec:
    """Per-timestep action and state statistics -> a padded RobotSpec of chunk_len (default config.chunk_len) rows:
    those `xr0 data stats` wrote beside the dataset for this chunk length when they cover it as it is now, else
    computed (xr0.data.stats, vectorised). Prints which."""
    from ..data.stats import CHUNK_STATS, compute_stats, read_chunk_stats

    T, D, Ds = chunk_len or config.chunk_len, config.action_dim, config.state_dim
    root = getattr(ds, "root", None)
    stats = None if root is None or max_samples is not None else read_chunk_stats(root, T, len(ds))
    if stats is not None:
        print(f"xr0 train: statistics read from {Path(root) / CHUNK_STATS} (T = {T}, {stats.n_samples} samples)",
              file=sys.stderr)
    else:
        stats = compute_stats(ds, max_samples=max_samples)
    da, ds_dim = stats.action_mean.shape[1], stats.state_mean.shape[0]
    if stats.action_mean.shape[0] != T:
        raise ValueError(f"dataset chunks have {stats.action_mean.shape[0]} steps, the model's chunk_len is {T}")
    if da > D:
        raise ValueError(f"dataset action_dim {da} exceeds the model's padded action_dim {D}")
    if ds_dim > Ds:
        raise ValueError(f"dataset state_dim {ds_dim} exceeds the model's padded state_dim {Ds}")
    fix_std = lambda s: np.where(s > 1e-6, s, 1.0)  # noqa: E731  constant dims: keep them finite at inference
    a_mean, a_std = np.zeros((T, D), np.float32), np.ones((T, D), np.float32)
    a_mean[:, :da], a_std[:, :da] = stats.action_mean, fix_std(stats.action_std)
    mask = np.zeros(D, np.float32)
    if getattr(ds, "action_dim", None) is None and da == PADDED_DIM:  # the official 32-D layout: reserved dims stay off
        from ..data.official_json import ACTIVE_DIMS
        mask[:] = ACTIVE_DIMS
    else:
        mask[:da] = 1
    s_mean, s_std = np.zeros(Ds, np.float32), np.ones(Ds, np.float32)
    if not raw_state:
        s_mean[:ds_dim], s_std[:ds_dim] = stats.state_mean, fix_std(stats.state_std)
    return RobotSpec(a_mean, a_std, mask, s_mean, s_std, action_dim=da, state_dim=ds_dim)
