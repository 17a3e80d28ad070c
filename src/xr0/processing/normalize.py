"""One robot type as a checkpoint holds it (spec §6.7): action/state statistics and the action mask, the chunk
length (the statistics' rows), the dims users pass and receive, the cameras and how their images are sized."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass

import numpy as np

from ..config import PADDED_DIM
from .images import ImageSpec

EPS = 1e-6  # (a - mean) / (std + EPS), as the released pipeline
# How a robot type's chunks are decoded, as the code that trained it does:
# "release": the released checkpoints' processor, decode_action = x * std + mean (no epsilon, no mask);
# "masked": the April post-training server (and xr0's own checkpoints), denormalize_action(x * mask) * mask with
# std + EPS: dims the action mask drops come back 0.
DECODES = ("release", "masked")
# The fields a dataset's statistics set (xr0.train.inputs.robot_spec_from_data); the rest describe how the robot
# type runs (cameras, images, decoding, delta dims) and come with the weights.
STAT_FIELDS = ("action_mean", "action_std", "action_mask", "state_mean", "state_std", "action_dim", "state_dim")


@dataclass
class RobotSpec:
    """One robot type.

    action_mean/action_std: (T, D) per-timestep statistics of normalised-space chunks (D = padded action dim); T, the
    number of rows, is this robot type's chunk length.
    action_mask: (D,) 1 on dims the robot uses; the expert's input is multiplied by it.
    state_mean/state_std: (D_state,) (identity by default: the released models feed raw state).
    action_dim/state_dim: how many leading dims users pass and receive (e.g. 7 and 8 for LIBERO).
    cameras: the view titles, in prompt order ("Base View", ...); image: how their images are sized (ImageSpec).
    Empty / None only until XR0Policy fills them from its config (checkpoints written before they were stored).
    decode: DECODES, how denormalize_actions decodes (release folders: "release"; otherwise "masked").
    delta_dims: the action dims that are per-tick deltas (the rest are absolute targets): a held tick sends 0 there,
    so a late chunk never keeps the arm moving (runtime executors' default action space).
    """

    action_mean: np.ndarray
    action_std: np.ndarray
    action_mask: np.ndarray
    state_mean: np.ndarray
    state_std: np.ndarray
    action_dim: int
    state_dim: int
    cameras: tuple[str, ...] = ()
    image: ImageSpec | None = None
    decode: str = "masked"
    delta_dims: tuple[int, ...] = ()

    @classmethod
    def identity(cls, chunk_len: int, action_dim: int = PADDED_DIM, state_dim: int = PADDED_DIM,
                 padded_action_dim: int = PADDED_DIM, padded_state_dim: int = PADDED_DIM, cameras=(),
                 image: ImageSpec | None = None) -> "RobotSpec":
        mask = np.zeros(padded_action_dim, np.float32)
        mask[:action_dim] = 1
        return cls(np.zeros((chunk_len, padded_action_dim), np.float32), np.ones((chunk_len, padded_action_dim), np.float32),
                   mask, np.zeros(padded_state_dim, np.float32), np.ones(padded_state_dim, np.float32),
                   action_dim, state_dim, tuple(cameras), image)

    def __post_init__(self):
        for name in ("action_mean", "action_std", "action_mask", "state_mean", "state_std"):
            arr = np.asarray(getattr(self, name), dtype=np.float32)
            if not np.isfinite(arr).all():
                raise ValueError(f"robot statistics field {name!r} contains NaN or inf")
            setattr(self, name, arr)
        T, D = self.action_mean.shape
        if self.action_std.shape != (T, D) or self.action_mask.shape != (D,):
            raise ValueError(f"action_std {self.action_std.shape} / action_mask {self.action_mask.shape} "
                             f"do not match action_mean {(T, D)}")
        if not 0 < self.action_dim <= D or not 0 < self.state_dim <= self.state_mean.shape[0]:
            raise ValueError(f"action_dim {self.action_dim} / state_dim {self.state_dim} out of range")
        self.action_dim, self.state_dim = int(self.action_dim), int(self.state_dim)
        self.cameras = tuple(self.cameras)
        self.delta_dims = tuple(int(d) for d in self.delta_dims)
        if any(not 0 <= d < self.action_dim for d in self.delta_dims):
            raise ValueError(f"delta_dims {list(self.delta_dims)} must lie in 0..action_dim-1 = {self.action_dim - 1}")
        if self.decode not in DECODES:
            raise ValueError(f"decode must be one of {DECODES}, got {self.decode!r}")
        if len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"camera names repeat: {list(self.cameras)}")

    def with_setup(self, cameras, image: ImageSpec) -> "RobotSpec":
        """This robot type with `cameras` / `image` filled in where it has none (older checkpoints)."""
        return dataclasses.replace(self, cameras=self.cameras or tuple(cameras), image=self.image or image)

    @property
    def chunk_len(self) -> int:
        return self.action_mean.shape[0]

    def normalize_state(self, state: np.ndarray) -> np.ndarray:
        padded = np.zeros(self.state_mean.shape, np.float32)
        padded[: self.state_dim] = state
        out = (padded - self.state_mean) / (self.state_std + EPS)
        out[self.state_dim:] = 0
        return out

    def normalize_actions(self, actions: np.ndarray) -> np.ndarray:
        """(..., p, action_dim) physical actions occupying chunk slots 0..p-1 -> (..., p, D) normalised."""
        p = actions.shape[-2]
        padded = np.zeros((*actions.shape[:-1], self.action_mean.shape[1]), np.float32)
        padded[..., : self.action_dim] = actions
        return (padded - self.action_mean[:p]) / (self.action_std[:p] + EPS) * self.action_mask

    def denormalize_actions(self, x: np.ndarray) -> np.ndarray:
        """(..., T, D) normalised -> (..., T, action_dim) physical, by this robot type's `decode` rule (DECODES)."""
        T = x.shape[-2]
        mean, std = self.action_mean[:T], self.action_std[:T]
        if self.decode == "release":
            out = x * std + mean
        else:
            out = ((x * self.action_mask) * (std + EPS) + mean) * self.action_mask
        return out[..., : self.action_dim].astype(np.float32)

    def setup(self) -> dict:
        """The non-array fields as a checkpoint's config.json stores them (XR0Policy.save_pretrained)."""
        return {"action_dim": self.action_dim, "state_dim": self.state_dim, "chunk_len": self.chunk_len,
                "cameras": list(self.cameras), "image": None if self.image is None else self.image.to_dict(),
                "decode": self.decode, "delta_dims": list(self.delta_dims)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"action_mean": self.action_mean, "action_std": self.action_std, "action_mask": self.action_mask,
                "state_mean": self.state_mean, "state_std": self.state_std}


def stats_hash(robots: dict[str, RobotSpec]) -> str:
    """A short content hash of all statistics: the server sends it so a client can check it talks to the right model."""
    h = hashlib.sha256()
    for name in sorted(robots):
        spec = robots[name]
        h.update(f"{name}:{spec.action_dim}:{spec.state_dim}".encode())
        for key, arr in sorted(spec.arrays().items()):
            h.update(key.encode())
            h.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]
