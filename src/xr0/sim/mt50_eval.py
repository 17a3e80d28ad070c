"""`xr0 eval mt50`: MT50 on LeRobot's own MetaWorld env, executed by xr0's runtime executors (async by default).

LeRobot's `lerobot-eval` runs a policy synchronously: infer a chunk, execute part of it while the world waits. This
is the same env (`lerobot.envs.metaworld.MetaworldEnv`: the same tasks, instructions, `corner2` 480x480 frames,
reset seeds 1000 + episode, 500 steps at most, success as the env reports it) driven by `runtime.AsyncExecutor` /
`SyncExecutor` on a simulated clock that charges `--latency-ms` of inference while the world keeps stepping, as
`xr0 eval metaworld` does for xr0's own MetaWorld set. Runs where LeRobot is installed (.venv-lerobot). `--save`
writes the successes per task in benchmarks/mt50_table.py's results format.
"""

from __future__ import annotations

import json
import sys

import numpy as np
from tqdm import tqdm

from .mt50 import EPISODE_LENGTH, EVAL_FIRST_SEED, _lerobot_metaworld, split_tasks, write_results


class LeRobotMetaWorld:
    """The executors' Environment over LeRobot's MetaworldEnv: one `act` is one env step (80 Hz)."""

    def __init__(self, task: str, camera: str, lerobot_metaworld):
        self.env = lerobot_metaworld.MetaworldEnv(task=task, obs_type="pixels_agent_pos")
        self.task, self.camera = task, camera
        self.instruction = lerobot_metaworld.TASK_DESCRIPTIONS[task]
        self.max_ticks = EPISODE_LENGTH

    def reset(self, seed: int) -> None:
        self._obs, _ = self.env.reset(seed=seed)
        self.success, self.ticks, self.success_tick = False, 0, None

    def observe(self) -> dict:
        if not self._obs["pixels"].any():
            raise RuntimeError(f"{self.task}: LeRobot's env rendered an all-black frame at step {self.ticks} (a "
                               "broken GL context, e.g. after another env in this process was closed)")
        return {"images": {self.camera: self._obs["pixels"]}, "prompt": self.instruction,
                "state": np.asarray(self._obs["agent_pos"], dtype=np.float32)}

    def act(self, action: np.ndarray) -> None:
        if self.ticks >= self.max_ticks:
            raise RuntimeError(f"{self.task}: the episode is over after {self.max_ticks} steps")
        action = np.clip(np.asarray(action, dtype=np.float32)[:4], -1.0, 1.0)
        self._obs, _, _, _, info = self.env.step(action)
        self.ticks += 1
        if info["is_success"] and not self.success:
            self.success, self.success_tick = True, self.ticks

    def close(self) -> None:
        self.env.close()


def evaluate(policy, tasks: list[str], episodes: int, executor: str = "async", latency_ms: float = 100.0,
             k: int | None = None, progress: bool = True) -> dict:
    """Success per task over reset seeds 1000 .. 1000 + episodes - 1 (lerobot-eval's), with the summary of
    `xr0 eval metaworld` (idle fraction, boundary discontinuity, simulated time to success)."""
    from .common import ChunkPolicy
    from .metaworld_eval import make_runner, run_episode, sampling_seeds, summarize

    lerobot_metaworld = _lerobot_metaworld("xr0 eval mt50")
    if episodes < 1 or latency_ms < 0:
        raise ValueError("--episodes must be >= 1 and --latency-ms >= 0")
    robot = policy.robot(None)
    cameras = list(robot.cameras or policy.config.cameras)
    if len(cameras) != 1:
        raise ValueError(f"LeRobot's MetaWorld env has one camera; the policy has {cameras}")
    hz, wall_ms, rows = policy.config.control_hz, [], []
    bar = tqdm(total=len(tasks) * episodes, desc=f"mt50 {executor} {latency_ms:g} ms", unit="ep",
               disable=not progress)
    envs = []  # closed together at the end, as lerobot-eval does: a closed env's GL context can leave the next
    # one rendering black frames in this process (seen with a policy loaded: the second task's frames were all 0)
    for task in tasks:
        env = LeRobotMetaWorld(task, cameras[0], lerobot_metaworld)
        envs.append(env)
        for ep in range(episodes):
            env.reset(EVAL_FIRST_SEED + ep)
            infer = ChunkPolicy(policy, None, robot.action_dim, seed_of_call=sampling_seeds(EVAL_FIRST_SEED, ep),
                                wall_ms=wall_ms)
            runner = make_runner(policy, executor, env, infer, latency_ms, k)
            rows.append(run_episode(runner, env, EPISODE_LENGTH, task, ep, hz)[0])
            bar.update(1)
            bar.set_postfix(task=task, success=f"{np.mean([r['success'] for r in rows]):.2f}")
    bar.close()
    for env in envs:
        env.close()
    result = summarize(rows, tasks, executor, latency_ms, wall_ms, hz)
    result["successes"] = {t: [r["success"] for r in rows if r["task"] == t] for t in tasks}
    return result


def add_arguments(p) -> None:
    p.add_argument("--checkpoint", required=True, help="an xr0 checkpoint or the plugin folder (checkpoints/mt50)")
    p.add_argument("--split", default="easy", help="easy | medium | hard | very_hard | all, or task names")
    p.add_argument("--episodes", type=int, default=10, help="episodes per task (reset seeds 1000 on)")
    p.add_argument("--executor", default="async", choices=["sync", "async"])
    p.add_argument("--latency-ms", type=float, default=100.0, help="simulated inference latency")
    p.add_argument("--k", type=int, default=None, help="actions left when the next inference starts")
    p.add_argument("--save", default=None, metavar="JSON",
                   help="write the successes per task (benchmarks/mt50_table.py reads it)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args) -> int:
    from .metaworld_eval import load_policy, print_table

    try:
        lerobot_metaworld = _lerobot_metaworld("xr0 eval mt50")
        tasks = split_tasks(args.split, lerobot_metaworld.DIFFICULTY_TO_TASKS)
        policy = load_policy(args.checkpoint, None)
        policy.config.check_executor(args.executor)
        result = evaluate(policy, tasks, args.episodes, args.executor, args.latency_ms, args.k)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:  # a bad flag, no LeRobot, a black frame
        print(f"xr0 eval mt50: {e}", file=sys.stderr)
        return 2
    print_table(result)
    if args.save:
        write_results(args.save, result["successes"], runner=f"xr0 eval mt50 --executor {args.executor} "
                      f"--latency-ms {args.latency_ms:g}", checkpoint=args.checkpoint)
    if args.json:
        print(json.dumps(result))
    return 0
