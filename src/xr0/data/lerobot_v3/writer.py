"""LeRobotV3Writer: episodes in, a LeRobotDataset v3.0 tree out (LeRobot 0.6.1's layout and statistics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xr0.data import DataError
from xr0.data.integrity import seal
from xr0.data.video import VIDEO_PRESET, VideoEncoder

from .layout import (ACTION_KEY, CHUNKS_SIZE, CODEBASE_VERSION, DATA_PATH, ENV_STATE_KEY, EPISODES_PATH, IMAGE_PREFIX,
                     INFO_PATH, STATE_KEY, STATS_PATH, TASKS_PATH, VIDEO_PATH, camera_key)
from .parquet import _fixed_list
from .stats import _json_stats, aggregate_stats, feature_stats

class LeRobotV3Writer:
    """Writes episodes as a LeRobotDataset v3.0 tree; used by tests, converters and recorders.

    `frames_per_file` caps the frames per data/video file (episodes never straddle files); None
    keeps everything in chunk-000/file-000, which is what LeRobot does for small datasets.
    Video: H.264 (libx264), `crf` quality, GOP `gop`, `pix_fmt` yuv420p (LeRobot's default).
    info.json, written last, records the SHA-256 of every other file (`xr0_integrity`, xr0.data.integrity).
    """

    def __init__(self, root: str | Path, fps: int, cameras: dict[str, tuple[int, int]], state_dim: int,
                 action_dim: int, robot_type: str = "", *, env_state_names: list[str] | None = None,
                 frames_per_file: int | None = None, codec: str = "libx264", crf: int = 18, gop: int = 2,
                 pix_fmt: str = "yuv420p"):
        self.root = Path(root)
        if (self.root / INFO_PATH).exists():
            raise FileExistsError(f"{self.root / INFO_PATH} exists; refusing to overwrite a dataset")
        if fps <= 0 or state_dim <= 0 or action_dim <= 0:
            raise ValueError(f"fps, state_dim, action_dim must be positive, got {fps}, {state_dim}, {action_dim}")
        self.fps, self.state_dim, self.action_dim = int(fps), int(state_dim), int(action_dim)
        self.env_state_names = list(env_state_names or [])  # names of ENV_STATE_KEY's dims; empty = not written
        self.cameras = {name: (int(h), int(w)) for name, (h, w) in cameras.items()}
        self.robot_type = robot_type
        self.frames_per_file = frames_per_file
        self._video_opts = {"codec": codec, "crf": crf, "gop": gop, "pix_fmt": pix_fmt}
        self._tasks: dict[str, int] = {}
        self._episodes: list[dict] = []
        self._chunk = self._file = 0
        self._file_frames = 0
        self._rows: list[dict[str, np.ndarray]] = []
        self._encoders: dict[str, VideoEncoder] = {}
        self._written: list[str] = []  # data and video files, relative to root, for the digest manifest
        self._total = 0
        self._closed = False
        self._stats: list[dict[str, dict]] = []  # per episode: feature -> feature_stats, in info.json's feature order

    def __enter__(self) -> LeRobotV3Writer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @staticmethod
    def video_key(camera: str) -> str:
        """observation.images.<snake_case name>, as LeRobot names cameras ("Base View" -> base_view); xr0 turns
        such a name back into the view title of the prompt (view_title)."""
        return IMAGE_PREFIX + camera_key(camera)

    def add_episode(self, images: dict[str, np.ndarray], states: np.ndarray, actions: np.ndarray,
                    task: str, env_states: np.ndarray | None = None) -> int:
        """Append one episode; returns its episode_index. Bad input raises DataError naming the field.

        `env_states` (n, len(env_state_names)) is required exactly when the writer has env_state_names."""
        if self._closed:
            raise RuntimeError(f"{self.root}: writer is closed")
        ep = len(self._episodes)
        states, actions = np.asarray(states), np.asarray(actions)
        n = len(states)
        self._check_episode(ep, images, states, actions, task, n)
        self._check_env_states(ep, env_states, n)

        if self.frames_per_file and self._file_frames and self._file_frames + n > self.frames_per_file:
            self._roll_file()
        if task not in self._tasks:
            self._tasks[task] = len(self._tasks)

        row = {"episode_index": ep, "tasks": [task], "length": n,
               "data/chunk_index": self._chunk, "data/file_index": self._file,
               "dataset_from_index": self._total, "dataset_to_index": self._total + n}
        for name, (h, w) in self.cameras.items():
            key = self.video_key(name)
            enc = self._encoders.get(key)
            if enc is None:
                rel = VIDEO_PATH.format(video_key=key, chunk_index=self._chunk, file_index=self._file)
                enc = self._encoders[key] = VideoEncoder(self.root / rel, self.fps, h, w, **self._video_opts)
                self._written.append(rel)
            row[f"videos/{key}/chunk_index"] = self._chunk
            row[f"videos/{key}/file_index"] = self._file
            row[f"videos/{key}/from_timestamp"] = enc.frames / self.fps
            enc.write(images[name])
            row[f"videos/{key}/to_timestamp"] = enc.frames / self.fps
        frames = np.arange(n)
        columns = {
            STATE_KEY: states.astype(np.float32), ACTION_KEY: actions.astype(np.float32),
            **({ENV_STATE_KEY: np.asarray(env_states, np.float32)} if self.env_state_names else {}),
            "timestamp": (frames / self.fps).astype(np.float32), "frame_index": frames,
            "episode_index": np.full(n, ep), "index": self._total + frames,
            "task_index": np.full(n, self._tasks[task]),
        }
        stats = {self.video_key(name): feature_stats(images[name], image=True) for name in self.cameras}
        stats.update({key: feature_stats(values) for key, values in columns.items()})
        for feature, values in stats.items():
            for stat, value in values.items():
                row[f"stats/{feature}/{stat}"] = (value.astype(int) if stat == "count" else value.astype(float)).tolist()
        self._stats.append(stats)
        row["meta/episodes/chunk_index"] = 0
        row["meta/episodes/file_index"] = 0
        self._episodes.append(row)

        self._rows.append(columns)
        self._total += n
        self._file_frames += n
        return ep

    def _check_episode(self, ep, images, states, actions, task, n) -> None:
        where = f"{self.root}: episode {ep}"
        if not isinstance(task, str) or not task.strip():
            raise DataError(f"{where}: task must be a non-empty string, got {task!r}")
        if n == 0:
            raise DataError(f"{where}: episode has no frames")
        if states.shape != (n, self.state_dim):
            raise DataError(f"{where}: states shape {states.shape}, expected ({n}, {self.state_dim})")
        if actions.shape != (n, self.action_dim):
            raise DataError(f"{where}: actions shape {actions.shape}, expected ({n}, {self.action_dim})")
        for name, data in (("states", states), ("actions", actions)):
            if not np.isfinite(data).all():
                raise DataError(f"{where}: {name} contain NaN/inf")
        if set(images) != set(self.cameras):
            raise DataError(f"{where}: cameras {sorted(images)}, expected {sorted(self.cameras)}")
        for name, (h, w) in self.cameras.items():
            img = images[name]
            if img.dtype != np.uint8 or img.shape != (n, h, w, 3):
                raise DataError(f"{where}: images[{name!r}] is {img.dtype} {img.shape}, "
                                f"expected uint8 ({n}, {h}, {w}, 3)")

    def _check_env_states(self, ep, env_states, n) -> None:
        where, dim = f"{self.root}: episode {ep}", len(self.env_state_names)
        if not dim:
            if env_states is not None:
                raise DataError(f"{where}: env_states given but the writer has no env_state_names")
            return
        shape = None if env_states is None else np.shape(env_states)
        if shape != (n, dim):
            raise DataError(f"{where}: env_states shape {shape}, expected ({n}, {dim})")
        if not np.isfinite(env_states).all():
            raise DataError(f"{where}: env_states contain NaN/inf")

    def _flush_data(self) -> None:
        if not self._rows:
            return
        cols = {k: np.concatenate([r[k] for r in self._rows]) for k in self._rows[0]}
        table = pa.table({
            STATE_KEY: _fixed_list(cols[STATE_KEY]),
            ACTION_KEY: _fixed_list(cols[ACTION_KEY]),
            "timestamp": pa.array(cols["timestamp"], pa.float32()),
            "frame_index": pa.array(cols["frame_index"], pa.int64()),
            "episode_index": pa.array(cols["episode_index"], pa.int64()),
            "index": pa.array(cols["index"], pa.int64()),
            "task_index": pa.array(cols["task_index"], pa.int64()),
            **({ENV_STATE_KEY: _fixed_list(cols[ENV_STATE_KEY])} if ENV_STATE_KEY in cols else {}),
        })
        rel = DATA_PATH.format(chunk_index=self._chunk, file_index=self._file)
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        self._written.append(rel)
        self._rows = []

    def _roll_file(self) -> None:
        self._flush_data()
        for enc in self._encoders.values():
            enc.close()
        self._encoders = {}
        self._file_frames = 0
        self._file += 1
        if self._file == CHUNKS_SIZE:
            self._chunk, self._file = self._chunk + 1, 0

    def close(self) -> None:
        """Flush the last files and write meta/: episodes, tasks, stats.json, info.json (last, with every other
        file's SHA-256)."""
        if self._closed:
            return
        self._closed = True
        self._flush_data()
        for enc in self._encoders.values():
            enc.close()
        self._encoders = {}
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        self._write_episodes()
        self._write_tasks()
        stats = {key: _json_stats(aggregate_stats([ep[key] for ep in self._stats])) for key in
                 (self._stats[0] if self._stats else {})}
        (self.root / STATS_PATH).write_text(json.dumps(stats, indent=2))
        files = [*self._written, EPISODES_PATH.format(chunk_index=0, file_index=0), TASKS_PATH, STATS_PATH]
        (self.root / INFO_PATH).write_text(json.dumps(seal(self._info(), self.root, files), indent=2))

    def _write_episodes(self) -> None:
        path = self.root / EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self._episodes:
            pq.write_table(pa.table({"episode_index": pa.array([], pa.int64())}), path)
            return
        columns = {}
        for key in self._episodes[0]:
            values = [row[key] for row in self._episodes]
            if key == "tasks":
                columns[key] = pa.array(values, pa.list_(pa.string()))
            elif key.endswith("/count"):
                columns[key] = pa.array(values, pa.list_(pa.int64()))
            elif key.startswith("stats/"):  # (d,) lists, or (3, 1, 1) nested lists for a camera, as LeRobot
                kind = pa.float64()
                for _ in range(np.ndim(values[0])):
                    kind = pa.list_(kind)
                columns[key] = pa.array(values, kind)
            elif key.endswith("_timestamp"):
                columns[key] = pa.array(values, pa.float64())
            else:
                columns[key] = pa.array(values, pa.int64())
        pq.write_table(pa.table(columns), path)

    def _write_tasks(self) -> None:
        # LeRobot reads this with pandas and expects the task string as the index.
        names = list(self._tasks)
        table = pa.table({"task_index": pa.array([self._tasks[t] for t in names], pa.int64()),
                          "task": pa.array(names, pa.string())})
        columns = [{"name": name, "field_name": name, "pandas_type": pd_type, "numpy_type": np_type, "metadata": None}
                   for name, pd_type, np_type in (("task_index", "int64", "int64"), ("task", "unicode", "object"))]
        pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": columns}
        table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        pq.write_table(table, self.root / TASKS_PATH)

    def _info(self) -> dict:
        features: dict[str, dict] = {}
        for name, (h, w) in self.cameras.items():
            features[self.video_key(name)] = {
                "dtype": "video", "shape": [h, w, 3], "names": ["height", "width", "channels"],
                # LeRobot 0.6.1's keys, in its order (its encoder settings: g, crf, preset, fast_decode)
                "info": {"video.height": h, "video.width": w,
                         "video.codec": _codec_name(self._video_opts["codec"]),
                         "video.pix_fmt": self._video_opts["pix_fmt"], "video.fps": self.fps,
                         "video.channels": 3, "has_audio": False, "video.g": self._video_opts["gop"],
                         "video.crf": self._video_opts["crf"], "video.preset": VIDEO_PRESET, "video.fast_decode": 0,
                         "video.video_backend": "pyav", "video.extra_options": {}, "is_depth_map": False}}
        features[STATE_KEY] = {"dtype": "float32", "shape": [self.state_dim],
                               "names": [f"state_{i}" for i in range(self.state_dim)]}
        features[ACTION_KEY] = {"dtype": "float32", "shape": [self.action_dim],
                                "names": [f"action_{i}" for i in range(self.action_dim)]}
        if self.env_state_names:
            features[ENV_STATE_KEY] = {"dtype": "float32", "shape": [len(self.env_state_names)],
                                       "names": list(self.env_state_names)}
        features["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for key in ("frame_index", "episode_index", "index", "task_index"):
            features[key] = {"dtype": "int64", "shape": [1], "names": None}
        return {
            "codebase_version": CODEBASE_VERSION, "robot_type": self.robot_type,
            "total_episodes": len(self._episodes), "total_frames": self._total, "total_tasks": len(self._tasks),
            "chunks_size": CHUNKS_SIZE, "data_files_size_in_mb": 100, "video_files_size_in_mb": 500,
            "fps": self.fps, "splits": {"train": f"0:{len(self._episodes)}"},
            "data_path": DATA_PATH, "video_path": VIDEO_PATH if self.cameras else None,
            "features": features,
        }


def _codec_name(encoder: str) -> str:
    return {"libx264": "h264", "libx265": "hevc", "libsvtav1": "av1", "libvpx-vp9": "vp9"}.get(encoder, encoder)
