"""xr0 data mt50's parts that need no LeRobot: the task lists, the per-task lock, the missing-LeRobot error.
(Recording itself runs in LeRobot's venv: `make train-mt50`.)"""

from __future__ import annotations

import os
import subprocess
import sys

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
