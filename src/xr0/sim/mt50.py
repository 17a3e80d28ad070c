"""MetaWorld MT50 under LeRobot's protocol: demonstrations recorded through LeRobot 0.6.1's own MetaWorld env.

LeRobot's `lerobot.envs.metaworld.MetaworldEnv` (its `metaworld_config.json` task list, splits and instructions;
MT1 with seed 42 and `reset(seed=)` drawing the placement; the `corner2` camera moved and rendered at 480x480,
flipped on both axes; `agent_pos` = hand xyz + gripper opening; one 4-D action per env step at 80 Hz, at most 500
steps; success as the env reports it) is the env both the demonstrations and `lerobot-eval` see. So this module
runs where LeRobot is installed (`make lerobot`, .venv-lerobot); the dataset it writes is read by xr0 anywhere.

`xr0 data mt50 --out DIR --episodes N` rolls out MetaWorld's scripted expert (LeRobot's TASK_POLICY_MAPPING) on
reset seeds 0, 1, 2, ... (lerobot-eval uses 1000 on) until N successful episodes per task, records each frame's
image resized as the policy will see it (`ImageSpec.fixed(image_size)`, the plugin's resize of the 480x480
frame), and keeps every episode as DIR/episodes/<task>/<seed>.npz as soon as it ends: a killed run continues
where it stopped, and a larger N later adds episodes. With --split all, once every task has its N, DIR/dataset is
(re)written (a LeRobotDataset v3, one camera, robot type ROBOT_TYPE) with meta/xr0_mt50.json (versions, seeds,
counts). Several processes may record at once (each task is locked while one records it: the others skip it), then
`--split all` assembles; `--workers N` starts N such recorders itself.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROBOT_TYPE = "metaworld_mt50"
CAMERA = "Base View"  # LeRobot's one camera (observation.image); the plugin maps a lone camera by position
FPS = 80  # LeRobot's MetaworldEnv: one env step per action
EPISODE_LENGTH = 500  # lerobot-eval's rollout cap: MetaworldEnv._max_episode_steps (its config's 400 is unused)
EVAL_FIRST_SEED = 1000  # lerobot-eval's default --seed: its reset seeds are 1000, 1001, ...
ENV_STATE_NAMES = ("object_x", "object_y", "object_z", "goal_x", "goal_y", "goal_z")  # training-only
SPLITS = ("easy", "medium", "hard", "very_hard")
SIDECAR = "xr0_mt50.json"


def _lerobot_metaworld(command: str = "xr0 data mt50"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from lerobot.envs import metaworld as lerobot_metaworld
    except ImportError as e:
        raise ImportError(f"{command} runs LeRobot's MetaWorld env ({e}); run it with LeRobot's venv: "
                          f"`make lerobot`, then .venv-lerobot/bin/{command} ...") from e
    return lerobot_metaworld


def split_tasks(split: str, difficulty_to_tasks: dict[str, list[str]]) -> list[str]:
    """"all" (the 50 in split order), a split name, or comma-separated task names, as LeRobot's config lists them."""
    if split == "all":
        return [t for s in SPLITS for t in difficulty_to_tasks[s]]
    if split in difficulty_to_tasks:
        return list(difficulty_to_tasks[split])
    known = {t for tasks in difficulty_to_tasks.values() for t in tasks}
    tasks = [t.strip() for t in split.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in known]
    if unknown or not tasks:
        raise ValueError(f"--split: {unknown or split!r} is neither all, a split {list(SPLITS)} nor MT50 task names")
    return tasks


def write_results(path, successes: dict[str, list[bool]], **about) -> None:
    """MT50 results kept in git (docs/mt50/results/): {"successes": {task: [bool per episode]}, **about}, one task
    per line. benchmarks/mt50_table.py makes the table from any number of them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ",\n".join(f"  {json.dumps(task)}: {json.dumps([bool(s) for s in done])}"
                        for task, done in successes.items())
    head = "".join(f"{json.dumps(k)}: {json.dumps(v)}, " for k, v in about.items())
    _atomic_write(path, lambda p: p.write_text("{" + head + '"successes": {\n' + lines + "\n}}\n"))


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def _save_npz(path: Path, arrays: dict) -> None:
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)


class _Log:
    """DIR/episodes/<task>/log.json: every seed tried (its steps, or null when the expert failed)."""

    def __init__(self, folder: Path):
        self.path = folder / "log.json"
        self.seeds = {int(k): v for k, v in json.loads(self.path.read_text()).items()} if self.path.exists() else {}

    def kept(self) -> list[int]:
        return sorted(s for s, steps in self.seeds.items() if steps is not None)

    def next_seed(self) -> int:
        return max(self.seeds, default=-1) + 1

    def add(self, seed: int, steps: int | None) -> None:
        self.seeds[seed] = steps
        _atomic_write(self.path, lambda p: p.write_text(json.dumps(self.seeds, indent=1)))


def _claim(folder: Path) -> bool:
    """Take the task's lock (folder/.lock, the owner's pid): False while another live process holds it, so two
    processes recording overlapping task lists never record the same task at once."""
    lock = folder / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                os.kill(int(lock.read_text() or 0), 0)
                return False  # its owner is alive
            except (ProcessLookupError, ValueError, FileNotFoundError):
                lock.unlink(missing_ok=True)  # left by a killed run
                continue
            except PermissionError:
                return False
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def record(task: str, seeds_needed: int, folder: Path, image_size: int, lerobot_metaworld) -> dict | None:
    """Episodes of one task into `folder` until it holds `seeds_needed` successful ones. Returns the task's log, or
    None when another process is recording this task."""
    from ..processing.images import ImageSpec

    class Recording(lerobot_metaworld.MetaworldEnv):  # the same env, remembering the raw observation the expert reads
        def _format_raw_obs(self, raw_obs):
            self.raw = raw_obs
            return super()._format_raw_obs(raw_obs)

    folder.mkdir(parents=True, exist_ok=True)
    if not _claim(folder):
        return None
    log = _Log(folder)
    spec = ImageSpec.fixed((image_size, image_size))
    env = None
    try:
        while len(log.kept()) < seeds_needed:
            if env is None:
                env = Recording(task=task, obs_type="pixels_agent_pos")
            seed = log.next_seed()
            if seed >= EVAL_FIRST_SEED:
                raise RuntimeError(f"{task}: the expert needs seeds up to {EVAL_FIRST_SEED}, lerobot-eval's own")
            obs, _ = env.reset(seed=seed)
            images, states, actions, env_states = [], [], [], []
            success = False
            for _ in range(EPISODE_LENGTH):
                action = np.clip(env.expert_policy.get_action(env.raw), -1.0, 1.0).astype(np.float32)
                images.append(spec.prepare(obs["pixels"]))
                states.append(np.asarray(obs["agent_pos"], dtype=np.float32))
                env_states.append(np.concatenate([env.raw[4:7], env.raw[36:39]]).astype(np.float32))
                actions.append(action)
                obs, _, _, _, info = env.step(action)
                if info["is_success"]:
                    success = True
                    break
            if success:
                arrays = dict(images=np.stack(images), states=np.stack(states), actions=np.stack(actions),
                              env_states=np.stack(env_states))
                _atomic_write(folder / f"{seed:04d}.npz", lambda p: _save_npz(p, arrays))
            log.add(seed, len(states) if success else None)
    finally:
        if env is not None:
            env.close()
        (folder / ".lock").unlink(missing_ok=True)
    return log.seeds


def _record_in_parallel(out: Path, episodes: int, tasks: list[str], image_size: int, workers: int,
                        progress: bool) -> None:
    """`workers` recorder processes (one render thread each), worker i walking the task list from its i-th share
    on, round the end: each task is locked by the one recording it, so together they record every task once."""
    import subprocess

    env = dict(os.environ, LP_NUM_THREADS="1", OMP_NUM_THREADS="1")
    procs = []
    for i in range(workers):
        start = i * len(tasks) // workers
        order = ",".join(tasks[start:] + tasks[:start])
        procs.append(subprocess.Popen([sys.executable, "-m", "xr0.cli", "data", "mt50", "--out", str(out),
                                       "--episodes", str(episodes), "--split", order, "--image-size",
                                       str(image_size), "--no-progress"], env=env, stdout=subprocess.DEVNULL))
    try:
        with tqdm(total=len(tasks), desc=f"mt50 demos ({workers} recorders)", unit="task",
                  disable=not progress) as bar:
            while any(p.poll() is None for p in procs):
                time.sleep(5)
                done = sum(len(_Log(out / "episodes" / t).kept()) >= episodes for t in tasks
                           if (out / "episodes" / t / "log.json").exists())
                bar.update(done - bar.n)
    finally:  # interrupted: the recorders stop too (each keeps the episodes it finished)
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"recorder(s) {failed} of {workers} failed (their errors are above); run again to go on")


def generate(out, episodes: int, split: str = "all", image_size: int = 128, workers: int = 1,
             progress: bool = True) -> dict:
    """Record (or continue recording) `episodes` successful episodes per task, then write DIR/dataset."""
    import warnings

    lerobot_metaworld = _lerobot_metaworld()
    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    if image_size < 32 or image_size % 32:
        raise ValueError(f"--image-size must be a multiple of 32, got {image_size}")
    out = Path(out)
    tasks = split_tasks(split, lerobot_metaworld.DIFFICULTY_TO_TASKS)
    cache = out / "episodes"
    settings = {"image_size": image_size}
    settings_path = out / "settings.json"
    if settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        raise ValueError(f"{out} was recorded with {settings_path.read_text().strip()}; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    settings_path.write_text(json.dumps(settings))
    start = time.perf_counter()
    if workers > 1:
        _record_in_parallel(out, episodes, tasks, image_size, workers, progress)
    summary = {"tasks": {}}
    bar = tqdm(tasks, desc="mt50 demos", unit="task", disable=not progress)
    for task in bar:
        bar.set_postfix(task=task)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the experts' "Constant(s) may be too high": clipped above, as intended
            t0 = time.perf_counter()
            seeds = record(task, episodes, cache / task, image_size, lerobot_metaworld)
        if seeds is None:
            summary["tasks"][task] = {"skipped": "another process is recording it"}
            continue
        kept = [s for s, n in sorted(seeds.items()) if n is not None][:episodes]
        summary["tasks"][task] = {"kept": len(kept), "tried": len(seeds), "frames": sum(seeds[s] for s in kept),
                                  "seconds_this_run": round(time.perf_counter() - t0, 1)}
    bar.close()
    summary.update(seconds=round(time.perf_counter() - start, 1),
                   frames=sum(t.get("frames", 0) for t in summary["tasks"].values()))
    # a split of its own (e.g. two processes at once) leaves dataset/ to a final `--split all`
    skipped = [t for t, v in summary["tasks"].items() if "skipped" in v]
    if split == "all" and skipped:
        raise RuntimeError(f"{skipped} are still being recorded by another process; run again when it is done")
    summary["dataset"] = str(write_dataset(out, episodes, lerobot_metaworld, tasks)) if split == "all" else None
    return summary


def write_dataset(out: Path, episodes: int, lerobot_metaworld, tasks: list[str]) -> Path:
    """DIR/episodes -> DIR/dataset: the first `episodes` successful seeds of every task. A dataset already holding
    exactly those episodes is kept as it is (a resumed training run reads the same files)."""
    import importlib.metadata as md
    import shutil

    from ..data.lerobot_v3 import LeRobotV3Writer

    image_size = json.loads((out / "settings.json").read_text())["image_size"]
    dest, tmp = out / "dataset", out / "dataset.tmp"
    wanted = {task: _Log(out / "episodes" / task).kept()[:episodes] for task in tasks}
    if (dest / "meta" / SIDECAR).exists() and json.loads((dest / "meta" / SIDECAR).read_text())["seeds"] == wanted:
        print(f"xr0 data mt50: {dest} already holds these {sum(map(len, wanted.values()))} episodes; kept",
              file=sys.stderr)
        return dest
    shutil.rmtree(tmp, ignore_errors=True)
    writer = LeRobotV3Writer(tmp, fps=FPS, cameras={CAMERA: (image_size, image_size)}, state_dim=4, action_dim=4,
                             robot_type=ROBOT_TYPE, env_state_names=list(ENV_STATE_NAMES))
    seeds = {}
    for task in tqdm(tasks, desc="mt50 dataset", unit="task"):
        log = _Log(out / "episodes" / task)
        seeds[task] = log.kept()[:episodes]
        for seed in seeds[task]:
            with np.load(out / "episodes" / task / f"{seed:04d}.npz", allow_pickle=False) as ep:
                writer.add_episode({CAMERA: ep["images"]}, ep["states"], ep["actions"],
                                   lerobot_metaworld.TASK_DESCRIPTIONS[task], env_states=ep["env_states"])
    writer.close()
    sidecar = {"protocol": "LeRobot MetaworldEnv (lerobot.envs.metaworld): MT1 seed 42, reset(seed), corner2 "
                           "480x480 flipped on both axes, agent_pos = obs[:4], one action per step",
               "versions": {p: md.version(p) for p in ("lerobot", "metaworld", "mujoco", "gymnasium")},
               "image": {"rendered": [480, 480], "stored": [image_size, image_size], "resize": "PIL bilinear "
                         "(ImageSpec.fixed, what the xr0 plugin does to lerobot-eval's frames)"},
               "expert": "lerobot.envs.metaworld.TASK_POLICY_MAPPING, action clipped to [-1, 1]",
               "episode_length": EPISODE_LENGTH, "fps": FPS, "episodes_per_task": episodes,
               "seeds": seeds, "tasks": {t: lerobot_metaworld.TASK_DESCRIPTIONS[t] for t in tasks},
               "env_state": list(ENV_STATE_NAMES)}
    (tmp / "meta" / SIDECAR).write_text(json.dumps(sidecar, indent=1))
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="folder: episodes/ (kept as recorded, resumable) and dataset/")
    p.add_argument("--episodes", type=int, default=10, help="successful expert episodes per task")
    p.add_argument("--split", default="all",
                   help="all (MT50; then writes dataset/), or only record a split (easy, medium, hard, very_hard) or "
                        "comma-separated task names")
    p.add_argument("--image-size", type=int, default=128, help="stored image side (the policy's input size)")
    p.add_argument("--workers", type=int, default=1,
                   help="recorder processes, one render thread each (2 on a 2-core machine)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    try:
        summary = generate(args.out, args.episodes, args.split, args.image_size, args.workers,
                           progress=not args.no_progress)
    except (ValueError, ImportError, RuntimeError) as e:  # a bad flag, no LeRobot, an expert or a lock in the way
        print(f"xr0 data mt50: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
