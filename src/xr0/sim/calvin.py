"""CALVIN with the official XR-0 evaluation protocol (spec §8.2, §9.4).

Protocol (Xiaomi's eval_calvin/main.py): static + gripper camera images (200x200 and 84x84), each centre-cropped
to 0.95 (int(side * 0.95), offset (side - crop) // 2) and resized back to its own size (bilinear), sent at that
size: the release processor then sizes them (smart_resize within its pixel budget: 192x192 and 96x96 with the
transformers 4.57.1 budget); cameras "Base View" / "Left-Wrist View"; state = robot_obs[:7] (TCP position, TCP Euler
xyz, gripper opening width) + zeros to 32; robot type calvin_abcd_orig (calvin_abc_orig with split abc); instruction
= the first validation annotation, str.capitalize()d, plus "."; the noise seed of a request = hash_data_to_seed of
the payload before the "." is added (`calvin_request`); each inference executes 10 actions (first 7 dims, CALVIN's
normalised relative actions) with the gripper set to +1 if > 0 else -1; a subtask gets 36 inferences (360 steps)
and succeeds as soon as the task oracle reports it; a sequence stops at its first failed subtask; 1000 sequences of
eval_sequences.json shuffled with Python's random.seed(42).

calvin_env / calvin_agent are not on PyPI: the pure parts here import without them, and the runner raises
`require_calvin()`'s install hint.
"""

from __future__ import annotations

import random

import numpy as np

from .common import ChunkPolicy, center_crop_resize, observation_seed, pil

INSTALL_HINT = ("CALVIN is not installed (it is not on PyPI): clone the CALVIN repository (mees/calvin) with its "
                "submodules, `pip install -e calvin_env/tacto -e calvin_env -e calvin_models`, and download a split "
                "(task_ABC_D or task_ABCD_D); xr0 needs calvin_env.envs.play_table_env.get_env and "
                "calvin_agent.evaluation.utils")
CAMERAS = ("Base View", "Left-Wrist View")  # rgb_static, rgb_gripper
CROP = 0.95
REPLAN = 10
CALLS_PER_SUBTASK = 36  # x REPLAN = 360 steps
NUM_SEQUENCES = 1000
SHUFFLE_SEED = 42
ROBOT_TYPES = {"abc": "calvin_abc_orig", "abcd": "calvin_abcd_orig"}


class CalvinNotInstalled(ImportError):
    pass


def require_calvin():
    """(get_env, calvin_agent.evaluation.utils), or CalvinNotInstalled with the install hint."""
    try:
        from calvin_agent.evaluation import utils as eval_utils
        from calvin_env.envs.play_table_env import get_env
    except ImportError as e:
        raise CalvinNotInstalled(f"{INSTALL_HINT} [{type(e).__name__}: {e}]") from e
    return get_env, eval_utils


# ---------------------------------------------------------------------------------------------- pure protocol
def robot_type(split: str) -> str:
    if split.lower() not in ROBOT_TYPES:
        raise ValueError(f"unknown CALVIN split {split!r}; choose from {sorted(ROBOT_TYPES)}")
    return ROBOT_TYPES[split.lower()]


def calvin_state(robot_obs) -> np.ndarray:
    """(7,) = TCP xyz, TCP Euler xyz, gripper opening width: the first 7 entries of CALVIN's robot_obs."""
    robot_obs = np.asarray(robot_obs, dtype=np.float64).reshape(-1)
    if robot_obs.shape[0] < 7:
        raise ValueError(f"robot_obs must have at least 7 entries, got {robot_obs.shape[0]}")
    return robot_obs[:7].copy()


def calvin_images(rgb_static: np.ndarray, rgb_gripper: np.ndarray, crop: float = CROP) -> dict:
    """Centre crop + resize back to each camera's own size (the policy's processor does the rest)."""
    return {CAMERAS[0]: center_crop_resize(rgb_static, crop), CAMERAS[1]: center_crop_resize(rgb_gripper, crop)}


def calvin_prompt(annotation: str) -> str:
    """str.capitalize() (rest lower-cased, as the official client does) + '.'."""
    return annotation.capitalize() + "."


def calvin_gripper(value: float) -> float:
    return 1.0 if value > 0 else -1.0


def calvin_actions(chunk: np.ndarray, replan: int = REPLAN) -> np.ndarray:
    """(T, >=7) decoded chunk -> (replan, 7) env actions with the gripper binarised to +-1."""
    chunk = np.asarray(chunk, dtype=np.float64)
    if chunk.ndim != 2 or chunk.shape[1] < 7 or chunk.shape[0] < replan:
        raise ValueError(f"chunk must be (T >= {replan}, >= 7), got {chunk.shape}")
    out = chunk[:replan, :7].copy()
    out[:, 6] = np.where(out[:, 6] > 0, 1.0, -1.0)
    return out


def calvin_request(state: np.ndarray, images: dict, annotation: str, split: str) -> dict:
    """The official client's payload, as hashed into the request's noise seed: robot type, robot_obs[:7] + 25 zeros
    (float64), both cropped images as PIL, the capitalised annotation without its "."."""
    return {"task_id": robot_type(split), "state": np.concatenate([state, np.zeros(25)]),
            "base": pil(images[CAMERAS[0]]), "wrist_left": pil(images[CAMERAS[1]]),
            "language": annotation.capitalize()}


def calvin_observation(obs: dict, annotation: str, split: str) -> dict:
    """CALVIN env obs -> the policy observation (images, state, prompt, the official client's seed)."""
    images = calvin_images(obs["rgb_obs"]["rgb_static"], obs["rgb_obs"]["rgb_gripper"])
    state = calvin_state(obs["robot_obs"])
    seed = observation_seed(calvin_request(state, images, annotation, split))
    return {"images": images, "state": state, "prompt": calvin_prompt(annotation), "seed": seed}


def shuffled_sequences(sequences: list, n: int = NUM_SEQUENCES, seed: int = SHUFFLE_SEED) -> list:
    """The evaluated subset: Python's Mersenne-Twister shuffle with seed 42 (as random.seed(42); random.shuffle),
    then the first n."""
    seqs = list(sequences)
    random.Random(seed).shuffle(seqs)
    return seqs[:n]


# ---------------------------------------------------------------------------------------------- runner
def rollout_subtask(env, chunk_policy: ChunkPolicy, task_oracle, subtask: str, annotation: str, split: str,
                    calls: int = CALLS_PER_SUBTASK, replan: int = REPLAN) -> bool:
    """One language subtask in a live CALVIN env; True as soon as the oracle reports the subtask done."""
    obs = env.get_obs()
    start_info = env.get_info()
    for _ in range(calls):
        chunk = chunk_policy(calvin_observation(obs, annotation, split))
        for action in calvin_actions(chunk, replan):
            obs, _, _, info = env.step(action)
            if task_oracle.get_task_info_for_set(start_info, info, {subtask}):
                return True
    return False


def evaluate_sequence(env, policy, task_oracle, initial_state, sequence: list[str], annotations: dict,
                      split: str) -> int:
    """Chain length achieved on one 5-subtask sequence (stops at the first failure)."""
    _, eval_utils = require_calvin()
    chunk_policy = policy if isinstance(policy, ChunkPolicy) else ChunkPolicy(policy, robot_type(split))
    robot_obs, scene_obs = eval_utils.get_env_state_for_initial_condition(initial_state)
    env.reset(robot_obs=robot_obs, scene_obs=scene_obs)
    done = 0
    for subtask in sequence:
        if not rollout_subtask(env, chunk_policy, task_oracle, subtask, annotations[subtask][0], split):
            break
        done += 1
    return done


def average_length(chain_lengths: list[int], n_tasks: int = 5) -> dict:
    """CALVIN's metrics: success rate of completing >= k subtasks in a row (k = 1..5) and the mean chain length."""
    arr = np.asarray(chain_lengths)
    return {"avg_len": float(arr.mean()) if arr.size else None,
            "success_at": [float((arr >= k).mean()) if arr.size else None for k in range(1, n_tasks + 1)]}


# ---------------------------------------------------------------------------------------------- the benchmark
CONFIG_FILES = ("new_playtable_tasks.yaml", "new_playtable_validation.yaml", "eval_sequences.json")


def evaluate(policy, dataset: str, config_dir: str, split: str = "abcd", sequences: int = NUM_SEQUENCES,
             seed_of_call=None, progress: bool = True) -> dict:
    """The official CALVIN evaluation of `policy`: `sequences` of eval_sequences.json (shuffled with seed 42), a
    fresh env of `dataset`/validation per sequence, chains of up to 5 subtasks. `config_dir` holds the official
    client's CONFIG_FILES (Xiaomi-Robotics-0's eval_calvin/config)."""
    import json
    import pathlib

    from tqdm import tqdm

    get_env, _ = require_calvin()
    import hydra
    from omegaconf import OmegaConf

    config_dir, dataset = pathlib.Path(config_dir), pathlib.Path(dataset)
    missing = [f for f in CONFIG_FILES if not (config_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"--config {config_dir} lacks {missing} (the official eval_calvin/config folder)")
    if not (dataset / "validation").is_dir():
        raise FileNotFoundError(f"--dataset {dataset} has no validation/ folder (a CALVIN split, e.g. task_ABCD_D)")
    task_oracle = hydra.utils.instantiate(OmegaConf.load(config_dir / CONFIG_FILES[0]))
    annotations = OmegaConf.load(config_dir / CONFIG_FILES[1])
    seqs = shuffled_sequences(json.loads((config_dir / CONFIG_FILES[2]).read_text()), sequences)
    chunk_policy = ChunkPolicy(policy, robot_type(split), seed_of_call=seed_of_call)
    lengths: list[int] = []
    with tqdm(seqs, desc=f"calvin {split}", unit="seq", disable=not progress) as bar:
        for initial_state, sequence in bar:
            env = get_env(dataset / "validation", show_gui=False)
            lengths.append(evaluate_sequence(env, chunk_policy, task_oracle, initial_state, sequence, annotations,
                                             split))
            bar.set_postfix(avg_len=f"{np.mean(lengths):.2f}")
    return {"benchmark": "calvin", "split": split, "robot_type": robot_type(split), "sequences": len(lengths),
            "chain_lengths": lengths, **average_length(lengths)}
