"""Action spaces (absolute targets, per-tick deltas, deltas anchored to the state, pose dims) and safety limits:
what an executor does to a chunk between the policy and the robot (spec §6.7, §7.2)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from ..rotations import axis_angle_to_matrix, matrix_to_axis_angle

# --------------------------------------------------------------------------- action spaces


class ActionSpace(ABC):
    """How a chunk's actions relate to the state it was predicted from (its anchor)."""

    def anchor(self, obs: dict) -> np.ndarray | None:
        """The anchor vector of an observation: ``obs["anchor_state"]`` if present, else ``obs["state"]``."""
        value = obs.get("anchor_state", obs.get("state"))
        return None if value is None else np.asarray(value, dtype=np.float64)

    @abstractmethod
    def to_absolute(self, chunk: np.ndarray, anchor_state: np.ndarray | None) -> np.ndarray:
        """(T, D) chunk relative to ``anchor_state`` -> (T, D) absolute targets."""

    @abstractmethod
    def to_relative(self, abs_chunk: np.ndarray, anchor_state: np.ndarray | None) -> np.ndarray:
        """(T, D) absolute targets -> (T, D) relative to ``anchor_state`` (inverse of ``to_absolute``)."""

    def hold(self, last_action: np.ndarray) -> np.ndarray:
        """The command that keeps the robot still after ``last_action``: repeating an absolute target."""
        return last_action


class IdentityActions(ActionSpace):
    """Absolute targets, or per-tick deltas that need no re-anchoring.

    For per-tick delta control (e.g. LIBERO end-effector deltas) repeating the last delta would keep
    moving, so ``zero_on_hold`` lists the dims set to 0 while holding (keep the gripper dim out of it).
    """

    def __init__(self, zero_on_hold: Sequence[int] = ()):
        self.zero_on_hold = np.asarray(zero_on_hold, dtype=np.int64)

    def to_absolute(self, chunk, anchor_state=None):
        return np.array(chunk, dtype=np.float64)

    def to_relative(self, abs_chunk, anchor_state=None):
        return np.array(abs_chunk, dtype=np.float64)

    def hold(self, last_action):
        held = np.array(last_action, dtype=np.float64)
        held[self.zero_on_hold] = 0.0
        return held


def _dims(name: str, value: Sequence[int] | None, n: int | None = 3) -> np.ndarray | None:
    if value is None:
        return None
    arr = np.asarray(value, dtype=np.int64).reshape(-1)
    if n is not None and arr.shape != (n,):
        raise ValueError(f"{name} must list {n} dims, got {list(arr)}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must hold non-negative indices, got {list(arr)}")
    return arr


@dataclass(frozen=True)
class PoseDims:
    """Where one end effector lives (all indices, length 3).

    Actions: ``pos`` holds R_aᵀ(p − p_a); ``rot`` (optional) holds axis-angle(R_aᵀ R). Anchor state:
    ``state_pos`` holds p_a, ``state_rot`` holds axis-angle(R_a). Without ``state_rot`` the position
    delta is in the world frame. Absolute actions use the same dims for p and axis-angle(R).
    """

    pos: Sequence[int]
    state_pos: Sequence[int]
    rot: Sequence[int] | None = None
    state_rot: Sequence[int] | None = None


class AnchoredDeltaActions(ActionSpace):
    """All T actions of a chunk relative to the same anchor state (spec §6.7), not incremental.

    ``delta_dims`` (grippers, joints): action = target − anchor[state_dims] (``state_dims`` defaults
    to ``delta_dims``, as in XR-0's 32-D layout). ``poses``: end-effector position and optional
    axis-angle rotation relative to the anchor pose. Dims in neither list pass through unchanged.
    """

    def __init__(self, delta_dims: Sequence[int] = (), state_dims: Sequence[int] | None = None, poses: Sequence[PoseDims] = ()):
        self.delta_dims = _dims("delta_dims", delta_dims, None)
        self.state_dims = self.delta_dims if state_dims is None else _dims("state_dims", state_dims, None)
        if self.state_dims.shape != self.delta_dims.shape:
            raise ValueError(f"state_dims has {len(self.state_dims)} entries but delta_dims has {len(self.delta_dims)}")
        self.poses = []
        for i, p in enumerate(poses):
            pose = PoseDims(
                pos=_dims(f"poses[{i}].pos", p.pos),
                state_pos=_dims(f"poses[{i}].state_pos", p.state_pos),
                rot=_dims(f"poses[{i}].rot", p.rot),
                state_rot=_dims(f"poses[{i}].state_rot", p.state_rot),
            )
            if pose.rot is not None and pose.state_rot is None:
                raise ValueError(f"poses[{i}].rot needs poses[{i}].state_rot (the anchor orientation)")
            self.poses.append(pose)
        used = np.concatenate([self.delta_dims] + [d for p in self.poses for d in (p.pos, p.rot) if d is not None])
        if len(np.unique(used)) != len(used):
            raise ValueError(f"action dims are listed twice across delta_dims/poses: {sorted(used.tolist())}")
        self._max_action = int(used.max()) if len(used) else -1
        state_used = [self.state_dims] + [d for p in self.poses for d in (p.state_pos, p.state_rot) if d is not None]
        self._max_state = int(np.concatenate(state_used).max()) if sum(len(s) for s in state_used) else -1

    def _check(self, chunk: np.ndarray, anchor_state: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        chunk = np.array(chunk, dtype=np.float64)
        if chunk.ndim != 2 or chunk.shape[1] <= self._max_action:
            raise ValueError(f"chunk must be (T, D) with D > {self._max_action}, got shape {chunk.shape}")
        if anchor_state is None:
            raise ValueError("anchor_state is None: relative actions need obs['state'] or obs['anchor_state']")
        anchor = np.asarray(anchor_state, dtype=np.float64).reshape(-1)
        if anchor.shape[0] <= self._max_state:
            raise ValueError(f"anchor_state has {anchor.shape[0]} entries but dim {self._max_state} is used")
        return chunk, anchor

    def _anchor_rotation(self, pose: PoseDims, anchor: np.ndarray) -> np.ndarray:
        return np.eye(3) if pose.state_rot is None else axis_angle_to_matrix(anchor[pose.state_rot])

    def to_absolute(self, chunk, anchor_state):
        rel, anchor = self._check(chunk, anchor_state)
        out = rel.copy()
        out[:, self.delta_dims] += anchor[self.state_dims]
        for pose in self.poses:
            r_a = self._anchor_rotation(pose, anchor)
            out[:, pose.pos] = anchor[pose.state_pos] + rel[:, pose.pos] @ r_a.T
            if pose.rot is not None:
                out[:, pose.rot] = matrix_to_axis_angle(r_a @ axis_angle_to_matrix(rel[:, pose.rot]))
        return out

    def to_relative(self, abs_chunk, anchor_state):
        absolute, anchor = self._check(abs_chunk, anchor_state)
        out = absolute.copy()
        out[:, self.delta_dims] -= anchor[self.state_dims]
        for pose in self.poses:
            r_a = self._anchor_rotation(pose, anchor)
            out[:, pose.pos] = (absolute[:, pose.pos] - anchor[pose.state_pos]) @ r_a
            if pose.rot is not None:
                out[:, pose.rot] = matrix_to_axis_angle(r_a.T @ axis_angle_to_matrix(absolute[:, pose.rot]))
        return out


# --------------------------------------------------------------------------- safety limits


class ActionLimits:
    """Clip each command to [low, high] per dim, then limit its change from the last command to ``max_delta``.

    Both steps keep the command between the last one and the request, so the result stays in the box.
    """

    def __init__(self, low: Any = None, high: Any = None, max_delta: Any = None):
        self.low = None if low is None else np.asarray(low, dtype=np.float64)
        self.high = None if high is None else np.asarray(high, dtype=np.float64)
        self.max_delta = None if max_delta is None else np.asarray(max_delta, dtype=np.float64)
        if self.low is not None and self.high is not None and np.any(self.low > self.high):
            raise ValueError("ActionLimits.low must be <= ActionLimits.high in every dim")
        if self.max_delta is not None and np.any(~(self.max_delta > 0)):
            raise ValueError("ActionLimits.max_delta must be > 0 in every dim")

    def apply(self, action: np.ndarray, last: np.ndarray | None) -> np.ndarray:
        out = np.asarray(action, dtype=np.float64)
        if self.low is not None or self.high is not None:
            out = np.clip(out, self.low, self.high)
        if self.max_delta is not None and last is not None:
            out = last + np.clip(out - last, -self.max_delta, self.max_delta)
        return out
