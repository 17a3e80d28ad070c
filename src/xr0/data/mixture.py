"""Deterministic VL/robot mixing at the stage-1 ratio VL : robot = 1 : 6 (spec §4).

Draws come in blocks of 7 (generally vl + robot): each block holds exactly the ratio, in a
seeded random order, so any prefix of 7k draws has the exact ratio and no long runs of one kind.
Within each source, indices walk a fresh seeded permutation every epoch (sampling without
replacement). Draw `step` is a pure function of (seed, step): random access, resumable, and
shardable across ranks by striding over steps.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

ROBOT, VL = "robot", "vl"


class MixtureSampler:
    """`sampler[step] -> ("robot" | "vl", index)`; iterate for an endless stream from `start`."""

    def __init__(self, robot_len: int, vl_len: int, ratio: tuple[int, int] = (1, 6), seed: int = 0):
        n_vl, n_robot = ratio
        if n_vl < 0 or n_robot < 0 or n_vl + n_robot == 0:
            raise ValueError(f"ratio (vl, robot) must be non-negative and not both 0, got {ratio}")
        if (n_robot and robot_len <= 0) or (n_vl and vl_len <= 0):
            raise ValueError(f"empty source: robot_len={robot_len}, vl_len={vl_len}, ratio={ratio}")
        self.lens = {ROBOT: int(robot_len), VL: int(vl_len)}
        self.ratio = (int(n_vl), int(n_robot))
        self.block = n_vl + n_robot
        self.seed = int(seed)
        self._block_cache: tuple[int, np.ndarray] | None = None
        self._perm_cache: dict[str, tuple[int, np.ndarray]] = {}

    def _block_kinds(self, b: int) -> np.ndarray:
        """Boolean array over the block's positions: True where the draw is VL."""
        if self._block_cache is None or self._block_cache[0] != b:
            kinds = np.zeros(self.block, dtype=bool)
            kinds[: self.ratio[0]] = True
            self._block_cache = (b, np.random.default_rng([self.seed, 0, b]).permutation(kinds))
        return self._block_cache[1]

    def _index(self, source: str, k: int) -> int:
        """The k-th draw of `source`: epoch k // len, position k % len of that epoch's permutation."""
        n = self.lens[source]
        epoch, pos = divmod(k, n)
        cached = self._perm_cache.get(source)
        if cached is None or cached[0] != epoch:
            perm = np.random.default_rng([self.seed, 1 if source == ROBOT else 2, epoch]).permutation(n)
            cached = self._perm_cache[source] = (epoch, perm)
        return int(cached[1][pos])

    def __getitem__(self, step: int) -> tuple[str, int]:
        if step < 0:
            raise IndexError(f"step must be >= 0, got {step}")
        b, p = divmod(int(step), self.block)
        kinds = self._block_kinds(b)
        is_vl = bool(kinds[p])
        before = int(kinds[:p].sum()) if is_vl else int((~kinds[:p]).sum())
        per_block = self.ratio[0] if is_vl else self.ratio[1]
        source = VL if is_vl else ROBOT
        return source, self._index(source, b * per_block + before)

    def __iter__(self) -> Iterator[tuple[str, int]]:
        return self.iter(0)

    def iter(self, start: int = 0, stride: int = 1) -> Iterator[tuple[str, int]]:
        """Endless draws start, start + stride, ...; use start=rank, stride=world_size to shard."""
        step = start
        while True:
            yield self[step]
            step += stride


class MixedDataset:
    """`mixed[step] -> (source, sample)` over a robot dataset and a VL dataset.

    `len()` defaults to the steps that visit every robot sample once (ceil(robot_len / 6) * 7 at 1:6).
    """

    def __init__(self, robot, vl, ratio: tuple[int, int] = (1, 6), seed: int = 0, length: int | None = None):
        self.robot, self.vl = robot, vl
        self.sampler = MixtureSampler(len(robot), len(vl), ratio, seed)
        n_vl, n_robot = ratio
        self.length = length if length is not None else -(-len(robot) // max(n_robot, 1)) * (n_vl + n_robot)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, step: int) -> tuple[str, dict]:
        source, index = self.sampler[step]
        return source, (self.vl if source == VL else self.robot)[index]
