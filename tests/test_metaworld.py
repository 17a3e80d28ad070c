"""MetaWorld path smoke: expert demos -> LeRobot v3 dataset -> a few training steps -> evaluation under latency."""

import json
import os

import numpy as np
import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
pytest.importorskip("metaworld")

from xr0.data.lerobot_v3 import LeRobotV3Dataset  # noqa: E402
from xr0.data.metaworld_gen import generate  # noqa: E402
from xr0.sim.evaluate import evaluate, load_policy  # noqa: E402
from xr0.sim.metaworld import CAMERAS, MetaWorldEnv  # noqa: E402

TASKS = ["reach-v3", "handle-press-v3"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("mw") / "data"
    summary = generate(TASKS, episodes=2, out=out, image_size=64, max_ticks=80, seed=0)
    return out, summary


def test_demos_keep_only_what_the_robot_knows(dataset):
    out, summary = dataset
    assert all(t["expert_success"] == 1.0 and t["kept"] == 2 for t in summary["tasks"].values())
    ds = LeRobotV3Dataset(out, chunk_len=10)
    assert len(ds) == summary["frames"]
    sample = ds[0]
    assert sample["state"].shape == (4,) and sample["actions"].shape == (10, 4)
    assert set(sample["images"]) == set(CAMERAS) and sample["images"]["Base View"].shape == (64, 64, 3)
    # state = hand xyz + gripper opening of the env at reset (same placement seed), nothing about objects
    env = MetaWorldEnv("reach-v3", seed=0, image_size=(64, 64))
    try:
        np.testing.assert_allclose(sample["state"], env.state(), atol=1e-5)
        assert sample["instruction"] == env.instruction
        upright = env.render(CAMERAS["Base View"])
        assert np.array_equal(upright, env._renderer.render()[::-1])  # MuJoCo renders bottom-up
    finally:
        env.close()


def test_train_then_evaluate_sync_vs_async(dataset, tmp_path):
    import argparse

    from xr0.train.cli import add_arguments, run

    data, _ = dataset
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--recipe", "post-async", "--preset", "tiny", "--data", str(data), "--robot-type",
                              "metaworld", "--out", str(tmp_path / "run"), "--steps", "3", "--batch-size", "2",
                              "--no-progress", "--save-every", "3"])
    assert run(args) == 0
    policy = load_policy(str(tmp_path / "run"), None)
    assert policy.config.control_hz == 40.0  # the dataset's frame rate
    results = {}
    for executor in ("sync", "async"):
        results[executor], traces = evaluate(policy, TASKS, episodes=1, executor=executor, latency_ms=100.0,
                                             max_ticks=25, progress=False)
    for r in results.values():
        assert {"success_rate", "per_task", "episodes", "mean_time_to_success_s", "idle_fraction",
                "boundary_discontinuity"} <= set(r)
        assert r["episodes"] == 2 and set(r["per_task"]) == set(TASKS)
        json.dumps(r)
    # 100 ms at 40 Hz = 4 ticks: sync idles 4 of every 4 + (T - k) ticks, async keeps moving
    T = policy.config.chunk_len
    assert results["async"]["idle_fraction"] == 0.0
    assert results["sync"]["idle_fraction"] == pytest.approx(4 / (4 + T - T // 2), abs=0.06)
