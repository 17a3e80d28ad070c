"""The MT50 parts that need no LeRobot: xr0 data mt50's task lists, per-task lock and missing-LeRobot error; the
results table across sessions; xr0 eval mt50's loop over a stand-in for LeRobot's env. (Recording and the real env
run in LeRobot's venv: `make train-mt50`, `make eval-mt50`.)"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from xr0.sim import mt50

SPLITS = {"easy": ["reach-v3", "door-open-v3"], "medium": ["soccer-v3"], "hard": ["push-v3"],
          "very_hard": ["shelf-place-v3", "stick-pull-v3"]}


def test_split_tasks_all_in_split_order_a_split_or_names():
    assert mt50.split_tasks("all", SPLITS) == ["reach-v3", "door-open-v3", "soccer-v3", "push-v3", "shelf-place-v3",
                                              "stick-pull-v3"]
    assert mt50.split_tasks("very_hard", SPLITS) == ["shelf-place-v3", "stick-pull-v3"]
    assert mt50.split_tasks("push-v3, reach-v3", SPLITS) == ["push-v3", "reach-v3"]
    with pytest.raises(ValueError, match="nope-v3"):
        mt50.split_tasks("reach-v3,nope-v3", SPLITS)


def test_a_task_is_recorded_by_one_process_at_a_time(tmp_path):
    assert mt50._claim(tmp_path)  # free: taken, with this process's pid
    assert (tmp_path / ".lock").read_text() == str(os.getpid())
    assert not mt50._claim(tmp_path)  # held by a live process (this one)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".lock").write_text(str(dead.pid))  # left by a killed run
    assert mt50._claim(tmp_path)
    assert (tmp_path / ".lock").read_text() == str(os.getpid())


def test_without_lerobot_the_command_names_the_install_step(tmp_path):
    code = ("import sys; sys.modules['lerobot'] = None; from xr0.cli import main; "
            f"sys.exit(main(['data', 'mt50', '--out', {str(tmp_path / 'out')!r}]))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 2
    assert "make lerobot" in run.stderr and ".venv-lerobot" in run.stderr
    assert not (tmp_path / "out").exists()


def _table():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "mt50_table.py"
    spec = importlib.util.spec_from_file_location("mt50_table", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_of_several_sessions_make_one_table(tmp_path):
    import json

    table = _table()
    run = tmp_path / "run" / "eval"  # a lerobot-eval folder: tasks by group and index
    run.mkdir(parents=True)
    (run / "eval_info.json").write_text(json.dumps({"per_task": [
        {"task_group": "easy", "task_id": 1, "metrics": {"successes": [True, False]}},
        {"task_group": "medium", "task_id": 0, "metrics": {"successes": [True, True]}}]}))
    saved = tmp_path / "hard.json"  # what --save wrote in another session
    mt50.write_results(saved, {"push-v3": [False, True, True, True]}, runner="lerobot-eval")
    results = table.read([str(tmp_path / "run"), str(saved)], SPLITS)
    assert results == {"door-open-v3": [True, False], "soccer-v3": [True, True], "push-v3": [False, True, True, True]}
    summary = table.summarise(results, SPLITS)
    assert summary["splits"]["easy"] == {"success": 50.0, "tasks": 1, "of": 2, "episodes": 2}
    assert summary["splits"]["hard"]["success"] == 75.0 and summary["mean_of_splits"] is None  # very hard missing
    ours = table.markdown(summary, "xr0").splitlines()[-1]
    assert ours == "| **xr0** | 50.0 (1 of 2 tasks) | 100.0 | 75.0 | – | – |"  # a partial split says so
    again = tmp_path / "again.json"
    again.write_text(saved.read_text())
    with pytest.raises(SystemExit, match="push-v3"):  # one task from two inputs is refused, not counted twice
        table.read([str(saved), str(again)], SPLITS)


class _FakeLeRobotMetaWorld:
    """LeRobot's metaworld module as xr0 eval mt50 uses it: a MetaworldEnv whose episode succeeds once the summed
    x actions pass a threshold, on even reset seeds only."""
    TASK_DESCRIPTIONS = {"reach-v3": "Reach a goal position", "push-v3": "Push the puck to a goal", "black-v3": "-"}
    DIFFICULTY_TO_TASKS = {"easy": ["reach-v3"], "medium": [], "hard": ["push-v3"], "very_hard": []}
    seeds: list = []
    actions: list = []
    closed: list = []

    class MetaworldEnv:
        def __init__(self, task, obs_type):
            assert obs_type == "pixels_agent_pos"
            self.task = task

        def _obs(self):
            return {"pixels": np.full((48, 48, 3), 0 if self.task == "black-v3" else 90, np.uint8),
                    "agent_pos": np.zeros(4, np.float64)}

        def reset(self, seed):
            assert not _FakeLeRobotMetaWorld.closed  # envs close together at the end (a closed one's GL context
            _FakeLeRobotMetaWorld.seeds.append((self.task, seed))  # can blacken the next env's frames)
            self.seed, self.x = seed, 0.0
            return self._obs(), {}

        def step(self, action):
            assert action.shape == (4,) and action.dtype == np.float32 and np.abs(action).max() <= 1.0
            _FakeLeRobotMetaWorld.actions.append(action)
            self.x += 1.0
            success = self.seed % 2 == 0 and self.x >= 30
            return self._obs(), 0.0, success, False, {"is_success": success}

        def close(self):
            _FakeLeRobotMetaWorld.closed.append(self.task)


def test_xr0_eval_mt50_runs_lerobots_env_through_the_executors(monkeypatch):
    from xr0 import XR0Policy
    from xr0.processing import RobotSpec
    from xr0.sim import mt50_eval

    monkeypatch.setattr(mt50_eval, "_lerobot_metaworld", lambda command="": _FakeLeRobotMetaWorld)
    policy = XR0Policy.from_preset("tiny", seed=0, cameras=("Base View",), chunk_len=20, control_hz=80.0,
                                   robots={"metaworld_mt50": RobotSpec.identity(20, 4, 4)})
    result = mt50_eval.evaluate(policy, ["reach-v3", "push-v3"], 3, "async", latency_ms=100.0, progress=False)
    # lerobot-eval's reset seeds 1000 + episode; seed 1000 and 1002 succeed at step 30, 1001 runs all 500 steps
    assert _FakeLeRobotMetaWorld.seeds == [(t, s) for t in ("reach-v3", "push-v3") for s in (1000, 1001, 1002)]
    assert result["successes"] == {"reach-v3": [True, False, True], "push-v3": [True, False, True]}
    assert len(_FakeLeRobotMetaWorld.actions) == 2 * (30 + 500 + 30)
    assert _FakeLeRobotMetaWorld.closed == ["reach-v3", "push-v3"]
    assert result["mean_time_to_success_s"] == 30 / 80.0 and result["episodes"] == 6
    assert 0.0 < result["idle_fraction"] < 1.0  # the async executor holds only while the first chunk is inferred
    _FakeLeRobotMetaWorld.closed.clear()
    with pytest.raises(RuntimeError, match="black-v3: .*all-black frame"):  # a broken renderer is named, not scored
        mt50_eval.evaluate(policy, ["black-v3"], 1, "async", progress=False)


def test_the_table_reads_what_lerobot_eval_wrote():
    """tests/fixtures/lerobot_eval_mt50/eval_info.json: written by LeRobot 0.6.1's lerobot-eval (make eval-mt50
    SPLIT=button-press-topdown-v3,reach-v3 EPISODES=2 on checkpoints/mt50): task names as groups, task_id 0."""
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "lerobot_eval_mt50"
    results = _table().read([str(fixture)], {"easy": ["reach-v3", "button-press-topdown-v3"]})
    assert results == {"button-press-topdown-v3": [True, True], "reach-v3": [False, False]}
