"""Roll a policy out in MetaWorld through the runtime executors under a simulated inference latency.

Time is simulated (runtime.SimClock): one inference costs ceil(latency / control period) ticks while the world
keeps stepping, so synchronous and asynchronous execution are compared honestly and repeatably on any machine.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoints import resolve_checkpoint
from ..runtime import (AsyncExecutor, IdentityActions, InferenceFailed, NaiveAsyncExecutor, RTCExecutor, SimClock,
                       SyncExecutor, default_k)
from .protocol import ChunkPolicy

# rtc: inference-time RTC (guided soft prefix over all remaining actions), for checkpoints not trained async.
EXECUTORS = {"sync": SyncExecutor, "async": AsyncExecutor, "naive-async": NaiveAsyncExecutor, "rtc": RTCExecutor}
HOLD_STILL = IdentityActions(zero_on_hold=(0, 1, 2))  # a held delta action must not keep the arm moving


def load_policy(checkpoint: str | None, preset: str | None, **settings):
    """A preset (MetaWorld cameras, T = 20, identity statistics) or a checkpoint in fp32; `settings` override its
    RUNTIME_FIELDS (config.py)."""
    from .. import XR0Policy

    if preset:
        policy = XR0Policy.from_preset(preset, seed=0, cameras=("Base View", "Top View"), chunk_len=20,
                                       control_hz=40.0, robots=_metaworld_identity_robot(20))
        return policy.set_runtime(**settings)
    if not checkpoint:
        raise ValueError("give --checkpoint PATH|embedded or --preset NAME")
    return XR0Policy.from_pretrained(resolve_checkpoint(checkpoint), dtype=torch.float32,  # fp32: docs/benchmarks.md
                                     **settings)


SETUP_FILE = "metaworld.json"  # in a checkpoint: the tasks, cameras and image orientation it was trained with


def checkpoint_setup(checkpoint: str | None) -> dict:
    """{"tasks", "cameras", "orientation", "image_size", "goal_marker_radius", "goal_marker_color"} a MetaWorld
    checkpoint was trained with (`SETUP_FILE`, written by `python -m xr0.sim.export` from the dataset's
    meta/xr0_metaworld.json); the current defaults otherwise. "image_size" is the size the data were rendered at (the
    model may resize them, e.g. 128 -> 256); None (older checkpoints) means the model's own image size. A setup file
    without "goal_marker_radius" was written before the marker was enlarged: MetaWorld's own radius; without
    "goal_marker_color" (or null): MetaWorld's own colours."""
    from .metaworld import (CAMERAS, DEFAULT_GOAL_MARKER_RADIUS, DEFAULT_ORIENTATION, DEFAULT_TASKS,
                            GOAL_MARKER_COLORS, STOCK_GOAL_MARKER_RADIUS)

    setup = {"tasks": list(DEFAULT_TASKS), "cameras": dict(CAMERAS), "orientation": DEFAULT_ORIENTATION,
             "image_size": None, "goal_marker_radius": DEFAULT_GOAL_MARKER_RADIUS, "goal_marker_color": None}
    if checkpoint:
        file = resolve_checkpoint(checkpoint) / SETUP_FILE
        if file.is_file():
            try:
                saved = json.loads(file.read_text())
            except ValueError as e:
                raise ValueError(f"{file}: not valid JSON: {e}") from e
            if not isinstance(saved, dict) or not set(saved) >= {"tasks", "cameras", "orientation"}:
                raise ValueError(f"{file}: needs 'tasks', 'cameras' and 'orientation'")
            setup.update(tasks=list(saved["tasks"]), cameras=dict(saved["cameras"]), orientation=saved["orientation"])
            if saved.get("image_size") is not None:
                setup["image_size"] = tuple(saved["image_size"])
            setup["goal_marker_radius"] = float(saved.get("goal_marker_radius", STOCK_GOAL_MARKER_RADIUS))
            color = saved.get("goal_marker_color")
            if color is not None and color not in GOAL_MARKER_COLORS:
                raise ValueError(f"{file}: goal_marker_color must be one of {sorted(GOAL_MARKER_COLORS)} or null, "
                                 f"got {color!r}")
            setup["goal_marker_color"] = color
    return setup


def render_view(setup: dict) -> dict:
    """The `orientation`, `cameras`, `image_size`, `goal_marker_radius` and `goal_marker_color` of a
    `checkpoint_setup`: how `evaluate` and `reactivity` must render for that checkpoint (pass as keyword arguments)."""
    return {k: setup[k] for k in ("orientation", "cameras", "image_size", "goal_marker_radius", "goal_marker_color")}


def _metaworld_identity_robot(T: int):
    from ..processing import RobotSpec
    from .metaworld import ACTION_DIM, STATE_DIM

    return {"metaworld": RobotSpec.identity(T, ACTION_DIM, STATE_DIM)}


def evaluate(policy, tasks, episodes: int = 10, executor: str = "async", latency_ms: float = 100.0,
             seed: int = 1000, k: int | None = None, max_ticks: int = 100, video_dir=None,
             steps: int | None = None, progress: bool = True, orientation: str | None = None,
             cameras: dict[str, str] | None = None, image_size: tuple[int, int] | None = None,
             goal_marker_radius: float | None = None, goal_marker_color: str | None = None) -> dict:
    """Success rate, simulated time to success, idle fraction, boundary discontinuity, real inference latency.

    With `video_dir`, each episode also gets an MP4 and a PNG of its executed actions with chunk switches marked.
    `cameras` (policy camera -> MetaWorld camera), `orientation`, `image_size` (the render size; default the
    policy's), `goal_marker_radius` and `goal_marker_color` must be those the policy's training data were rendered
    with: `checkpoint_setup(checkpoint)` gives them.
    """
    from .metaworld import ACTION_NAMES, MAX_TICKS, check_tasks
    from .plot import plot_actions

    tasks = check_tasks(tasks)
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose from {sorted(EXECUTORS)}")
    if episodes < 1 or latency_ms < 0:
        raise ValueError("episodes must be >= 1 and latency_ms >= 0")
    if not 1 <= max_ticks <= MAX_TICKS:
        raise ValueError(f"max_ticks must be in 1..{MAX_TICKS} (MetaWorld's horizon), got {max_ticks}")
    if video_dir:
        pathlib.Path(video_dir).mkdir(parents=True, exist_ok=True)
    hz, act_dims = policy.config.control_hz, policy.robot(None).action_dim
    wall_ms: list[float] = []
    rows, traces = [], {}
    bar = tqdm(total=len(tasks) * episodes, desc=f"eval {executor} {latency_ms:g} ms", unit="ep", disable=not progress)
    for task in tasks:
        env = make_env(policy, task, seed, orientation, cameras, image_size, goal_marker_radius, goal_marker_color)
        for ep in range(episodes):
            env.reset()
            infer = ChunkPolicy(policy, None, act_dims, seed_of_call=sampling_seeds(seed, ep), steps=steps,
                                wall_ms=wall_ms)
            recorder = _VideoRecorder(env) if video_dir else None
            runner = make_runner(policy, executor, recorder or env, infer, latency_ms, k)
            try:
                trace = runner.run(max_ticks, stop=lambda: env.success)
                error = ""
            except InferenceFailed as e:
                trace, error = e.trace, str(e)
            m = trace.metrics()
            rows.append({"task": task, "episode": ep, "success": bool(env.success),
                         "ticks": env.ticks, "time_to_success_s": env.success_tick / hz if env.success else None,
                         "idle_fraction": m["idle_fraction"], "boundary_discontinuity": m["boundary_discontinuity"],
                         "error": error})
            if recorder is not None:
                stem = pathlib.Path(video_dir) / f"{task}_ep{ep:02d}_{executor}"
                recorder.save(stem.with_suffix(".mp4"), hz)
                if trace.ticks:
                    plot_actions(trace, stem.with_name(stem.name + "_actions.png"), list(ACTION_NAMES),
                                 title=f"{task} episode {ep}: executed actions ({executor}, {latency_ms:g} ms)")
            traces[(task, ep)] = trace
            bar.update(1)
            bar.set_postfix(success=f"{np.mean([r['success'] for r in rows]):.2f}")
        env.close()
    bar.close()
    return summarize(rows, tasks, executor, latency_ms, wall_ms, hz), traces


def sampling_seeds(seed: int, episode: int):
    """`ChunkPolicy(seed_of_call=...)` for one episode: the flow's noise seed of each inference call, the same in
    `evaluate`, the reactivity probe and the benchmarks that replay its episodes."""
    return lambda call: seed * 100_003 + episode * 1009 + call


def make_env(policy, task: str, seed: int, orientation: str | None, cameras: dict[str, str] | None,
             image_size: tuple[int, int] | None = None, goal_marker_radius: float | None = None,
             goal_marker_color: str | None = None, placements: str = "mt1"):
    """The MetaWorld task rendered the way the policy's training data were (cameras, orientation, image size,
    goal marker). `placements`: "mt1" (evaluation), or "fresh" with the data's seed to replay its placements."""
    from .metaworld import DEFAULT_GOAL_MARKER_RADIUS, DEFAULT_ORIENTATION, MetaWorldEnv

    return MetaWorldEnv(task, seed=seed, image_size=tuple(image_size or policy.config.image_size),
                        cameras=_camera_map(policy.config.cameras, cameras),
                        orientation=orientation or DEFAULT_ORIENTATION,
                        goal_marker_radius=goal_marker_radius or DEFAULT_GOAL_MARKER_RADIUS,
                        goal_marker_color=goal_marker_color, placements=placements)


def make_runner(policy, executor: str, env, infer, latency_ms: float, k: int | None = None):
    """The named executor on a simulated clock at the policy's control rate; k defaults to runtime.default_k."""
    policy.config.check_executor(executor)
    clock = SimClock(1.0 / policy.config.control_hz, latency_s=latency_ms / 1000.0)
    kwargs = dict(k=default_k(policy.config.chunk_len) if k is None else k, action_space=HOLD_STILL)
    if executor == "async":  # the trained prefix; rtc's guided prefix is not capped by it
        kwargs["max_prefix"] = policy.config.max_prefix
    return EXECUTORS[executor](env, infer, clock, **kwargs)


def summarize(rows: list[dict], tasks: list[str], executor: str, latency_ms: float, wall_ms: list[float],
              hz: float) -> dict:
    times = [r["time_to_success_s"] for r in rows if r["success"]]
    bd = [r["boundary_discontinuity"] for r in rows if np.isfinite(r["boundary_discontinuity"])]
    return {
        "executor": executor, "latency_ms": latency_ms, "control_hz": hz, "episodes": len(rows),
        "success_rate": float(np.mean([r["success"] for r in rows])),
        "per_task": {t: float(np.mean([r["success"] for r in rows if r["task"] == t])) for t in tasks},
        "mean_time_to_success_s": float(np.mean(times)) if times else None,
        "idle_fraction": float(np.mean([r["idle_fraction"] for r in rows])),
        "boundary_discontinuity": float(np.mean(bd)) if bd else None,
        "inference_wall_ms_p50": float(np.percentile(wall_ms, 50)) if wall_ms else None,
        "inference_wall_ms_p95": float(np.percentile(wall_ms, 95)) if wall_ms else None,
        "errors": sum(bool(r["error"]) for r in rows),
    }


def _camera_map(model_cameras, cameras: dict[str, str] | None = None) -> dict[str, str]:
    """The policy's camera names -> MetaWorld cameras: by name from `cameras` (default metaworld.CAMERAS), else by
    position."""
    from .metaworld import CAMERAS

    cameras = cameras or CAMERAS
    if set(model_cameras) <= set(cameras):
        return {c: cameras[c] for c in model_cameras}
    if len(model_cameras) > len(cameras):
        raise ValueError(f"the policy wants {len(model_cameras)} cameras; the setup offers {list(cameras)}")
    return dict(zip(model_cameras, cameras.values()))  # by position


class _VideoRecorder:
    """Wraps the env: renders the first camera after every tick (only when a video is wanted)."""

    def __init__(self, env):
        self.env, self.frames = env, []
        self.camera = next(iter(env.cameras.values()))

    def observe(self):
        return self.env.observe()

    def act(self, action):
        self.env.act(action)
        self.frames.append(self.env.render(self.camera))

    def save(self, path: pathlib.Path, fps: float) -> None:
        from ..data.lerobot_v3 import VideoEncoder

        if not self.frames:
            return
        h, w = self.frames[0].shape[:2]
        enc = VideoEncoder(path, int(round(fps)), h, w)
        enc.write(np.stack(self.frames))
        enc.close()


def print_table(result: dict) -> None:
    print(f"{'task':<28} success")
    for task, rate in result["per_task"].items():
        print(f"{task:<28} {rate:6.0%}")
    tts = result["mean_time_to_success_s"]
    print(f"{'mean':<28} {result['success_rate']:6.0%}   executor={result['executor']} latency={result['latency_ms']:g} ms "
          f"time-to-success={'n/a' if tts is None else f'{tts:.2f} s'} idle={result['idle_fraction']:.3f}")
