"""Roll a policy out in MetaWorld through the runtime executors under a simulated inference latency.

Time is simulated (runtime.SimClock): one inference costs ceil(latency / control period) ticks while the world
keeps stepping, so synchronous and asynchronous execution are compared honestly and repeatably on any machine.
"""

from __future__ import annotations

import json
import logging
import pathlib

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoints import resolve_checkpoint
from ..runtime import (AsyncExecutor, IdentityActions, InferenceFailed, NaiveAsyncExecutor, RealClock, RTCExecutor,
                       SimClock, SyncExecutor, default_k)
from .common import ChunkPolicy, pad_prefix
from .metaworld import DELTA_DIMS

logger = logging.getLogger(__name__)

# rtc: inference-time RTC (guided soft prefix over all remaining actions), for checkpoints not trained async.
EXECUTORS = {"sync": SyncExecutor, "async": AsyncExecutor, "naive-async": NaiveAsyncExecutor, "rtc": RTCExecutor}
HOLD_STILL = IdentityActions(zero_on_hold=DELTA_DIMS)  # a held delta action must not keep the arm moving


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
             goal_marker_radius: float | None = None, goal_marker_color: str | None = None,
             server: str | None = None, realtime: bool = False) -> dict:
    """Success rate, simulated time to success, idle fraction, boundary discontinuity, real inference latency.

    With `video_dir`, each episode also gets an MP4 and a PNG of its executed actions with chunk switches marked.
    `cameras` (policy camera -> MetaWorld camera), `orientation`, `image_size` (the render size; default the
    policy's), `goal_marker_radius` and `goal_marker_color` must be those the policy's training data were rendered
    with: `checkpoint_setup(checkpoint)` gives them.
    `server` (ws://HOST:PORT): the chunks come from `xr0 serve` over the socket (the policy only sets up the task,
    and must be the one served: its statistics hash is checked). `realtime`: the simulator steps at its control
    rate in wall-clock time (RealClock; inference in a second thread, as on a robot) instead of a simulated clock
    charging `latency_ms`; the result adds control_rate_held_hz (ticks per second that executed a fresh planned
    action), tick_jitter_ms_p50/_p99 and round_trip_ms_p50/_p95.
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
    rows, traces, realtime_stats = [], {}, []
    client = None if server is None else _connect(server, policy)
    where = f"{'real time' if realtime else f'{latency_ms:g} ms'}{' via ' + server if server else ''}"
    bar = tqdm(total=len(tasks) * episodes, desc=f"eval {executor} {where}", unit="ep", disable=not progress)
    for task in tasks:
        env = make_env(policy, task, seed, orientation, cameras, image_size, goal_marker_radius, goal_marker_color)
        for ep in range(episodes):
            env.reset()
            if client is None:
                infer = ChunkPolicy(policy, None, act_dims, seed_of_call=sampling_seeds(seed, ep), steps=steps,
                                    wall_ms=wall_ms)
            else:
                infer = RemoteChunks(client, sampling_seeds(seed, ep), steps, wall_ms)
            recorder = _VideoRecorder(env) if video_dir else None
            runner = make_runner(policy, executor, recorder or env, infer, latency_ms, k, realtime)
            row, trace = run_episode(runner, env, max_ticks, task, ep, hz)
            if realtime:
                realtime_stats.append(_tick_stats(trace, runner.clock))
            rows.append(row)
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
    if client is not None:
        client.close()
    result = summarize(rows, tasks, executor, latency_ms, wall_ms, hz)
    if server is not None:
        result.update(server=server, round_trip_ms_p50=result["inference_wall_ms_p50"],
                      round_trip_ms_p95=result["inference_wall_ms_p95"])
    if realtime:
        held = [s["fresh"] for s in realtime_stats]
        seconds = [s["seconds"] for s in realtime_stats]
        jitter = np.concatenate([s["jitter_ms"] for s in realtime_stats]) if realtime_stats else np.zeros(0)
        result.update(realtime=True, latency_ms=None,
                      control_rate_held_hz=float(sum(held) / sum(seconds)) if sum(seconds) else None,
                      tick_jitter_ms_p50=float(np.percentile(jitter, 50)) if jitter.size else None,
                      tick_jitter_ms_p99=float(np.percentile(jitter, 99)) if jitter.size else None,
                      overruns=int(sum(s["overruns"] for s in realtime_stats)))
    return result, traces


class RemoteChunks:
    """`xr0 serve` as the executors' policy callable: one request per chunk over the socket, seeded like
    ChunkPolicy (`seed_of_call`), the prefix padded to the served action width; `wall_ms` gets each round trip.
    Says the served max_prefix and delta_dims, as ChunkPolicy does."""

    def __init__(self, client, seed_of_call, steps: int | None = None, wall_ms: list[float] | None = None):
        meta = client.metadata
        self.client, self.seed_of_call, self.steps, self.wall_ms = client, seed_of_call, steps, wall_ms
        self.action_dim, self.max_prefix = int(meta["action_dim"]), int(meta.get("max_prefix", 0))
        self.delta_dims = tuple(meta.get("delta_dims") or ())
        self.calls = 0

    def __call__(self, obs: dict, prefix=None, prefix_weights=None) -> np.ndarray:
        import time

        msg = {"images": obs["images"], "state": np.asarray(obs["state"], np.float32), "prompt": obs["prompt"],
               "seed": int(self.seed_of_call(self.calls))}
        if self.steps is not None:
            msg["steps"] = self.steps
        if prefix is not None and len(prefix):
            msg["action_prefix"] = pad_prefix(prefix, self.action_dim)
            if prefix_weights is not None:
                msg["prefix_weights"] = np.asarray(prefix_weights, np.float32)
        t0 = time.perf_counter()
        actions = self.client.infer(msg)["actions"]
        if self.wall_ms is not None:
            self.wall_ms.append((time.perf_counter() - t0) * 1e3)
        self.calls += 1
        return np.asarray(actions, np.float64)


def _connect(server: str, policy):
    """A PolicyClient to `server`, checked to serve `policy` (same statistics hash, chunk length and cameras)."""
    from ..runtime.client import PolicyClient

    client = PolicyClient(server)
    meta, mine = client.metadata, policy.metadata()
    for key in ("norm_stats_hash", "chunk_len", "cameras", "action_dim", "state_dim"):
        if meta.get(key) != mine[key]:
            client.close()
            raise ValueError(f"--server {server} serves another policy: its {key} is {meta.get(key)!r}, the "
                             f"checkpoint's is {mine[key]!r}")
    return client


def _tick_stats(trace, clock) -> dict:
    """Wall-clock facts of one real-time episode: ticks that executed a fresh planned action, seconds, the
    deviation of each tick interval from the period (ms) and overruns."""
    times = np.asarray(clock.tick_times)
    fresh = sum(not t.idle for t in trace.ticks)
    seconds = float(times[-1] - times[0] + clock.period) if times.size else 0.0
    jitter = np.abs(np.diff(times) - clock.period) * 1e3 if times.size > 1 else np.zeros(0)
    return {"fresh": fresh, "seconds": seconds, "jitter_ms": jitter, "overruns": clock.overruns}


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
                        cameras=_metaworld_cameras(policy.config.cameras, cameras),
                        orientation=orientation or DEFAULT_ORIENTATION,
                        goal_marker_radius=goal_marker_radius or DEFAULT_GOAL_MARKER_RADIUS,
                        goal_marker_color=goal_marker_color, placements=placements)


def make_runner(policy, executor: str, env, infer, latency_ms: float, k: int | None = None, realtime: bool = False):
    """The named executor at the policy's control rate, on a simulated clock charging `latency_ms` (or, realtime,
    on the wall clock with inference in a second thread); k defaults to runtime.default_k."""
    policy.config.check_executor(executor)
    if realtime:
        clock = RealClock(policy.config.control_hz)
    else:
        clock = SimClock(1.0 / policy.config.control_hz, latency_s=latency_ms / 1000.0)
    kwargs = dict(k=default_k(policy.config.chunk_len) if k is None else k, action_space=HOLD_STILL)
    if executor == "async":  # the trained prefix; rtc's guided prefix is not capped by it
        kwargs["max_prefix"] = policy.config.max_prefix
    return EXECUTORS[executor](env, infer, clock, **kwargs)


def run_episode(runner, env, max_ticks: int, task: str, episode: int, hz: float):
    """One episode until success or `max_ticks` -> (its row for `summarize`, its trace). A policy that keeps failing
    ends the episode (the row's "error"), not the evaluation. `env` has success, ticks and success_tick."""
    try:
        trace, error = runner.run(max_ticks, stop=lambda: env.success), ""
    except InferenceFailed as e:
        trace, error = e.trace, str(e)
    m = trace.metrics()
    row = {"task": task, "episode": episode, "success": bool(env.success), "ticks": env.ticks,
           "time_to_success_s": env.success_tick / hz if env.success else None,
           "idle_fraction": m["idle_fraction"], "boundary_discontinuity": m["boundary_discontinuity"], "error": error}
    return row, trace


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


def _metaworld_cameras(model_cameras, cameras: dict[str, str] | None = None) -> dict[str, str]:
    """The policy's cameras -> the MetaWorld cameras to render: `cameras` (view title -> MetaWorld camera, default
    metaworld.CAMERAS) by the policy's view titles, else the first len(model_cameras) of them by position (a
    warning, once per process and pair of lists), else a ValueError."""
    from .metaworld import CAMERAS

    cameras = cameras or CAMERAS
    if set(model_cameras) <= set(cameras):
        return {c: cameras[c] for c in model_cameras}
    if len(model_cameras) > len(cameras):
        raise ValueError(f"the policy wants cameras {list(model_cameras)}; the MetaWorld setup offers {list(cameras)} "
                         f"(a checkpoint's {SETUP_FILE} names the cameras its data were rendered with)")
    pairs = dict(zip(model_cameras, cameras.values()))
    key = (tuple(model_cameras), tuple(cameras))
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning("the policy's cameras %s are not the setup's %s: rendering %s by position", list(model_cameras),
                       list(cameras), ", ".join(f"{m!r} as {c!r}" for c, m in pairs.items()))
    return pairs


_WARNED: set[tuple] = set()


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
    latency = "real time" if result.get("realtime") else f"latency={result['latency_ms']:g} ms"
    print(f"{'mean':<28} {result['success_rate']:6.0%}   executor={result['executor']} {latency} "
          f"time-to-success={'n/a' if tts is None else f'{tts:.2f} s'} idle={result['idle_fraction']:.3f}")
    if result.get("realtime"):
        print(f"control rate held {result['control_rate_held_hz']:.1f} of {result['control_hz']:g} Hz, tick jitter "
              f"p50 {result['tick_jitter_ms_p50']:.2f} / p99 {result['tick_jitter_ms_p99']:.2f} ms, inference "
              f"{'round trip ' if result.get('server') else ''}p50 {result['inference_wall_ms_p50']:.0f} / p95 "
              f"{result['inference_wall_ms_p95']:.0f} ms")
