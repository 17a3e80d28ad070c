"""Record what LeRobot 0.6.1 itself writes (run in make test-lerobot's venv, which has LeRobot):

    .venv-lerobot/bin/python tests/lerobot/record_schema.py tests/fixtures/lerobot_0_6_1_schema.json

A 2-episode dataset with observation.state (4), action (3) and one 32x32 video camera at 10 fps, written through
LeRobotDataset.create / add_frame / save_episode / finalize; the file keeps its info.json keys, the video info keys,
the stats.json keys per feature, the meta/episodes parquet schema and the data columns. tests/test_data.py holds
xr0's writer to it without LeRobot installed.
"""

import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from lerobot.datasets.lerobot_dataset import LeRobotDataset

FEATURES = {
    "observation.state": {"dtype": "float32", "shape": (4,), "names": None},
    "action": {"dtype": "float32", "shape": (3,), "names": None},
    "observation.images.front": {"dtype": "video", "shape": (32, 32, 3), "names": ["height", "width", "channels"]},
}


def main(out: str) -> None:
    root = Path(tempfile.mkdtemp()) / "probe"
    ds = LeRobotDataset.create("local/probe", fps=10, features=FEATURES, root=root, robot_type="toy", use_videos=True)
    rng = np.random.default_rng(0)
    for ep in range(2):
        for _ in range(12):
            ds.add_frame({"observation.state": rng.normal(size=4).astype(np.float32),
                          "action": rng.normal(size=3).astype(np.float32),
                          "observation.images.front": rng.integers(0, 255, (32, 32, 3), dtype=np.uint8),
                          "task": f"task {ep}"})
        ds.save_episode()
    ds.finalize()
    info = json.loads((root / "meta/info.json").read_text())
    stats = json.loads((root / "meta/stats.json").read_text())
    episodes = pq.read_table(next((root / "meta/episodes").rglob("*.parquet")))
    data = pq.read_table(next((root / "data").rglob("*.parquet")))
    record = {"lerobot": "0.6.1", "how": "tests/lerobot/record_schema.py with LeRobot 0.6.1",
              "info_keys": sorted(info), "video_info_keys": list(info["features"]["observation.images.front"]["info"]),
              "stats_keys": {k: sorted(v) for k, v in stats.items()},
              "episodes_schema": {f.name: str(f.type) for f in episodes.schema}, "data_columns": data.column_names}
    Path(out).write_text(json.dumps(record, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1])
