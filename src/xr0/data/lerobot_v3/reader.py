"""LeRobotV3Dataset: chunked samples from a LeRobotDataset v3.0 tree; torch-free, indexable, picklable."""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xr0.data import DataError, EpisodeIndex, Skipped, chunk_window
from xr0.data.integrity import Digests
from xr0.data.video import KEEP_DECODED_MAX_BYTES, FrameCache, VideoProbe, cached_frame, check_video_range, probe_video

from .layout import (ACTION_KEY, ENV_STATE_KEY, ENV_STATE_KEYS, IMAGE_PREFIX, INFO_PATH, STATE_KEY, TASKS_PATH,
                     camera_key)
from .parquet import _matrix

@dataclass
class _Episode:
    index: int
    length: int
    state: np.ndarray  # (N, Ds) float32
    actions: np.ndarray  # (N, Da) float32
    task_index: np.ndarray  # (N,) int64
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)  # key -> (mp4, from_timestamp)
    images: dict[str, np.ndarray] = field(default_factory=dict)  # image-dtype camera -> (N,) encoded bytes
    env_state: np.ndarray | None = None  # (N, De) float32, when the dataset has ENV_STATE_KEY


def _image_keys(feats: dict) -> list[str]:
    """Cameras stored as images in the data parquet (LeRobot's dtype "image")."""
    return [k for k, f in feats.items() if k.startswith(IMAGE_PREFIX) and isinstance(f, dict)
            and f.get("dtype") == "image"]


def _image_bytes(column: pa.ChunkedArray, key: str) -> np.ndarray:
    """An image column (struct {bytes, path}, as LeRobot writes it, or plain binary) -> (N,) object array of bytes."""
    arr = column.combine_chunks()
    if pa.types.is_struct(arr.type):
        if arr.type.get_field_index("bytes") < 0:
            raise ValueError(f"column {key} is a struct without a 'bytes' field: {arr.type}")
        arr = arr.field("bytes")
    if not (pa.types.is_binary(arr.type) or pa.types.is_large_binary(arr.type)):
        raise ValueError(f"column {key} has type {arr.type}, expected image bytes")
    return np.array(arr.to_pylist(), dtype=object)


def _shape_ok(feature, ndim: int) -> bool:
    shape = feature.get("shape") if isinstance(feature, dict) else None
    return (isinstance(shape, list) and len(shape) == ndim
            and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape))


class LeRobotV3Dataset(EpisodeIndex):
    """Chunked samples from a LeRobotDataset v3.0 tree; torch-free, indexable, picklable.

    Every frame with at least one valid action starts a sample (a chunk of `chunk_len` actions,
    padded past the episode end by repeating the last one, `action_valid` False there). Low-dim
    data is loaded and checked once at construction; video headers are probed then and frames are
    decoded lazily through a small per-episode LRU with read-ahead, so sequential and random access
    are both cheap. A stream whose header is fine but whose frames are damaged is only found when
    decoded: pass `verify_videos=True` to decode (without RGB conversion) every episode up front,
    otherwise such a frame raises DataError at access time, skip_bad or not.

    Datasets written by xr0 carry the SHA-256 of every file (xr0.data.integrity): info.json's own content is
    checked at open, each data/metadata file before it is read, each MP4 on the first frame read from it (or at
    open with `verify_videos=True`); a mismatch is bad data like any other. Datasets without digests (written
    by LeRobot) are read unchecked.

    `cameras` takes short names ("front") or full keys ("observation.images.front"); images come
    back under the short name.

    `keep_decoded` keeps every decoded frame in memory, decoding each episode whole on first use, so
    a random-access trainer decodes each video once instead of once per sample; None (default)
    turns it on when all frames take at most KEEP_DECODED_MAX_BYTES (`decoded_bytes`).
    """

    def __init__(self, root: str | Path, chunk_len: int, cameras: list[str] | None = None,
                 skip_bad: bool = False, *, cache_episodes: int = 8, readahead: int = 16,
                 verify_videos: bool = False, keep_decoded: bool | None = None):
        if chunk_len <= 0:
            raise ValueError(f"chunk_len must be positive, got {chunk_len}")
        self.root = Path(root)
        self.verify_videos = verify_videos
        self.chunk_len = int(chunk_len)
        self.skip_bad = skip_bad
        self.readahead = max(1, readahead)
        self.skipped: list[Skipped] = []
        self._cache = FrameCache(cache_episodes)

        self.info = self._load_info()
        self.fps = float(self.info["fps"])
        feats = self.info["features"]
        self.state_dim = int(feats[STATE_KEY]["shape"][0])
        self.action_dim = int(feats[ACTION_KEY]["shape"][0])
        self.env_state_key = next((k for k in ENV_STATE_KEYS if k in feats), None)
        self.env_state_dim = int(feats[self.env_state_key]["shape"][0]) if self.env_state_key else 0
        self.camera_keys = self._select_cameras(cameras)
        self.cameras = [k.removeprefix(IMAGE_PREFIX) for k in self.camera_keys]
        self.tasks = self._load_tasks()

        self._episodes: list[_Episode] = []
        self._load(self._load_episode_meta())
        lengths = np.array([e.length for e in self._episodes], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(lengths)])
        feats = self.info["features"]
        self.decoded_bytes = int(lengths.sum()) * sum(int(np.prod(feats[k]["shape"])) for k in self.camera_keys)
        if keep_decoded is None:
            keep_decoded = self.decoded_bytes <= KEEP_DECODED_MAX_BYTES
        self.keep_decoded = bool(keep_decoded)
        if self.keep_decoded:
            self._cache = FrameCache(None)

    # ---- metadata -------------------------------------------------------------------------

    def _load_info(self) -> dict:
        path = self.root / INFO_PATH
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: cannot read info.json (all episodes): {err}") from err
        if not isinstance(info, dict):
            raise DataError(f"{path}: expected a JSON object, got {type(info).__name__} (all episodes)")
        try:
            self.digests = Digests.from_doc(info, self.root, INFO_PATH)
        except ValueError as err:
            raise DataError(f"{path}: {err} (all episodes)") from err
        version = str(info.get("codebase_version", ""))
        if not version.startswith("v3"):
            raise DataError(f"{path}: codebase_version {version!r} is not v3.x; convert a v2.1 dataset in place with "
                            f"LeRobot's own script (in its environment, e.g. .venv-lerobot): python -m "
                            f"lerobot.scripts.convert_dataset_v21_to_v30 --repo-id=local/{self.root.name} "
                            f"--root={self.root} --push-to-hub=false")
        for key in ("fps", "features", "data_path"):
            if key not in info:
                raise DataError(f"{path}: missing field {key!r}")
        feats = info["features"]
        if not isinstance(feats, dict):
            raise DataError(f"{path}: features is {type(feats).__name__}, expected an object")
        for key in (STATE_KEY, ACTION_KEY):
            if key not in feats:
                raise DataError(f"{path}: features lack {key!r}")
        fps = info["fps"]
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise DataError(f"{path}: fps is {fps!r}, expected a positive number")
        for key in (STATE_KEY, ACTION_KEY, *ENV_STATE_KEYS):
            if key in feats and not _shape_ok(feats[key], 1):
                raise DataError(f"{path}: features[{key!r}] needs a shape [positive int], got {feats[key]!r:.80}")
        videos = [k for k, f in feats.items() if isinstance(f, dict) and f.get("dtype") == "video"]
        for key in videos + _image_keys(feats):
            if not _shape_ok(feats[key], 3) or feats[key]["shape"][2] != 3:
                raise DataError(f"{path}: features[{key!r}] needs a shape [height, width, 3], "
                                f"got {feats[key].get('shape')!r:.80}")
        templates = [("data_path", {})] + ([("video_path", {"video_key": videos[0]})] if videos else [])
        for key, extra in templates:
            try:
                info[key].format(chunk_index=0, file_index=0, **extra)
            except (AttributeError, KeyError, IndexError, ValueError) as err:
                raise DataError(f"{path}: {key} {info.get(key)!r:.80} is not a path template: {err!r}") from err
        return info

    def _verified(self, path: Path) -> str | None:
        """Why `path` fails its SHA-256 check (None: it passes, or the dataset has no digests)."""
        return self.digests.check(path) if self.digests is not None else None

    def _select_cameras(self, cameras: list[str] | None) -> list[str]:
        """Camera feature keys: MP4 streams (dtype "video") and images stored in the data parquet (dtype "image",
        what LeRobot writes with use_videos=False)."""
        feats = self.info["features"]
        have = [k for k, f in feats.items() if isinstance(f, dict) and f.get("dtype") == "video"] + _image_keys(feats)
        if cameras is None:
            return have
        keys = []
        for cam in cameras:
            key = next((k for k in (cam, IMAGE_PREFIX + cam, IMAGE_PREFIX + camera_key(cam)) if k in feats), None)
            if key is None:
                raise DataError(f"{self.root / INFO_PATH}: no camera {cam!r}; have {have}")
            if key not in have:
                raise DataError(f"{self.root / INFO_PATH}: camera {key!r} has dtype "
                                f"{feats[key].get('dtype') if isinstance(feats[key], dict) else None!r}; "
                                "cameras are video or image features")
            keys.append(key)
        return keys

    @property
    def _image_cameras(self) -> list[str]:
        return [k for k in self.camera_keys if self.info["features"][k].get("dtype") == "image"]

    def _load_tasks(self) -> dict[int, str]:
        path = self.root / TASKS_PATH
        reason = self._verified(path)
        if reason:
            raise DataError(f"{path}: {reason} (all episodes)")
        try:
            table = pq.read_table(path)
            names = table.column_names
            text_col = "task" if "task" in names else "__index_level_0__" if "__index_level_0__" in names else None
            if text_col is None or "task_index" not in names:
                raise DataError(f"{path}: expected columns 'task_index' and 'task', got {names}")
            if not pa.types.is_integer(table.schema.field("task_index").type):
                raise DataError(f"{path}: task_index has type {table.schema.field('task_index').type}, "
                                "expected int64")
            return dict(zip(table.column("task_index").to_pylist(), table.column(text_col).to_pylist(), strict=True))
        except DataError:
            raise
        except (OSError, pa.ArrowException, ValueError) as err:  # ValueError: e.g. a name that is not UTF-8
            raise DataError(f"{path}: cannot read tasks (all episodes): {err}") from err

    def _load_episode_meta(self) -> list[dict]:
        files = sorted((self.root / "meta" / "episodes").glob("*/*.parquet"))
        if not files:
            raise DataError(f"{self.root / 'meta/episodes'}: no episode metadata files")
        feats = self.info["features"]
        videos = {k for k, f in feats.items() if isinstance(f, dict) and f.get("dtype") == "video"}
        ints = ["episode_index", "length", "data/chunk_index", "data/file_index"]
        floats = []
        for key in (k for k in self.camera_keys if k in videos):
            ints += [f"videos/{key}/chunk_index", f"videos/{key}/file_index"]
            floats.append(f"videos/{key}/from_timestamp")
        rows, seen = [], {}
        for path in files:
            rel = path.relative_to(self.root).as_posix()
            reason = self._verified(path)
            if reason:
                raise DataError(f"{path}: {reason} (episodes unknown)")
            try:
                table = pq.read_table(path)
                keep = [c for c in table.column_names if not c.startswith("stats/")]
                file_rows = table.select(keep).to_pylist()
            except (OSError, pa.ArrowException, ValueError) as err:  # ValueError: a string that is not UTF-8
                raise DataError(f"{path}: cannot read episode metadata (episodes unknown): {err}") from err
            has = {c.split("/")[1] for c in table.column_names if c.startswith("videos/") and c.count("/") == 2}
            if has != videos:
                raise DataError(f"{path}: has video columns for {sorted(has)}, but {INFO_PATH} declares video "
                                f"features {sorted(videos)} (episodes unknown)")
            for row in file_rows:
                ep = row.get("episode_index")
                missing = [k for k in ints + floats if row.get(k) is None]
                if missing:
                    raise DataError(f"{path}: episode {ep}: metadata lacks {missing}")
                wrong = [k for k in ints if isinstance(row[k], bool) or not isinstance(row[k], int) or row[k] < 0]
                wrong += [k for k in floats if isinstance(row[k], bool) or not isinstance(row[k], (int, float))
                          or not math.isfinite(row[k]) or row[k] < 0]
                if wrong or row["length"] == 0:
                    raise DataError(f"{path}: episode {ep}: bad metadata values "
                                    f"{ {k: row[k] for k in wrong or ['length']} } (expected non-negative numbers, "
                                    "a positive length)")
                if ep in seen:
                    raise DataError(f"{path}: episode {ep}: listed twice (also in {seen[ep]})")
                seen[ep] = rel
                row["_meta"] = rel
                rows.append(row)
        return sorted(rows, key=lambda r: r["episode_index"])

    # ---- loading and checking -------------------------------------------------------------

    def _bad(self, episode: int, file: Path | str, reason: str) -> None:
        if not self.skip_bad:
            raise DataError(f"{file}: episode {episode}: {reason}")
        self.skipped.append(Skipped(int(episode), str(file), reason))

    def _load(self, meta: list[dict]) -> None:
        by_file: dict[tuple[int, int], list[dict]] = {}
        for row in meta:
            by_file.setdefault((row["data/chunk_index"], row["data/file_index"]), []).append(row)
        probes: dict[Path, VideoProbe | Exception] = {}
        for (chunk, file), rows in sorted(by_file.items()):
            path = self.root / self.info["data_path"].format(chunk_index=chunk, file_index=file)
            reason = self._verified(path)
            if reason is None:
                try:
                    columns = ["episode_index", "frame_index", "task_index", STATE_KEY, ACTION_KEY]
                    columns += [self.env_state_key] if self.env_state_dim else []
                    columns += self._image_cameras
                    table = pq.read_table(path, columns=columns)
                    cols = self._columns(table)
                except (OSError, pa.ArrowException, KeyError, TypeError, ValueError, IndexError) as err:
                    reason = f"cannot read data parquet: {err}"
                    if not path.is_file():
                        reason += f" (the path comes from {INFO_PATH} data_path and {rows[0]['_meta']})"
            if reason:
                for row in rows:
                    self._bad(row["episode_index"], path, reason)
                continue
            for row in rows:
                ep = self._episode(row, path, cols)
                if ep is not None and self._videos_ok(ep, row, probes):
                    self._episodes.append(ep)

    def _columns(self, table: pa.Table) -> dict[str, np.ndarray]:
        cols = {}
        for k in ("episode_index", "frame_index", "task_index"):
            col = table.column(k)
            if not pa.types.is_integer(col.type) or col.null_count:
                raise ValueError(f"column {k} has type {col.type} and {col.null_count} nulls, expected int64")
            cols[k] = col.to_numpy()
        # Rows grouped by episode once, so finding an episode's rows is a binary search.
        cols["order"] = np.argsort(cols["episode_index"], kind="stable")
        cols["sorted_ep"] = cols["episode_index"][cols["order"]]
        cols["state"], cols["state_len"] = _matrix(table.column(STATE_KEY), self.state_dim)
        cols["action"], cols["action_len"] = _matrix(table.column(ACTION_KEY), self.action_dim)
        if self.env_state_dim:
            cols["env_state"], cols["env_state_len"] = _matrix(table.column(self.env_state_key), self.env_state_dim)
        for key in self._image_cameras:
            cols[key] = _image_bytes(table.column(key), key)
        return cols

    def _episode(self, row: dict, path: Path, cols: dict[str, np.ndarray]) -> _Episode | None:
        ep, n = int(row["episode_index"]), int(row["length"])
        lo, hi = np.searchsorted(cols["sorted_ep"], [ep, ep + 1])
        rows = cols["order"][lo:hi]
        if len(rows) != n or n == 0:
            self._bad(ep, path, f"{row['_meta']} says {n} frames, the data file has {len(rows)} rows")
            return None
        rows = rows[np.argsort(cols["frame_index"][rows], kind="stable")]
        if not np.array_equal(cols["frame_index"][rows], np.arange(n)):
            self._bad(ep, path, "frame_index is not 0..length-1")
            return None
        checks = [(STATE_KEY, self.state_dim, "state"), (ACTION_KEY, self.action_dim, "action")]
        checks += [(self.env_state_key, self.env_state_dim, "env_state")] if self.env_state_dim else []
        for name, dim, key in checks:
            lengths = cols[f"{key}_len"][rows]
            if (lengths != dim).any():
                k = int(np.argmax(lengths != dim))
                self._bad(ep, path, f"wrong dimension: {name} has length {lengths[k]} at frame {k}, "
                                    f"{INFO_PATH} says {dim}")
                return None
            data = cols[key][rows]
            if not np.isfinite(data).all():
                k = int(np.argmax(~np.isfinite(data).all(1)))
                self._bad(ep, path, f"{name} has NaN/inf at frame {k}")
                return None
        task_index = cols["task_index"][rows].astype(np.int64)
        for t in np.unique(task_index):
            text = self.tasks.get(int(t))
            if not isinstance(text, str) or not text.strip():
                self._bad(ep, path, f"missing task string for task_index {int(t)} in {self.root / TASKS_PATH}")
                return None
        env_state = cols["env_state"][rows] if self.env_state_dim else None
        images = {key: cols[key][rows] for key in self._image_cameras}
        for key, blobs in images.items():
            missing = [i for i, b in enumerate(blobs) if not b]
            if missing:
                self._bad(ep, path, f"{key} has no image bytes at frame {missing[0]}")
                return None
        return _Episode(ep, n, cols["state"][rows], cols["action"][rows], task_index, env_state=env_state,
                        images=images)

    def _videos_ok(self, ep: _Episode, row: dict, probes: dict) -> bool:
        source = f"{INFO_PATH} with {row['_meta']}"
        for key in self.camera_keys:
            if key in ep.images:
                continue  # stored in the data parquet, decoded on access
            path = self.root / self.info["video_path"].format(
                video_key=key, chunk_index=row[f"videos/{key}/chunk_index"], file_index=row[f"videos/{key}/file_index"])
            if path not in probes:
                try:
                    probes[path] = probe_video(path)
                except Exception as err:  # PyAV raises several OSError/ValueError subclasses
                    probes[path] = err
            probe = probes[path]
            if isinstance(probe, Exception):
                where = "" if path.is_file() else f" (the path comes from {source})"
                self._bad(ep.index, path, f"cannot open video {key}: {probe}{where}")
                return False
            start = float(row[f"videos/{key}/from_timestamp"])
            hw = self.info["features"][key]["shape"][:2]
            reason = check_video_range(path, probe, key, start, ep.length, self.fps, hw, self.verify_videos, source)
            if reason is None and self.verify_videos:
                reason = self._verified(path)
            if reason:
                self._bad(ep.index, path, reason)
                return False
            ep.videos[key] = (path, start)
        return True

    # ---- access ---------------------------------------------------------------------------

    def lowdim(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(state, actions, action_valid) of sample i without touching video; for statistics."""
        ep, frame = self._locate(i)
        idx, valid = chunk_window(ep.length, frame, self.chunk_len)
        return ep.state[frame].copy(), ep.actions[idx], valid

    def episode_data(self) -> list[_Episode]:
        """The loaded episodes (state, actions, task index per frame), in order."""
        return list(self._episodes)

    def lowdim_block(self, indices) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """lowdim of many samples at once, vectorised per episode, for statistics (grouped by episode, not in the
        order of `indices`): (states (B, Ds), actions (B, T, Da), valid (B, T)), float64 / bool."""
        frames: dict[int, tuple[_Episode, list[int]]] = {}
        for i in indices:
            ep, frame = self._locate(int(i))
            frames.setdefault(ep.index, (ep, []))[1].append(frame)
        states, actions, valid = [], [], []
        for ep, fs in frames.values():
            idx = np.asarray(fs)[:, None] + np.arange(self.chunk_len)
            states.append(ep.state[fs])
            actions.append(ep.actions[np.minimum(idx, ep.length - 1)])
            valid.append(idx < ep.length)
        return (np.concatenate(states).astype(np.float64), np.concatenate(actions).astype(np.float64),
                np.concatenate(valid))

    def env_state(self, i: int) -> np.ndarray:
        """The environment state of sample i (datasets that record it), without touching video."""
        ep, frame = self._locate(int(i))
        if ep.env_state is None:
            raise DataError(f"{self.root}: no {ENV_STATE_KEY} (or {ENV_STATE_KEYS[1]}) in this dataset")
        return ep.env_state[frame].copy()

    def __getitem__(self, i: int) -> dict:
        ep, frame = self._locate(int(i))
        idx, valid = chunk_window(ep.length, frame, self.chunk_len)
        images = {name: self._frame(ep, key, frame) for name, key in zip(self.cameras, self.camera_keys, strict=True)}
        sample = {"images": images, "instruction": self.tasks[int(ep.task_index[frame])],
                  "state": ep.state[frame].copy(), "actions": ep.actions[idx], "action_valid": valid,
                  "episode": ep.index, "frame": frame}
        if ep.env_state is not None:
            sample["env_state"] = ep.env_state[frame].copy()
        return sample

    def _frame(self, ep: _Episode, key: str, frame: int) -> np.ndarray:
        if key in ep.images:
            return self._image(ep, key, frame)
        path, start = ep.videos[key]
        reason = self._verified(path)  # hashed on the first frame read from the file, a dict lookup after that
        if reason:
            raise DataError(f"{path}: episode {ep.index}: {reason}")
        return cached_frame(self._cache, path, (key, ep.index), start, ep.length, self.fps, frame,
                            self.readahead, ep.index, whole=self.keep_decoded)

    def _image(self, ep: _Episode, key: str, frame: int) -> np.ndarray:
        from PIL import Image

        h, w, _ = self.info["features"][key]["shape"]
        try:
            img = np.asarray(Image.open(io.BytesIO(ep.images[key][frame])).convert("RGB"))
        except Exception as err:  # PIL raises several error types for damaged data
            raise DataError(f"{self.root}: episode {ep.index} frame {frame}: {key} does not decode: {err}") from err
        if img.shape != (h, w, 3):
            raise DataError(f"{self.root}: episode {ep.index} frame {frame}: {key} is {img.shape[:2]}, "
                            f"{INFO_PATH} says {(h, w)}")
        return img
