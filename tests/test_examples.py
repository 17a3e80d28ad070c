"""examples/my_robot.py run as a user runs it: its main() in process with the tiny preset (--local), against a
policy server (--server), and --record read back as a LeRobot dataset."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest

from xr0.data.lerobot_v3 import LeRobotV3Dataset
from xr0.runtime.server import PolicyServer

EXAMPLE = pathlib.Path(__file__).resolve().parents[1] / "examples" / "my_robot.py"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("my_robot_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def sent(example, monkeypatch) -> list[np.ndarray]:
    """Every action the example sends to its robot."""
    actions, send = [], example.MyRobot.send_action

    def spy(robot, action):
        actions.append(np.array(action, dtype=np.float64))
        send(robot, action)

    monkeypatch.setattr(example.MyRobot, "send_action", spy)
    return actions


def check_run(example, summary: dict, sent: list[np.ndarray], ticks: int) -> None:
    """One command per tick, all of them within the example's joint limits and per-tick step, from several chunks."""
    assert summary["ticks"] == summary["commands_sent"] == len(sent) == ticks
    assert summary["actions_shape"] == [ticks, 7]
    assert summary["errors"] == 0 and summary["stop_reason"] is None
    assert summary["chunks"] >= 3  # T = 10, a new chunk when k = 5 actions remain: every 5 ticks plus its delay
    assert summary["idle_fraction"] < 0.5
    actions = np.stack(sent)
    assert np.isfinite(actions).all()
    assert (actions >= example.JOINT_LOW - 1e-9).all() and (actions <= example.JOINT_HIGH + 1e-9).all()
    assert (np.abs(np.diff(actions, axis=0)) <= example.MAX_STEP + 1e-9).all()
    assert np.ptp(actions, axis=0).max() > 0.05  # the arm was driven, not held


def test_local_async_loop_drives_the_robot(example, sent, capsys):
    summary = example.main(["--local", "--ticks", "30"])
    check_run(example, summary, sent, 30)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == summary


def test_server_async_loop_drives_the_robot(example, sent):
    with PolicyServer(example.local_policy(), port=0) as server:
        summary = example.main(["--server", f"ws://127.0.0.1:{server.port}", "--ticks", "20"])
        stats = server.stats()
    check_run(example, summary, sent, 20)
    # every chunk the robot used came over the socket (at most one more was in flight when the run ended)
    assert summary["chunks"] <= stats["chunks"] <= summary["chunks"] + 1
    assert stats["refused"] == stats["internal_errors"] == 0


def test_server_without_the_robot_type_is_refused(example, tiny):
    with PolicyServer(tiny, port=0) as server:
        with pytest.raises(SystemExit, match="not 'my_robot'"):
            example.remote_policy(f"ws://127.0.0.1:{server.port}")


def test_record_writes_a_lerobot_dataset(example, tmp_path):
    out = tmp_path / "data"
    summary = example.main(["--record", str(out), "--episodes", "2"])
    assert summary["frames"] == 80
    ds = LeRobotV3Dataset(out, 10)
    assert len(ds) == 80 and ds.fps == 10 and ds.cameras == ["front_view", "wrist_view"]
    first = ds[0]
    robot = example.MyRobot(seed=0)
    expected = robot.get_observation()
    assert first["instruction"] == example.INSTRUCTION
    np.testing.assert_array_equal(first["state"], np.zeros(7, np.float32))
    np.testing.assert_allclose(first["actions"][0], np.clip(robot.goal, -example.MAX_STEP, example.MAX_STEP),
                               atol=1e-6)
    assert first["actions"].shape == (10, 7) and first["action_valid"].all()
    for camera, key in zip(ds.cameras, example.CAMERAS.values()):
        image = first["images"][camera]
        assert image.shape == expected[key].shape
        assert np.abs(image.astype(float) - expected[key]).mean() < 8  # H.264 at crf 18
