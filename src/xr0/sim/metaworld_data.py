"""`xr0 data metaworld`: scripted-expert demonstrations -> a LeRobotDataset v3 (images, own state, action, task)."""

from __future__ import annotations

import json
import pathlib
import sys
import time

import numpy as np
from tqdm import tqdm

AFTER_SUCCESS = 8  # ticks recorded after success, so the policy also learns to stay put
MOVE_TICKS = (2, 30)  # `move_targets`: the tick of the move, uniform over this range (inclusive)


def episode_counts(spec, tasks) -> dict[str, int]:
    """Successful episodes per task from `--episodes`: an int for every task, or "40,reach-v3=100" (a default,
    then per-task counts; a task not named and no default is an error)."""
    if isinstance(spec, int):
        spec = str(spec)
    default, counts = None, {}
    for item in (i.strip() for i in str(spec).split(",") if i.strip()):
        name, _, value = item.rpartition("=")
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"--episodes: {item!r} is not N or TASK=N") from None
        if n < 1:
            raise ValueError(f"--episodes: {item!r} must be >= 1")
        if not name:
            default = n
        elif name not in tasks:
            raise ValueError(f"--episodes: {name!r} is not one of the tasks {list(tasks)}")
        else:
            counts[name] = n
    missing = [t for t in tasks if t not in counts and default is None]
    if missing:
        raise ValueError(f"--episodes gives no count for {missing}; add a default, e.g. --episodes 40,{spec}")
    return {t: counts.get(t, default) for t in tasks}


def generate(tasks, episodes, out, image_size: int = 128, max_ticks: int = 120, seed: int = 0,
             orientation: str | None = None, action_noise: float = 0.0, placements: str = "mt1",
             goal_marker_radius: float | None = None, move_targets: float = 0.0,
             cameras: dict[str, str] | None = None, hand_starts: float = 0.0,
             goal_marker_color: str | None = None) -> dict:
    """Roll out MetaWorld's experts and keep the successful episodes. Returns a summary (printed as JSON).

    `action_noise` > 0 (DART-style): the arm executes the expert's xyz action plus Gaussian noise of that standard
    deviation (actions live in [-1, 1]) while the dataset records the expert's clean action, so the data also show
    how the closed-loop expert recovers from states off its own path.

    `episodes`: successful episodes per task, an int or a spec for `episode_counts`.

    `move_targets` in [0, 1]: that fraction of the episodes of tasks with a movable target (MOVABLE_TARGETS) move
    it once, to a random place in the task's range (`MetaWorldEnv.random_target`) at a tick uniform in MOVE_TICKS,
    and the expert, which reads the target, turns toward it: demonstrations of reacting to a changed scene (the
    reactivity probe's situation; without them the target only matters at the start of an episode). An episode
    whose move is still pending keeps recording past its success, the hand held at the old target.

    `hand_starts` in [0, 1]: that fraction of the episodes of HAND_START_TASKS (reach) start the hand at a random
    point of HAND_START_RANGE, around and beyond the goals, instead of the task's own start (evaluation always uses
    the own start): demonstrations of the way to the goal from where a policy that overshoots ends up, which the
    demonstrations from the own start never show.

    `cameras`: xr0 camera name -> MetaWorld camera (default xr0.sim.metaworld.CAMERAS).

    `placements` (xr0.sim.metaworld.PLACEMENTS): "mt1" draws from MetaWorld's 50 placements per seed (40 episodes
    see about 27 distinct ones), "fresh" gives every episode a new placement.

    Each frame also records `supervision.environment_state` (ENV_STATE_NAMES: object and goal positions), which
    the policy never sees; `xr0 train --env-state-loss` may use it as a training-only target.

    Besides the LeRobot tree it writes meta/xr0_metaworld.json: how the observations were made (cameras, image
    orientation, control rate), which evaluation has to reproduce.
    """
    from .metaworld import (ACTION_DIM, ACTION_REPEAT, CAMERAS, CONTROL_HZ, DEFAULT_GOAL_MARKER_RADIUS,
                            DEFAULT_ORIENTATION, ENV_STATE_NAMES, HAND_START_TASKS, MAX_TICKS, MOVABLE_TARGETS,
                            STATE_DIM, MetaWorldEnv, check_tasks, instruction)
    from ..data.lerobot_v3 import LeRobotV3Writer

    tasks = check_tasks(tasks)
    counts = episode_counts(episodes, tasks)
    if image_size < 32 or image_size % 2:
        raise ValueError(f"--image-size must be an even number >= 32, got {image_size}")
    if not 0.0 <= action_noise <= 1.0:
        raise ValueError(f"--action-noise must be in [0, 1], got {action_noise}")
    if not 0.0 <= move_targets <= 1.0:
        raise ValueError(f"--move-targets must be a fraction in [0, 1], got {move_targets}")
    if not 0.0 <= hand_starts <= 1.0:
        raise ValueError(f"--hand-starts must be a fraction in [0, 1], got {hand_starts}")
    if not 1 <= max_ticks <= MAX_TICKS:
        raise ValueError(f"--max-steps must be in 1..{MAX_TICKS} (MetaWorld's horizon), got {max_ticks}")
    orientation = orientation or DEFAULT_ORIENTATION
    radius = DEFAULT_GOAL_MARKER_RADIUS if goal_marker_radius is None else goal_marker_radius
    size = (image_size, image_size)
    cameras = dict(cameras or CAMERAS)
    writer = LeRobotV3Writer(out, fps=int(CONTROL_HZ), cameras={c: size for c in cameras}, state_dim=STATE_DIM,
                             action_dim=ACTION_DIM, robot_type="metaworld_sawyer", env_state_names=list(ENV_STATE_NAMES))
    summary = {"tasks": {}, "frames": 0, "renders": 0}
    start = time.perf_counter()
    bar = tqdm(total=sum(counts.values()), desc="metaworld demos", unit="ep")
    noise = np.random.default_rng([seed, 0xDA27])
    mover = np.random.default_rng([seed, 0x40E])
    starter = np.random.default_rng([seed, 0x5A27])
    for task in tasks:
        env = MetaWorldEnv(task, seed=seed, image_size=size, orientation=orientation, placements=placements,
                           goal_marker_radius=radius, goal_marker_color=goal_marker_color, cameras=cameras)
        kept = failed = moved = started = 0
        episodes = counts[task]
        task_start = time.perf_counter()
        while kept < episodes:
            hand_start = None
            if task in HAND_START_TASKS and starter.random() < hand_starts:
                hand_start = env.random_hand_start(starter)
            obs = env.reset(hand_start=hand_start)
            move_at = None
            if task in MOVABLE_TARGETS and mover.random() < move_targets:
                move_at = int(mover.integers(MOVE_TICKS[0], MOVE_TICKS[1] + 1))
            frames = {c: [] for c in cameras}
            states, actions, env_states = [], [], []
            while env.ticks < max_ticks:
                if env.ticks == move_at:
                    env.move_target(to=env.random_target(mover))
                    obs = env.observe()
                for c in cameras:
                    frames[c].append(obs["images"][c])
                action = env.expert_action()
                states.append(obs["state"])
                env_states.append(env.env_state())
                actions.append(action)
                if action_noise > 0:
                    action = action.copy()
                    action[:3] = np.clip(action[:3] + noise.normal(0.0, action_noise, 3), -1.0, 1.0)
                env.act(action)
                pending = move_at is not None and env.ticks <= move_at
                if env.success and env.ticks - env.success_tick >= AFTER_SUCCESS and not pending:
                    break
                obs = env.observe()
            summary["renders"] += len(states) * len(cameras)
            if not env.success:
                failed += 1
                if failed > 3 * episodes:
                    raise RuntimeError(f"{task}: the scripted expert failed {failed} times; giving up")
                continue
            writer.add_episode({c: np.stack(v) for c, v in frames.items()}, np.stack(states), np.stack(actions),
                               env.instruction, env_states=np.stack(env_states))
            kept += 1
            moved += move_at is not None
            started += hand_start is not None
            summary["frames"] += len(states)
            bar.update(1)
            bar.set_postfix(task=task, frames=summary["frames"])
        summary["tasks"][task] = {"kept": kept, "moved": moved, "hand_starts": started, "failed": failed,
                                  "expert_success": kept / (kept + failed),
                                  "seconds_per_episode": round((time.perf_counter() - task_start) / (kept + failed), 2)}
        env.close()
    bar.close()
    writer.close()
    elapsed = time.perf_counter() - start
    sidecar = {"tasks": {t: instruction(t, goal_marker_color) for t in tasks}, "cameras": cameras,
               "orientation": orientation, "image_size": [image_size, image_size], "control_hz": CONTROL_HZ,
               "action_repeat": ACTION_REPEAT, "state": ["hand_x", "hand_y", "hand_z", "gripper_opening"],
               "action": ["dx", "dy", "dz", "gripper_effort"], "seed": seed, "after_success_ticks": AFTER_SUCCESS,
               "max_ticks": max_ticks, "action_noise": action_noise, "placements": placements,
               "episodes": counts, "goal_marker_radius": radius, "goal_marker_color": goal_marker_color,
               "move_targets": move_targets, "move_ticks": list(MOVE_TICKS), "hand_starts": hand_starts}
    (pathlib.Path(out) / "meta" / "xr0_metaworld.json").write_text(json.dumps(sidecar, indent=2))
    size_mb = sum(f.stat().st_size for f in pathlib.Path(out).rglob("*") if f.is_file()) / 2**20
    summary.update(seconds=round(elapsed, 1), seconds_per_episode=round(elapsed / sum(counts.values()), 2),
                   renders_per_s=round(summary["renders"] / elapsed, 1), size_mb=round(size_mb, 2),
                   control_hz=CONTROL_HZ, image_size=image_size, orientation=orientation, goal_marker_radius=radius,
                   goal_marker_color=goal_marker_color, out=str(out))
    return summary


def add_arguments(p) -> None:
    from .metaworld import GOAL_MARKER_COLORS, ORIENTATIONS, PLACEMENTS

    p.add_argument("--tasks", default=None, help="comma-separated MetaWorld v3 task names (default: the demo's 6)")
    p.add_argument("--episodes", default="20",
                   help="successful episodes per task: N, or a default and per-task counts (40,reach-v3=100)")
    p.add_argument("--out", required=True, help="output dataset folder (must not exist)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--max-steps", "--max-ticks", dest="max_ticks", type=int, default=120,
                   help="control ticks per episode at most (one tick = 2 MetaWorld steps at 40 Hz)")
    p.add_argument("--seed", type=int, default=0, help="placement seed (evaluation uses other seeds)")
    p.add_argument("--orientation", choices=ORIENTATIONS, default=None,
                   help="image orientation (default: upright; see xr0.sim.metaworld.ORIENTATIONS)")
    p.add_argument("--action-noise", type=float, default=0.0,
                   help="DART-style: execute expert xyz + N(0, s^2), record the clean expert action")
    p.add_argument("--placements", choices=PLACEMENTS, default="mt1",
                   help="mt1: MetaWorld's 50 placements per seed, drawn with repeats; fresh: a new one every episode")
    p.add_argument("--goal-marker-radius", type=float, default=None,
                   help="rendered radius of the goal marker in m (default 0.04; MetaWorld's own is 0.02)")
    p.add_argument("--goal-marker-color", choices=sorted(GOAL_MARKER_COLORS), default=None,
                   help="rendered colour of the goal marker (default: MetaWorld's own, reach's red like the arm)")
    p.add_argument("--move-targets", type=float, default=0.0,
                   help="fraction of reach/button episodes whose target moves once mid-episode (expert follows)")
    p.add_argument("--hand-starts", type=float, default=0.0,
                   help="fraction of reach episodes whose hand starts at a random point around and beyond the "
                        "goals (HAND_START_RANGE) instead of its own start")
    p.add_argument("--cameras", default=None,
                   help="MetaWorld cameras for Base View and Top View (default: corner,topview; before the v4 "
                        "checkpoint: corner3,topview)")


def run(args) -> int:
    from .metaworld import DEFAULT_TASKS, MetaWorldNotInstalled, parse_cameras

    try:  # a bad flag is named before anything is written (the env checks camera names against the scene)
        summary = generate(args.tasks or ",".join(DEFAULT_TASKS), args.episodes, args.out, args.image_size,
                           args.max_ticks, args.seed, args.orientation, args.action_noise, args.placements,
                           args.goal_marker_radius, args.move_targets,
                           parse_cameras(args.cameras) if args.cameras else None, args.hand_starts,
                           args.goal_marker_color)
    except (ValueError, MetaWorldNotInstalled) as e:  # a bad flag, or MetaWorld missing (the message names the step)
        print(f"xr0 data metaworld: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0
