"""Rotations as numpy arrays: axis-angle (rotation vectors) <-> 3x3 matrices, batched over leading dims. One
implementation for the data readers (official JSON episodes) and the runtime (anchored pose actions)."""

from __future__ import annotations

import numpy as np


def _skew(v: np.ndarray) -> np.ndarray:
    out = np.zeros(v.shape[:-1] + (3, 3))
    out[..., 0, 1], out[..., 0, 2], out[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    out[..., 1, 0], out[..., 2, 0], out[..., 2, 1] = v[..., 2], -v[..., 1], v[..., 0]
    return out


def axis_angle_to_matrix(v: np.ndarray) -> np.ndarray:
    """Rodrigues: (..., 3) axis-angle -> (..., 3, 3), with a series expansion near zero."""
    v = np.asarray(v, dtype=np.float64)
    theta = np.linalg.norm(v, axis=-1)[..., None, None]
    small = theta < 1e-6
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1 - theta**2 / 6, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta**2 / 24, (1 - np.cos(safe)) / safe**2)
    k = _skew(v)
    return np.eye(3) + a * k + b * (k @ k)


def matrix_to_axis_angle(rotm: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle, angle in [0, π].

    Goes through the quaternion (Shepperd's branch choice), which stays accurate near 0 and π where
    the trace/skew formula loses precision.
    """
    m = np.asarray(rotm, dtype=np.float64)
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    sq = np.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    branch = np.argmax(sq, axis=-1)
    r = 0.5 * np.sqrt(np.maximum(np.take_along_axis(sq, branch[..., None], -1)[..., 0], 1e-300))
    inv = 0.25 / r
    cands = np.stack([
        np.stack([r, (m21 - m12) * inv, (m02 - m20) * inv, (m10 - m01) * inv], -1),
        np.stack([(m21 - m12) * inv, r, (m01 + m10) * inv, (m02 + m20) * inv], -1),
        np.stack([(m02 - m20) * inv, (m01 + m10) * inv, r, (m12 + m21) * inv], -1),
        np.stack([(m10 - m01) * inv, (m02 + m20) * inv, (m12 + m21) * inv, r], -1),
    ], -2)
    q = np.take_along_axis(cands, branch[..., None, None], -2)[..., 0, :]
    q = np.where(q[..., :1] < 0, -q, q)  # w >= 0 keeps the angle in [0, π]
    w, v = q[..., 0], q[..., 1:]
    s = np.linalg.norm(v, axis=-1)
    angle = 2.0 * np.arctan2(s, w)
    scale = np.where(s > 1e-12, angle / np.maximum(s, 1e-300), 2.0 / np.maximum(w, 1e-300))
    return v * scale[..., None]
