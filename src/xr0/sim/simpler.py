"""SimplerEnv (WidowX/Bridge and Google Robot/Fractal) with the official XR-0 evaluation protocol (spec §8.3, §9.4).

Protocol (Xiaomi's eval_simplerenv/main.py): one camera image, resized to 256x256 (Bridge, "Base View") or 320x256
W x H (Fractal, "Ego View") with PIL's default bicubic filter, then centre-cropped to 0.95 and resized back
(bilinear); instruction with its first letter upper-cased (the rest kept) plus "."; the client builds the one-view
prompt itself, and the noise seed of a request is hash_data_to_seed of its payload (`simpler_request`: the whole
prompt, the state as (1, 1, 32) float64, the image as PIL); state from SimplerEnv's `eef_pos` (xyz, quaternion wxyz,
gripper openness):
- Bridge: xyz + roll/pitch/yaw of R_eef @ R_topdown^T (the Bridge data is relative to a top-down pose; static xyz
  Euler) + 0 + gripper openness (8 dims), robot type bridge_delta;
- Fractal: xyz + quaternion xyzw (w >= 0) + gripper closedness = 1 - openness (8 dims), robot type fractal_delta;
each inference executes 4 actions; an action's roll/pitch/yaw delta becomes axis-angle for the env; the gripper is
+1 if > 0.5 else -1 (Bridge) or clip(-(2a - 1), -1, 1) (Fractal); an episode runs until success or truncation.

SimplerEnv / ManiSkill2_real2sim are not on PyPI: the pure parts import without them; the runner raises
`require_simpler()`'s install hint.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..processing.images import RESAMPLE, resize
from ..processing.prompts import action_prompt
from .common import (
    ChunkPolicy, center_crop_resize, euler_to_axis_angle, matrix_to_euler, matrix_to_quat, observation_seed, pil,
    quat_to_matrix,
)

INSTALL_HINT = ("SimplerEnv is not installed (it is not on PyPI): clone SimplerEnv with its ManiSkill2_real2sim "
                "submodule, `pip install -e ManiSkill2_real2sim -e .` there (needs SAPIEN and a Vulkan driver); xr0 "
                "needs simpler_env.utils.env.env_builder and simpler_env.utils.env.observation_utils")
REPLAN = 4
CROP = 0.95
# The Bridge dataset's rotations are relative to the WidowX's top-down pose, not to its base frame.
TOPDOWN = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])


@dataclass(frozen=True)
class Embodiment:
    name: str
    robot_type: str
    camera: str
    image_size: tuple[int, int]  # (H, W) fed to the model


BRIDGE = Embodiment("bridge", "bridge_delta", "Base View", (256, 256))
FRACTAL = Embodiment("fractal", "fractal_delta", "Ego View", (256, 320))
EMBODIMENTS = {"bridge": BRIDGE, "widowx": BRIDGE, "fractal": FRACTAL, "google_robot": FRACTAL}


class SimplerNotInstalled(ImportError):
    pass


def require_simpler():
    """(build_maniskill2_env, get_image_from_maniskill2_obs_dict), or SimplerNotInstalled with the install hint."""
    try:
        from simpler_env.utils.env.env_builder import build_maniskill2_env
        from simpler_env.utils.env.observation_utils import get_image_from_maniskill2_obs_dict
    except ImportError as e:
        raise SimplerNotInstalled(f"{INSTALL_HINT} [{type(e).__name__}: {e}]") from e
    return build_maniskill2_env, get_image_from_maniskill2_obs_dict


def embodiment(name: str) -> Embodiment:
    if name.lower() not in EMBODIMENTS:
        raise ValueError(f"unknown SimplerEnv embodiment {name!r}; choose from {sorted(EMBODIMENTS)}")
    return EMBODIMENTS[name.lower()]


# ---------------------------------------------------------------------------------------------- pure protocol
def _split_eef(eef_pos) -> tuple[np.ndarray, np.ndarray, float]:
    eef = np.asarray(eef_pos, dtype=np.float64).reshape(-1)
    if eef.shape[0] != 8:
        raise ValueError(f"SimplerEnv eef_pos must be 8 numbers (xyz, quat wxyz, gripper), got {eef.shape[0]}")
    w, x, y, z = eef[3:7]
    return eef[:3], np.array([x, y, z, w]), float(eef[7])


def bridge_state(eef_pos) -> np.ndarray:
    """(8,) float64: xyz, Euler of R @ TOPDOWN^T, 0 (the zero the official client inserts before the gripper),
    gripper openness."""
    xyz, q_xyzw, openness = _split_eef(eef_pos)
    rpy = matrix_to_euler(quat_to_matrix(q_xyzw) @ TOPDOWN.T)
    return np.concatenate([xyz, rpy, [0.0, openness]])


def fractal_state(eef_pos) -> np.ndarray:
    """(8,) float64: xyz, quaternion xyzw with w >= 0, gripper closedness (1 - openness)."""
    xyz, q_xyzw, openness = _split_eef(eef_pos)
    q = matrix_to_quat(quat_to_matrix(q_xyzw))
    return np.concatenate([xyz, q, [1.0 - openness]])


def bridge_gripper(value: float) -> float:
    """Trained on openness in [0, 1] (1 open); SimplerEnv's WidowX wants +1 open / -1 close."""
    return 1.0 if value > 0.5 else -1.0


def fractal_gripper(value: float) -> float:
    """Trained on openness in [0, 1]; SimplerEnv's Google robot wants -1 open / +1 close."""
    return float(np.clip(-(2.0 * value - 1.0), -1.0, 1.0))


def env_action(raw, emb: Embodiment) -> np.ndarray:
    """(>=7,) decoded action [xyz, roll, pitch, yaw, gripper] -> (7,) [xyz, axis-angle, gripper command]."""
    raw = np.asarray(raw, dtype=np.float64).reshape(-1)
    if raw.shape[0] < 7:
        raise ValueError(f"an action needs at least 7 numbers, got {raw.shape[0]}")
    grip = bridge_gripper(raw[6]) if emb is BRIDGE else fractal_gripper(raw[6])
    return np.concatenate([raw[:3], euler_to_axis_angle(raw[3:6]), [grip]])


def simpler_image(image: np.ndarray, emb: Embodiment, crop: float = CROP) -> np.ndarray:
    return center_crop_resize(resize(image, emb.image_size, RESAMPLE["bicubic"]), crop)


def simpler_prompt(instruction: str) -> str:
    """The official client's instruction: the first letter upper-cased, the rest as given, + "."."""
    return instruction[0].upper() + instruction[1:] + "."


def simpler_request(image: np.ndarray, state: np.ndarray, instruction: str, emb: Embodiment) -> dict:
    """The official client's payload, as hashed into the request's noise seed: robot type, the one-view prompt it
    builds itself (one <|image_pad|> before the processor expands it), the state as (1, 1, 32) float64, the
    prepared image as PIL."""
    padded = np.zeros((1, 1, 32))
    padded[0, 0, : state.shape[0]] = state
    return {"task_id": emb.robot_type, "state": padded, "base": pil(image),
            "language": action_prompt(simpler_prompt(instruction), [emb.camera], 1)}


def simpler_observation(image: np.ndarray, eef_pos, instruction: str, emb: Embodiment) -> dict:
    """SimplerEnv camera image + agent eef_pos + language -> the policy observation (images, state, prompt, the
    official client's seed)."""
    img = simpler_image(image, emb)
    state = bridge_state(eef_pos) if emb is BRIDGE else fractal_state(eef_pos)
    seed = observation_seed(simpler_request(img, state, instruction, emb))
    return {"images": {emb.camera: img}, "state": state, "prompt": simpler_prompt(instruction), "seed": seed}


# ---------------------------------------------------------------------------------------------- runner
def run_episode(env, policy, emb: Embodiment, reset_options: dict | None = None, replan: int = REPLAN,
                frames: list | None = None) -> bool:
    """One episode in a built SimplerEnv env (build_maniskill2_env(**env_kwargs)); True on success."""
    _, get_image = require_simpler()
    chunk_policy = policy if isinstance(policy, ChunkPolicy) else ChunkPolicy(policy, emb.robot_type)
    obs, _ = env.reset(options=reset_options)
    instruction = env.get_language_instruction()
    plan: list[np.ndarray] = []
    done = truncated = False
    while not truncated:
        if not plan:
            image = get_image(env, obs)
            chunk = chunk_policy(simpler_observation(image, obs["agent"]["eef_pos"], instruction, emb))
            if chunk.shape[0] < replan:
                raise ValueError(f"chunk of {chunk.shape[0]} actions is shorter than replan={replan}")
            plan = list(chunk[:replan])
        obs, _, done, truncated, _ = env.step(env_action(plan.pop(0), emb))
        instruction = env.get_language_instruction()  # long-horizon tasks change it mid-episode
        if frames is not None:
            frames.append(get_image(env, obs))
        if done:
            break
    return bool(done)


# ---------------------------------------------------------------------------------------------- the benchmark
def embodiment_of(env_kwargs: dict) -> Embodiment:
    """The embodiment an official env_options entry runs (its env_kwargs' robot: widowx*, google_robot*)."""
    robot = str(env_kwargs.get("robot", ""))
    if robot.startswith("widowx"):
        return BRIDGE
    if robot.startswith("google_robot"):
        return FRACTAL
    raise ValueError(f"env_kwargs robot {robot!r} is neither widowx nor google_robot")


def evaluate(policy, env_options: str, episodes: int | None = None, seed_of_call=None, progress: bool = True) -> dict:
    """The official SimplerEnv evaluation of `policy` over the entries of an official env_options JSON
    (Xiaomi-Robotics-0's eval_simplerenv/env_options/bridge.json or fractal.json: env_kwargs, env_reset_options,
    task_suite_name), a new env per episode; `episodes` takes the first N entries. Success per task suite."""
    import json
    import pathlib

    from tqdm import tqdm

    build_env, _ = require_simpler()
    file = pathlib.Path(env_options)
    try:
        entries = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--env-options {file}: not a readable JSON list ({e})") from e
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"--env-options {file}: expected a non-empty list of episode entries")
    for i, entry in enumerate(entries):
        missing = {"env_kwargs", "env_reset_options", "task_suite_name"} - set(entry)
        if missing:
            raise ValueError(f"--env-options {file}: entry {i} lacks {sorted(missing)}")
    entries = entries[:episodes] if episodes else entries
    np.random.seed(42)  # the official client's
    chunk_policies: dict[str, ChunkPolicy] = {}
    per_task: dict[str, list[bool]] = {}
    with tqdm(entries, desc="simpler", unit="ep", disable=not progress) as bar:
        for entry in bar:
            kwargs = dict(entry["env_kwargs"], max_episode_steps=int(entry["env_kwargs"]["max_episode_steps"]))
            emb = embodiment_of(kwargs)
            if emb.robot_type not in chunk_policies:
                chunk_policies[emb.robot_type] = ChunkPolicy(policy, emb.robot_type, seed_of_call=seed_of_call)
            env = build_env(**kwargs)
            try:
                ok = run_episode(env, chunk_policies[emb.robot_type], emb, entry["env_reset_options"])
            finally:
                env.close()
            per_task.setdefault(entry["task_suite_name"], []).append(ok)
            done = [s for v in per_task.values() for s in v]
            bar.set_postfix(success=f"{sum(done)}/{len(done)}")
    tasks = {name: {"episodes": len(v), "successes": int(sum(v)), "success_rate": sum(v) / len(v)}
             for name, v in per_task.items()}
    n = sum(t["episodes"] for t in tasks.values())
    s = sum(t["successes"] for t in tasks.values())
    return {"benchmark": "simpler", "env_options": str(file), "episodes": n, "successes": s,
            "success_rate": s / n if n else None, "tasks": tasks}
