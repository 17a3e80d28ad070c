"""Your robot on xr0, in one file: its observation dict -> xr0's request fields -> action chunks, executed
asynchronously (AsyncExecutor) at the robot's control rate. The guide: docs/add_a_robot.md.

What to adapt is marked TODO: the constants below, MyRobot (the hardware) and to_request (the observation mapping).
MyRobot here is a stand-in (6 joints + a gripper, two cameras, first-order joint dynamics), so every mode runs on a
CPU in seconds:

    python examples/my_robot.py --local                             # in process, the tiny preset's random weights
    python examples/my_robot.py --record runs/my_robot-data --episodes 8    # demonstrations -> LeRobotDataset v3
    python examples/my_robot.py --local --checkpoint runs/my_robot-train    # in process, a trained checkpoint
    xr0 serve --checkpoint runs/my_robot-train --robot-type my_robot        # then, in a second shell:
    python examples/my_robot.py --server ws://127.0.0.1:8000

Each run prints one JSON line: ticks executed, the actions' shape, chunks received, idle fraction, latency.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from PIL import Image

from xr0.runtime import ActionLimits, AsyncExecutor, RealClock, Watchdog

ROBOT_TYPE = "my_robot"  # the --robot-type you train and serve under
CONTROL_HZ = 10.0  # TODO: your control rate; --record writes it as the dataset's fps (a fresh run's control_hz)
CAMERAS = {"Front View": "cam_front", "Wrist View": "cam_wrist"}  # TODO: xr0 camera name -> your observation key
INSTRUCTION = "move the arm to the red marks"  # TODO: your task's instruction
# TODO: your joint limits and the largest change per tick you allow (6 joints in rad + the gripper opening in [0, 1]).
JOINT_LOW = np.array([-2.9, -1.8, -2.9, -3.0, -2.9, -0.1, 0.0])
JOINT_HIGH = np.array([2.9, 1.8, 2.9, 0.0, 2.9, 3.7, 1.0])
MAX_STEP = np.array([0.1] * 6 + [0.2])


class MyRobot:
    """A stand-in for your hardware. Replace the bodies of get_observation and send_action with your drivers."""

    def __init__(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.joints = np.zeros(7)
        self.goal = rng.uniform(JOINT_LOW / 2, JOINT_HIGH / 2)  # what the fake task asks for (drawn in cam_front)
        self.commands = 0

    def get_observation(self) -> dict:
        # TODO: read your cameras (HxWx3 uint8, any size) and joint encoders here.
        return {"cam_front": self._bars(96, 128), "cam_wrist": self._bars(64, 64)[::-1].copy(),
                "joint_pos": self.joints.astype(np.float32)}

    def send_action(self, action: np.ndarray) -> None:
        # TODO: send the 7 joint position targets to your controller here.
        self.joints = self.joints + 0.5 * (np.asarray(action, np.float64) - self.joints)
        self.commands += 1

    def _bars(self, h: int, w: int) -> np.ndarray:
        """One grey bar per joint (height: its position) and a red mark at its goal."""
        img = np.full((h, w, 3), 40, np.uint8)
        span = JOINT_HIGH - JOINT_LOW
        for i, (q, g) in enumerate(zip((self.joints - JOINT_LOW) / span, (self.goal - JOINT_LOW) / span)):
            x0, x1 = i * w // 7 + 2, (i + 1) * w // 7 - 2
            img[h - int(q * (h - 1)) - 1:, x0:x1] = 200
            y = h - int(g * (h - 1)) - 1
            img[max(y - 2, 0): y + 2, x0:x1] = (220, 30, 30)
        return img


def to_request(obs: dict, image_size=None) -> dict:
    """Your observation -> xr0's request fields. `image_size` (H, W): the size a server wants for this robot type
    (it refuses others; in process the policy resizes any size itself)."""
    images = {}
    for camera, key in CAMERAS.items():
        img = obs[key]
        if image_size is not None and img.shape[:2] != tuple(image_size):
            img = np.asarray(Image.fromarray(img).resize((image_size[1], image_size[0]), Image.BILINEAR))
        images[camera] = img
    return {"images": images, "state": obs["joint_pos"], "prompt": INSTRUCTION, "robot_type": ROBOT_TYPE}


class RobotEnv:
    """The robot as xr0's executors see it: observe() -> a request, act(action) -> the robot (one control tick)."""

    def __init__(self, robot: MyRobot, image_size=None):
        self.robot, self.image_size = robot, image_size

    def observe(self) -> dict:
        return to_request(self.robot.get_observation(), self.image_size)

    def act(self, action: np.ndarray) -> None:
        self.robot.send_action(action)


def local_policy(checkpoint: str | None = None):
    """A checkpoint with robot type ROBOT_TYPE, or the tiny preset's random weights set up for this robot."""
    from xr0 import XR0Policy
    from xr0.processing import RobotSpec
    from xr0.processing.images import ImageSpec

    if checkpoint:
        return XR0Policy.from_pretrained(checkpoint)
    robot = RobotSpec.identity(10, action_dim=7, state_dim=7, cameras=tuple(CAMERAS), image=ImageSpec.fixed((64, 64)))
    return XR0Policy.from_preset("tiny", cameras=tuple(CAMERAS), control_hz=CONTROL_HZ, robots={ROBOT_TYPE: robot})


class LocalChunks:
    """An in-process XR0Policy as the executor's policy: (request, prefix) -> (T, 7) actions."""

    def __init__(self, policy):
        self.policy, self.calls = policy, 0
        self.max_prefix = policy.config.max_prefix  # the executor sends at most this many prefix actions
        self.delta_dims = policy.robot(ROBOT_TYPE).delta_dims  # dims a held tick sets to 0 (none: absolute targets)

    def __call__(self, request: dict, prefix=None, prefix_weights=None) -> np.ndarray:
        self.calls += 1  # prefix_weights: RTCExecutor's inference-time guidance (a checkpoint with max_prefix 0)
        return self.policy.sample(request["images"], request["prompt"], request["state"], prefix=prefix,
                                  prefix_weights=prefix_weights, seed=self.calls, robot_type=ROBOT_TYPE)


def remote_policy(url: str):
    """(client, the executor's policy, the image size to send) for `xr0 serve` at `url`, checked against CAMERAS."""
    from xr0.runtime.client import PolicyClient

    client = PolicyClient(url)
    meta = client.metadata
    served = (meta.get("robots") or {}).get(ROBOT_TYPE)
    if served is None:
        raise SystemExit(f"{url} serves robot types {meta.get('robot_types')}, not {ROBOT_TYPE!r}")
    if served["cameras"] != list(CAMERAS) or served["state_dim"] != 7 or served["action_dim"] != 7:
        raise SystemExit(f"{url} serves {ROBOT_TYPE!r} with cameras {served['cameras']}, state_dim "
                         f"{served['state_dim']}, action_dim {served['action_dim']}; this robot has "
                         f"{list(CAMERAS)}, 7, 7")
    fn = client.as_policy_fn()
    fn.delta_dims = tuple(served.get("delta_dims") or ())
    return client, fn, served["image_size"]


def run(policy, ticks: int, image_size=None, seed: int = 0) -> dict:
    """One episode: the async executor at CONTROL_HZ in wall-clock time, inference in a second thread."""
    robot = MyRobot(seed)
    executor = AsyncExecutor(RobotEnv(robot, image_size), policy, RealClock(CONTROL_HZ),
                             limits=ActionLimits(JOINT_LOW, JOINT_HIGH, MAX_STEP),
                             watchdog=Watchdog(stall_s=2.0, max_age_s=2.0))
    trace = executor.run(ticks)
    m = trace.metrics()
    return {"ticks": m["ticks"], "actions_shape": list(trace.actions.shape), "commands_sent": robot.commands,
            "chunks": sum(r.status == "ok" for r in trace.inferences), "errors": m["errors"],
            "idle_fraction": round(m["idle_fraction"], 3), "clipped": m["clipped"],
            "latency_ms_p50": round(1e3 * m.get("latency_median_s", float("nan")), 1),
            "stop_reason": trace.stop_reason, "joints": [round(float(q), 3) for q in robot.joints]}


def record(out: str, episodes: int, steps: int = 40) -> dict:
    """Demonstrations of the fake task (a scripted expert steps toward the goal) -> a LeRobotDataset v3 at `out`."""
    from xr0.data.lerobot_v3 import LeRobotV3Writer

    robot = MyRobot()
    first = robot.get_observation()
    cameras = {camera: first[key].shape[:2] for camera, key in CAMERAS.items()}
    with LeRobotV3Writer(out, fps=int(CONTROL_HZ), cameras=cameras, state_dim=7, action_dim=7,
                         robot_type=ROBOT_TYPE) as writer:
        for ep in range(episodes):
            robot = MyRobot(seed=ep)
            images, states, actions = {c: [] for c in CAMERAS}, [], []
            for _ in range(steps):
                obs = robot.get_observation()
                action = robot.joints + np.clip(robot.goal - robot.joints, -MAX_STEP, MAX_STEP)  # TODO: teleop
                for camera, key in CAMERAS.items():
                    images[camera].append(obs[key])
                states.append(obs["joint_pos"])
                actions.append(action)
                robot.send_action(action)
            writer.add_episode({c: np.stack(v) for c, v in images.items()}, np.stack(states), np.stack(actions),
                               INSTRUCTION)
    return {"dataset": out, "episodes": episodes, "frames": episodes * steps, "cameras": list(cameras)}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--local", action="store_true", help="run the policy in this process")
    mode.add_argument("--server", default="ws://127.0.0.1:8000", help="an `xr0 serve` address (default)")
    mode.add_argument("--record", metavar="DIR", help="write demonstrations of the fake task to DIR")
    ap.add_argument("--checkpoint", default=None, help="--local: a checkpoint (default: the tiny preset, random)")
    ap.add_argument("--ticks", type=int, default=50, help="control ticks to run")
    ap.add_argument("--episodes", type=int, default=8, help="--record: episodes to write")
    args = ap.parse_args(argv)
    if args.record:
        summary = record(args.record, args.episodes)
    elif args.local:
        summary = run(LocalChunks(local_policy(args.checkpoint)), args.ticks)
    else:
        client, fn, image_size = remote_policy(args.server)
        with client:
            summary = run(fn, args.ticks, image_size)
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
