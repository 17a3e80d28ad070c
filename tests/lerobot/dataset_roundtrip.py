"""make test-lerobot: an xr0-written dataset opened, read and extended by the real LeRobot 0.6.1, then read by xr0.

    .venv/bin/python tests/lerobot/dataset_roundtrip.py write DIR           # xr0's writer (main venv)
    .venv-lerobot/bin/python tests/lerobot/dataset_roundtrip.py lerobot DIR  # LeRobot: read, resume, add, finalize
    .venv/bin/python tests/lerobot/dataset_roundtrip.py xr0 DIR             # xr0's reader on the extended dataset

Each step prints one JSON line and exits non-zero on a failed check.
"""

import json
import shutil
import sys

import numpy as np

EPISODES, FRAMES = 2, 12


def write(root: str) -> dict:
    from xr0.data.lerobot_v3 import LeRobotV3Writer

    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(0)
    with LeRobotV3Writer(root, 10, {"front": (32, 32)}, 4, 3, robot_type="toy") as w:
        for ep in range(EPISODES):
            w.add_episode({"front": rng.integers(0, 255, (FRAMES, 32, 32, 3), dtype=np.uint8)},
                          rng.normal(size=(FRAMES, 4)), rng.normal(size=(FRAMES, 3)), f"task {ep}")
    return {"written": root, "episodes": EPISODES, "frames": EPISODES * FRAMES}


def lerobot(root: str) -> dict:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/xr0", root=root)
    item = ds[FRAMES + 3]
    assert len(ds) == EPISODES * FRAMES and tuple(item["observation.images.front"].shape) == (3, 32, 32)
    ds = LeRobotDataset.resume("local/xr0", root=root)
    rng = np.random.default_rng(1)
    for _ in range(FRAMES):
        ds.add_frame({"observation.state": rng.normal(size=4).astype(np.float32),
                      "action": rng.normal(size=3).astype(np.float32),
                      "observation.images.front": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                      "task": "task added by LeRobot"})
    ds.save_episode()
    ds.finalize()
    back = LeRobotDataset("local/xr0", root=root)
    assert back.meta.total_episodes == EPISODES + 1 and len(back) == (EPISODES + 1) * FRAMES
    assert int(back[len(back) - 1]["episode_index"]) == EPISODES
    return {"lerobot_read": EPISODES * FRAMES, "after_resume_episodes": back.meta.total_episodes,
            "after_resume_frames": len(back)}


def xr0(root: str) -> dict:
    from xr0.data.lerobot_v3 import LeRobotV3Dataset

    ds = LeRobotV3Dataset(root, 4)
    n = len(ds)
    assert n == (EPISODES + 1) * FRAMES  # one sample per frame
    last = ds[n - 1]
    assert last["images"]["front"].shape == (32, 32, 3) and last["instruction"] == "task added by LeRobot"
    return {"xr0_samples": n, "last_instruction": last["instruction"]}


if __name__ == "__main__":
    step, root = sys.argv[1], sys.argv[2]
    print(json.dumps({"step": step, **{"write": write, "lerobot": lerobot, "xr0": xr0}[step](root)}))
