"""What the benchmark clients (LIBERO, CALVIN, SimplerEnv, MetaWorld: xr0.sim.libero, calvin, simpler,
metaworld_eval) share, per the official XR-0 evaluation protocols (spec §9.4): rotation conventions, the test-time
crop, payload images, state / prefix padding, noise seeds and --noise-seed, and ChunkPolicy (an XR0Policy as the
executors' chunk callable).

Pure numpy + PIL, importable without any simulator. Rotation conventions (the ones the released checkpoints were
trained with, so the state a policy sees matches its training data):
- quaternions are (x, y, z, w) unless a name says wxyz;
- Euler angles are transforms3d's static 'sxyz' (roll about x, then pitch about y, then yaw about z, fixed axes):
  R = Rz(yaw) @ Ry(pitch) @ Rx(roll);
- axis-angle is axis * angle.
"""

from __future__ import annotations

from collections.abc import Callable

import math
import time

import numpy as np
from PIL import Image

from ..processing.seeds import observation_seed, request_seed
from ..rotations import axis_angle_to_matrix, matrix_to_axis_angle

__all__ = ["quat_to_matrix", "matrix_to_quat", "euler_to_matrix", "matrix_to_euler", "euler_to_axis_angle",
           "axis_angle_to_euler", "quat_to_axis_angle", "axis_angle_to_matrix", "matrix_to_axis_angle",
           "center_crop_resize", "observation_seed", "request_seed", "pil", "pad_prefix", "pad_state",
           "add_noise_seed_argument", "noise_seeds", "resolve_robot_type", "ChunkPolicy"]


# ---------------------------------------------------------------------------------------------- rotations
def quat_to_matrix(q_xyzw) -> np.ndarray:
    """(x, y, z, w) unit quaternion -> 3x3 rotation (normalised first, so slightly off-unit input is fine)."""
    x, y, z, w = np.asarray(q_xyzw, dtype=np.float64) / np.linalg.norm(q_xyzw)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(r) -> np.ndarray:
    """3x3 rotation -> (x, y, z, w) with w >= 0 (the sign transforms3d.mat2quat picks)."""
    r = np.asarray(r, dtype=np.float64)
    tr = np.trace(r)
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [(r[2, 1] - r[1, 2]) / s, (r[0, 2] - r[2, 0]) / s, (r[1, 0] - r[0, 1]) / s, 0.25 * s]
    else:  # largest diagonal element picks the well-conditioned branch
        i = int(np.argmax(np.diag(r)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + r[i, i] - r[j, j] - r[k, k], 1e-300))
        q = [0.0, 0.0, 0.0, (r[k, j] - r[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (r[j, i] + r[i, j]) / s
        q[k] = (r[k, i] + r[i, k]) / s
    q = np.asarray(q)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def euler_to_matrix(rpy) -> np.ndarray:
    """Static-axes xyz Euler (roll, pitch, yaw) -> Rz(yaw) Ry(pitch) Rx(roll)."""
    a, b, c = (float(v) for v in rpy)
    ca, sa, cb, sb, cc, sc = math.cos(a), math.sin(a), math.cos(b), math.sin(b), math.cos(c), math.sin(c)
    return np.array([
        [cc * cb, cc * sb * sa - sc * ca, cc * sb * ca + sc * sa],
        [sc * cb, sc * sb * sa + cc * ca, sc * sb * ca - cc * sa],
        [-sb, cb * sa, cb * ca],
    ])


def matrix_to_euler(r) -> np.ndarray:
    """3x3 rotation -> static-axes xyz Euler (roll, pitch, yaw), pitch in [-pi/2, pi/2] (transforms3d 'sxyz')."""
    r = np.asarray(r, dtype=np.float64)
    cy = math.hypot(r[0, 0], r[1, 0])
    if cy > 1e-12:
        return np.array([math.atan2(r[2, 1], r[2, 2]), math.atan2(-r[2, 0], cy), math.atan2(r[1, 0], r[0, 0])])
    return np.array([math.atan2(-r[1, 2], r[1, 1]), math.atan2(-r[2, 0], cy), 0.0])  # gimbal lock: yaw := 0


def euler_to_axis_angle(rpy) -> np.ndarray:
    """(roll, pitch, yaw) -> axis * angle, angle in [0, pi] (SimplerEnv feeds rotations to its env this way)."""
    return matrix_to_axis_angle(euler_to_matrix(rpy))


def axis_angle_to_euler(v) -> np.ndarray:
    return matrix_to_euler(axis_angle_to_matrix(v))


def quat_to_axis_angle(q_xyzw) -> np.ndarray:
    """LIBERO's state convention (robosuite's quat2axisangle): angle = 2 acos(w) in [0, 2 pi], no sign
    canonicalisation, so w < 0 gives angles above pi. The LIBERO checkpoints saw states built this way."""
    q = np.asarray(q_xyzw, dtype=np.float64)
    w = min(max(q[3], -1.0), 1.0)
    den = math.sqrt(1.0 - w * w)
    if math.isclose(den, 0.0, abs_tol=1e-9):
        return np.zeros(3)
    return q[:3] * 2.0 * math.acos(w) / den


# ---------------------------------------------------------------------------------------------- images
def center_crop_resize(img: np.ndarray, ratio: float = 0.95) -> np.ndarray:
    """Centre crop int(H*ratio) x int(W*ratio) (offsets floor((H-h)/2)), then bilinear back to (H, W):
    the official CALVIN/SimplerEnv test-time counterpart of the training-time random 0.95 crop."""
    if not 0 < ratio <= 1:
        raise ValueError(f"crop ratio must be in (0, 1], got {ratio}")
    h, w = img.shape[:2]
    ch, cw = int(h * ratio), int(w * ratio)
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = np.ascontiguousarray(img[top: top + ch, left: left + cw])
    return np.asarray(Image.fromarray(crop).resize((w, h), Image.BILINEAR))


# ---------------------------------------------------------------------------------------------- prompts, seeds
def pil(img: np.ndarray) -> Image.Image:
    """(H, W, 3) uint8 -> the PIL RGB image an official client puts in its payload."""
    return Image.fromarray(np.ascontiguousarray(img), mode="RGB")


def pad_prefix(prefix: np.ndarray, width: int) -> np.ndarray:
    """(p, d) committed actions -> (p, width) float32 with zeros after d (the served or sampled action width)."""
    out = np.zeros((len(prefix), width), np.float32)
    out[:, : prefix.shape[1]] = prefix
    return out


def pad_state(state, width: int = 32) -> np.ndarray:
    """(d,) -> (width,) float32 with zeros after d."""
    state = np.asarray(state, dtype=np.float32).reshape(-1)
    if state.shape[0] > width:
        raise ValueError(f"state has {state.shape[0]} dims, more than {width}")
    out = np.zeros(width, np.float32)
    out[: state.shape[0]] = state
    return out


def add_noise_seed_argument(parser) -> None:
    """--noise-seed of the benchmark CLIs (xr0 eval libero / calvin / simpler)."""
    parser.add_argument("--noise-seed", default="official", metavar="official|N",
                        help="noise seed of every request: 'official' = hash_data_to_seed of the official client's "
                             "payload (replays the official logs' noise), or one integer for every request")


def noise_seeds(text: str) -> Callable[[int], int] | None:
    """--noise-seed -> ChunkPolicy's seed_of_call (None: the official per-request seed in obs["seed"])."""
    if text == "official":
        return None
    try:
        seed = int(text)
    except ValueError as e:
        raise ValueError(f"--noise-seed must be 'official' or an integer, got {text!r}") from e
    if not 0 <= seed < 2 ** 63:
        raise ValueError(f"--noise-seed must be in [0, 2**63), got {seed}")
    return lambda call: seed


# ---------------------------------------------------------------------------------------------- policy side
def resolve_robot_type(policy, wanted: str) -> str:
    """`wanted` if the checkpoint has it; a checkpoint with a single robot type (e.g. a random preset) uses that."""
    if wanted in policy.robots:
        return wanted
    if len(policy.robots) == 1:
        return next(iter(policy.robots))
    raise ValueError(f"checkpoint has no robot type {wanted!r} (it has {sorted(policy.robots)})")


class ChunkPolicy:
    """An XR0Policy as the executors' `(obs, prefix, prefix_weights=None) -> (T, act_dims)` callable: the one
    adapter the MetaWorld and LIBERO evaluations use (a remote policy: PolicyClient.as_policy_fn).

    obs: {"images": {camera: (H, W, 3) uint8}, "state": (d,), "prompt": str, optional "seed"}. The state and the
    prefix are padded to the robot type's widths. The noise seed of call i is `seed_of_call(i)` when given, else
    obs["seed"] (the benchmark clients put the official client's seed there), else `request_seed` of the
    inputs (a re-run of the same observation gives the same chunk).
    `steps`: denoising steps (default: the checkpoint's). `wall_ms`: a list each call's wall time is appended to.
    """

    def __init__(self, policy, robot_type: str | None, act_dims: int = 7,
                 seed_of_call: Callable[[int], int] | None = None, steps: int | None = None,
                 wall_ms: list[float] | None = None):
        self.policy, self.robot_type = policy, resolve_robot_type(policy, robot_type)
        self.robot = policy.robot(self.robot_type)
        self.act_dims = act_dims  # 7: the end-effector action of the official LIBERO / CALVIN / SimplerEnv protocols
        self.max_prefix = policy.config.max_prefix  # what the executors read: the trained clean prefix, the
        self.delta_dims = tuple(d for d in self.robot.delta_dims if d < act_dims)  # dims a held tick zeroes
        self.seed_of_call, self.steps, self.wall_ms = seed_of_call, steps, wall_ms
        self.calls, self.seconds = 0, 0.0

    def seed(self, obs: dict) -> int:
        if self.seed_of_call is not None:
            return int(self.seed_of_call(self.calls))
        if obs.get("seed") is not None:
            return int(obs["seed"])
        return request_seed(self.robot_type, pad_state(obs["state"]), obs["images"], obs["prompt"])

    def __call__(self, obs: dict, prefix: np.ndarray | None = None, prefix_weights=None) -> np.ndarray:
        state = pad_state(obs["state"], self.robot.state_dim)
        if prefix is not None:
            prefix = pad_prefix(prefix, self.robot.action_dim)
        t0 = time.perf_counter()
        extra = {k: v for k, v in (("steps", self.steps), ("prefix_weights", prefix_weights)) if v is not None}
        chunk = self.policy.sample(obs["images"], obs["prompt"], state, prefix=prefix, seed=self.seed(obs),
                                   robot_type=self.robot_type, **extra)
        self.calls += 1
        seconds = time.perf_counter() - t0
        self.seconds += seconds
        if self.wall_ms is not None:
            self.wall_ms.append(seconds * 1000)
        return np.asarray(chunk[:, : self.act_dims], np.float64)
