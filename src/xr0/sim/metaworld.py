"""MetaWorld (v3) as an xr0 environment: camera images + the robot's own state + one instruction per task.

The policy sees only what a real robot knows about itself (hand position, gripper opening) plus two camera
views; object and goal positions stay hidden. MetaWorld's scripted experts, which read the full simulator
state, are used only to produce demonstrations.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

CONTROL_HZ = 40.0  # one tick = ACTION_REPEAT MetaWorld steps of 12.5 ms
ACTION_REPEAT = 2
STATE_DIM, ACTION_DIM = 4, 4  # hand xyz + gripper opening; xyz delta + gripper effort
DELTA_DIMS = (0, 1, 2)  # the hand's xyz move per tick; the gripper effort (dim 3) is absolute
ACTION_NAMES = ("dx", "dy", "dz", "gripper")  # plot labels of the action dims
# What the simulator knows and the policy does not (training-only supervision, `xr0 train --env-state-loss`).
ENV_STATE_NAMES = ("object_x", "object_y", "object_z", "goal_x", "goal_y", "goal_z")
# xr0 camera name -> MetaWorld camera: the top view, in which an object's image position maps almost linearly to
# its table position, and the low corner view "corner", which sees heights: together they place a point on the
# reach range to 0.8 / 0.9 / 1.2 cm per pixel in x / y / z at 128x128, where the steep "corner3" (the default
# until the v4 checkpoint) left z at 2.2 cm per pixel, its height and depth almost along one image direction
# (docs/changelog.md, v4). The wrist camera "gripperPOV" sees mostly its own finger at 128x128.
CAMERAS = {"Base View": "corner", "Top View": "topview"}
# How rendered images are turned (see `MetaWorldEnv.render`). mujoco.Renderer already returns rows top-down; what
# looks upside-down are MetaWorld's fixed corner cameras, which are rolled (their image-up axis points below the
# horizon). "upright" (the default) rotates those by 180 degrees and leaves the others alone: world-up is up and
# nothing is mirrored. "flipud" flips every camera vertically: corner views come out upright but mirrored
# left-right. Data and evaluation must use the same setting (the dataset's meta/xr0_metaworld.json records it).
MAX_TICKS = 500 // ACTION_REPEAT  # MetaWorld's horizon is 500 steps (SawyerXYZEnv.max_path_length)
ORIENTATIONS = ("flipud", "upright")
DEFAULT_ORIENTATION = "upright"
# Radius (m) of the goal marker as rendered (reach's red sphere, the drawers' and window's green one); a site is
# drawn only, never touched, so the task is unchanged. MetaWorld draws 2 cm, about 3 pixels at 128x128: too small
# for the policy's 32-pixel image tokens to place (docs/changelog.md, v2). Data and evaluation must use the same value
# (meta/xr0_metaworld.json records it; checkpoints without it were trained on MetaWorld's own).
STOCK_GOAL_MARKER_RADIUS = 0.02
DEFAULT_GOAL_MARKER_RADIUS = 0.04
# Colour of the goal marker as rendered (`goal_marker_color`, RGBA by name; None: MetaWorld's own). "green" is
# MetaWorld's drawer and window goal colour: its red reach goal looks like the red arm, and once the hand is near
# the goal the two share an image token (docs/changelog.md, v10). Only drawn, like the radius; data and evaluation
# must use the same (meta/xr0_metaworld.json records it).
GOAL_MARKER_COLORS = {"green": (0.0, 0.8, 0.0, 1.0)}

INSTRUCTIONS = {
    "reach-v3": "reach the {marker} target",  # the goal marker's colour (`instruction`)
    "push-v3": "push the red puck to the goal",
    "drawer-open-v3": "open the drawer",
    "drawer-close-v3": "close the drawer",
    "button-press-topdown-v3": "press the button from the top",
    "door-open-v3": "open the door",
    "window-open-v3": "slide the window open",
    "window-close-v3": "slide the window closed",
    "plate-slide-v3": "slide the plate into the goal",
    "handle-press-v3": "press the handle down",
    "faucet-open-v3": "turn the faucet on",
    "pick-place-v3": "pick up the puck and place it at the goal",
}
# Tasks whose target `MetaWorldEnv.move_target` can move mid-episode (the reactivity probe, xr0.sim.reactivity).
MOVABLE_TARGETS = ("reach-v3", "button-press-topdown-v3")
# Where `reset(hand_start=)` may start the hand (xyz, m; reach-v3 only, whose expert servos straight to the goal from
# anywhere): around and beyond reach's goal range (x -0.1..0.1, y 0.8..0.9, z 0.05..0.3; the hand's own start is
# 0, 0.6, 0.2), so demonstrations also show the way back from where a policy that overshoots ends up.
HAND_START_TASKS = ("reach-v3",)
HAND_START_RANGE = ((-0.15, 0.55, 0.08), (0.15, 0.95, 0.32))
# Tasks whose goal is visible in the cameras (push's goal marker is a few pixels at 128x128).
DEFAULT_TASKS = ("reach-v3", "drawer-open-v3", "drawer-close-v3", "button-press-topdown-v3", "window-open-v3",
                 "handle-press-v3")


class MetaWorldNotInstalled(ImportError):
    """MetaWorld, MuJoCo or gymnasium is missing; the message names the install step."""


def require_metaworld():
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        import gymnasium as gym
        import metaworld  # noqa: F401  (registers the Meta-World/* environments)
        import mujoco
    except ImportError as e:
        raise MetaWorldNotInstalled(f"MetaWorld is not installed ({e}); `pip install 'xr0[sim]'` (a checkout: `make test` or "
                          "`.venv/bin/pip install -r requirements.txt`)") from e
    return gym, mujoco


def parse_cameras(spec: str) -> dict[str, str]:
    """`--cameras corner,topview` -> {"Base View": "corner", "Top View": "topview"} (CAMERAS' xr0 names in order)."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if len(names) != len(CAMERAS):
        raise ValueError(f"--cameras needs {len(CAMERAS)} MetaWorld camera names, for {list(CAMERAS)}; got {spec!r}")
    return dict(zip(CAMERAS, names))


def instruction(task: str, goal_marker_color: str | None = None) -> str:
    """The task's instruction; reach's names its marker's colour (red: MetaWorld's own)."""
    return INSTRUCTIONS[task].format(marker=goal_marker_color or "red")


def check_tasks(tasks) -> list[str]:
    tasks = [t.strip() for t in (tasks.split(",") if isinstance(tasks, str) else tasks) if t.strip()]
    unknown = [t for t in tasks if t not in INSTRUCTIONS]
    if unknown or not tasks:
        raise ValueError(f"unknown MetaWorld task(s) {unknown or tasks}; known: {sorted(INSTRUCTIONS)}")
    return tasks


# "mt1": MetaWorld's MT1 benchmark, 50 placements fixed by the seed, one drawn at random per reset (40 resets cover
# about 27 of them); "fresh": a new placement from the task's whole range at every reset (still set by the seed).
PLACEMENTS = ("mt1", "fresh")


class MetaWorldEnv:
    """One MetaWorld task. `seed` fixes the sequence of object/goal placements over successive resets."""

    def __init__(self, task: str, seed: int = 0, image_size: tuple[int, int] = (128, 128),
                 cameras: dict[str, str] | None = None, orientation: str = DEFAULT_ORIENTATION,
                 placements: str = "mt1", goal_marker_radius: float = DEFAULT_GOAL_MARKER_RADIUS,
                 goal_marker_color: str | None = None):
        gym, mujoco = require_metaworld()
        self._mujoco = mujoco
        check_tasks([task])
        if orientation not in ORIENTATIONS:
            raise ValueError(f"orientation must be one of {ORIENTATIONS}, got {orientation!r}")
        self.orientation = orientation
        if goal_marker_color is not None and goal_marker_color not in GOAL_MARKER_COLORS:
            raise ValueError(f"goal_marker_color must be one of {sorted(GOAL_MARKER_COLORS)} or None (MetaWorld's "
                             f"own), got {goal_marker_color!r}")
        self.task, self.instruction = task, instruction(task, goal_marker_color)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.env = gym.make("Meta-World/MT1", env_name=task, seed=seed, disable_env_checker=True)
        self.sim = self.env.unwrapped
        if placements not in PLACEMENTS:
            raise ValueError(f"placements must be one of {PLACEMENTS}, got {placements!r}")
        if placements == "fresh":  # every reset draws a new placement from MetaWorld's range, seeded by `seed`
            wrapper = self.env
            while not hasattr(wrapper, "toggle_sample_tasks_on_reset"):
                wrapper = wrapper.env
            wrapper.toggle_sample_tasks_on_reset(False)
            self.sim.set_task(wrapper.tasks[0])  # the task's fixed settings; its placement is then unfrozen
            self.sim._freeze_rand_vec, self.sim.seeded_rand_vec = False, True
            self.sim.np_random = np.random.default_rng([seed, 0x9A7])
        if not 0.0 < goal_marker_radius <= 0.1:
            raise ValueError(f"goal_marker_radius must be in (0, 0.1] m, got {goal_marker_radius}")
        if "goal" in [self.sim.model.site(i).name for i in range(self.sim.model.nsite)]:
            self.sim.model.site("goal").size[0] = goal_marker_radius
            if goal_marker_color is not None:
                self.sim.model.site("goal").rgba[:] = GOAL_MARKER_COLORS[goal_marker_color]
        self.cameras = dict(cameras or CAMERAS)
        names = [self.sim.model.camera(i).name for i in range(self.sim.model.ncam)]
        unknown = sorted(set(self.cameras.values()) - set(names))
        if unknown:
            raise ValueError(f"unknown MetaWorld camera(s) {unknown}; the scene has {names}")
        self._renderer = mujoco.Renderer(self.sim.model, *image_size)
        self._no_effects = (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION,
                            mujoco.mjtRndFlag.mjRND_SKYBOX)  # 3x faster on a software renderer
        self._expert = None
        self.period = 1.0 / CONTROL_HZ
        self.reset()

    def reset(self, hand_start: np.ndarray | None = None) -> dict:
        """A new episode (the next placement). `hand_start` (xyz, HAND_START_TASKS only): the hand starts there
        instead of at the task's own start; MetaWorld's reset moves it there before it places the goal."""
        own = self.sim.hand_init_pos
        if hand_start is not None:
            if self.task not in HAND_START_TASKS:
                raise ValueError(f"{self.task}: hand_start is for {HAND_START_TASKS} only")
            self.sim.hand_init_pos = np.asarray(hand_start, dtype=np.float64)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._obs, _ = self.env.reset()
        finally:
            self.sim.hand_init_pos = own
        # MetaWorld's reset places the objects and the goal site without recomputing their world poses, so the
        # first frame would show them where the previous episode left them (drawers, windows, the reach marker)
        # until the first physics step; this only recomputes derived quantities, the state is unchanged.
        self._mujoco.mj_forward(self.sim.model, self.sim.data)
        self.success, self.ticks, self.success_tick = False, 0, None
        return self.observe()

    def render(self, camera: str) -> np.ndarray:
        """One camera image, turned as `self.orientation` says (see ORIENTATIONS above)."""
        self._renderer.update_scene(self.sim.data, camera=camera)
        for flag in self._no_effects:
            self._renderer.scene.flags[flag] = False
        img = self._renderer.render()  # rows top-down already (mujoco.Renderer flips the GL buffer)
        if self.orientation == "flipud":
            return img[::-1].copy()
        return img[::-1, ::-1].copy() if self.camera_rolled(camera) else img

    def camera_rolled(self, camera: str) -> bool:
        """Whether the camera's image-up axis points below the horizon (its raw image shows the world upside-down)."""
        return bool(self.sim.data.camera(camera).xmat.reshape(3, 3)[2, 1] < 0)

    def state(self) -> np.ndarray:
        return np.asarray(self._obs[:STATE_DIM], dtype=np.float32)  # hand xyz, gripper opening

    def env_state(self) -> np.ndarray:
        """ENV_STATE_NAMES: the task's first object and its goal (privileged; recorded for training only)."""
        return np.concatenate([self._obs[4:7], self.goal()]).astype(np.float32)

    def observe(self) -> dict:
        return {"images": {name: self.render(cam) for name, cam in self.cameras.items()},
                "state": self.state(), "prompt": self.instruction}

    @property
    def max_ticks(self) -> int:
        """Ticks per episode MetaWorld allows (its 500-step horizon; one more step raises inside MetaWorld)."""
        return self.sim.max_path_length // ACTION_REPEAT

    def act(self, action: np.ndarray) -> None:
        if self.ticks >= self.max_ticks:
            raise RuntimeError(f"{self.task}: episode is over after {self.max_ticks} ticks "
                               f"({self.sim.max_path_length} MetaWorld steps); lower max_ticks or reset()")
        action = np.clip(np.asarray(action, dtype=np.float64)[:ACTION_DIM], -1.0, 1.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for _ in range(ACTION_REPEAT):
                self._obs, _, _, _, info = self.env.step(action)
                if info.get("success"):
                    break
        self.ticks += 1
        if info.get("success") and not self.success:
            self.success, self.success_tick = True, self.ticks

    def target(self) -> np.ndarray:
        """Where the hand has to go (MOVABLE_TARGETS): reach-v3's goal, the top of button-press's button."""
        if self.task == "reach-v3":
            return self.goal()
        if self.task == "button-press-topdown-v3":
            return np.asarray(self.sim._get_pos_objects(), dtype=np.float64).copy()
        raise ValueError(f"{self.task} has no movable target; tasks with one: {MOVABLE_TARGETS}")

    def move_target(self, to: np.ndarray | None = None) -> np.ndarray:
        """Move the target mid-episode (MOVABLE_TARGETS): to `to` (xyz; the button keeps its height), or by default
        across the table (x -> -x, or 10 cm toward the other side when it is within 5 cm of the middle: at least
        10 cm, and inside the task's range, where the observation is not clipped). What the cameras show moves with
        it, the observation vector the expert reads is updated, and success starts over. reach-v3 moves its goal and
        marker, button-press-topdown-v3 its button box (unpressed). Returns the new `target()`."""
        mujoco = self._mujoco
        now = self.target()
        if to is None:
            x = now[0]
            shift = np.array([-2.0 * x if abs(x) > 0.05 else (0.1 if x < 0 else -0.1), 0.0, 0.0])
        else:
            shift = np.asarray(to, dtype=np.float64) - now
        self._obs = np.array(self._obs, copy=True)
        if self.task == "reach-v3":
            self.sim._target_pos = self.goal() + shift
            self.sim.model.site("goal").pos = self.sim._target_pos
            mujoco.mj_forward(self.sim.model, self.sim.data)  # the marker is drawn where it is now, not after a step
            self._obs[36:39] = self.sim._target_pos
        elif self.task == "button-press-topdown-v3":
            box = self.sim.model.body("box")
            box.pos = box.pos + np.array([shift[0], shift[1], 0.0])
            self.sim._set_obj_xyz(0.0)  # the button back up
            mujoco.mj_forward(self.sim.model, self.sim.data)
            self.sim._target_pos = self.sim._get_site_pos("hole")
            self._obs[4:7] = self.target()
        self.success, self.success_tick = False, None
        return self.target()

    def random_target(self, rng: np.random.Generator, min_distance: float = 0.08) -> np.ndarray:
        """A new target for `move_target(to=)`, uniform over the task's own placement range (reach-v3's goal range,
        the button box's) and at least `min_distance` from the current target."""
        now = self.target()
        if self.task == "reach-v3":
            space, origin = self.sim.goal_space, now
        else:  # the range is the box's; the target (the button's top) moves with the box
            space, origin = self.sim._random_reset_space, np.asarray(self.sim.model.body("box").pos, dtype=np.float64)
        low, high = np.asarray(space.low, dtype=np.float64)[:3], np.asarray(space.high, dtype=np.float64)[:3]
        for _ in range(1000):
            to = now + rng.uniform(low, high) - origin
            if self.task != "reach-v3":
                to[2] = now[2]
            if np.linalg.norm(to - now) >= min_distance:
                return to
        raise RuntimeError(f"{self.task}: no target {min_distance} m away from {now} in {low}..{high}")

    @staticmethod
    def random_hand_start(rng: np.random.Generator) -> np.ndarray:
        """A hand start for `reset(hand_start=)`, uniform over HAND_START_RANGE."""
        return rng.uniform(*HAND_START_RANGE)

    def goal(self) -> np.ndarray:
        return np.asarray(self.sim._target_pos, dtype=np.float64).copy()

    def expert_action(self, obs: np.ndarray | None = None) -> np.ndarray:
        """The scripted expert's action from the full simulator state (demonstrations only), or from `obs`, a
        MetaWorld observation vector (the reactivity oracle's kinematic roll-out)."""
        if self._expert is None:
            from metaworld.policies import ENV_POLICY_MAP
            self._expert = ENV_POLICY_MAP[self.task]()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Constant(s) may be too high": the clip below is intended
            return np.clip(self._expert.get_action(self._obs if obs is None else obs), -1, 1).astype(np.float32)

    def close(self) -> None:
        self._renderer.close()
        self.env.close()
