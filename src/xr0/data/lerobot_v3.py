"""LeRobotDataset v3.0 reader and writer, written against the on-disk format (no `lerobot` import).

Layout (all paths relative to the dataset root)::

    meta/info.json                                      codebase_version "v3.0", fps, features, templates
    meta/stats.json                                     per-feature mean/std/min/max/count
    meta/tasks.parquet                                  task_index <-> task string
    meta/episodes/chunk-000/file-000.parquet            one row per episode: length, tasks, row range,
                                                        data file, and per camera its file + time range
    data/chunk-XXX/file-YYY.parquet                     one row per frame, many episodes per file
    videos/<video_key>/chunk-XXX/file-YYY.mp4           one stream per camera, episodes back to back

Episodes never straddle files, so one episode's frames are one contiguous time range of one MP4.

xr0's writer also records the SHA-256 of every file it writes in info.json (`xr0_integrity`, which LeRobot
ignores); the reader checks each file against it the first time it reads the file (xr0.data.integrity).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from xr0.data import DataError, EpisodeIndex, Skipped, chunk_window
from xr0.data.integrity import Digests, seal

CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory, as in LeRobot
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
VIDEO_PRESET = "fast"  # the x264/x265 speed preset of written videos (recorded as video.preset)
STATE_KEY = "observation.state"
# Optional privileged simulator state (objects, goals) for training-only supervision (xr0.train.env_state). Not under
# `observation.`: LeRobot's policies take every observation.* feature as an input. Datasets written before read too.
ENV_STATE_KEY = "supervision.environment_state"
ENV_STATE_KEYS = (ENV_STATE_KEY, "observation.environment_state")
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."


# --------------------------------------------------------------------------------------------
# Video helpers (shared with the official-JSON reader)
# --------------------------------------------------------------------------------------------


class VideoEncoder:
    """Appends RGB frames to one MP4 stream; several episodes can follow each other in it.

    Short GOPs (LeRobot uses g=2) keep random access cheap: a seek lands at most `gop` frames early.
    yuv420p (the default, what every player and LeRobot expect) halves chroma resolution, which
    costs a few grey levels on small, saturated images; yuv444p avoids that.
    """

    def __init__(self, path: str | Path, fps: int, height: int, width: int,
                 codec: str = "libx264", crf: int = 18, gop: int = 2, pix_fmt: str = "yuv420p",
                 preset: str | None = None):
        if height % 2 or width % 2:
            raise ValueError(f"{path}: yuv420p video needs even height/width, got {height}x{width}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.height, self.width, self.fps = height, width, fps
        self.frames = 0
        self._container = av.open(str(self.path), "w")
        self._stream = self._container.add_stream(codec, rate=fps)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, pix_fmt
        options = {"crf": str(crf), "g": str(gop)}
        if codec in ("libx264", "libx265"):
            options["preset"] = preset or VIDEO_PRESET
        self._stream.options = options

    def write(self, frames: np.ndarray) -> None:
        for img in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts = self.frames
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
            self.frames += 1

    def close(self) -> None:
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()


@dataclass
class VideoProbe:
    height: int
    width: int
    duration_s: float | None
    fps: float | None = None  # the stream's average frame rate, when the container states one


def probe_video(path: str | Path) -> VideoProbe:
    """Open an MP4 and read its header only; a truncated or corrupt file raises here, cheaply."""
    with av.open(str(path)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        return VideoProbe(stream.codec_context.height, stream.codec_context.width, duration,
                          fps if fps and math.isfinite(fps) else None)


def decode_frames(path: str | Path, start_s: float, stop_s: float, keep_from_s: float,
                  fps: float) -> list[tuple[float, np.ndarray]]:
    """Decode frames with presentation time in [keep_from_s, stop_s), seeking near `start_s`.

    The seek lands on the keyframe before `start_s`; frames decoded on the way that are still
    >= keep_from_s are returned too, since they cost nothing extra and fill the cache.
    """
    eps = 0.5 / fps
    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(max(0, int(start_s / stream.time_base)), stream=stream, backward=True,
                       any_frame=False)
        for frame in container.decode(stream):
            if frame.time is None:
                continue
            if frame.time >= stop_s - eps:
                break
            if frame.time >= keep_from_s - eps:
                out.append((frame.time, frame.to_ndarray(format="rgb24")))
    return out


def count_frames(path: str | Path, start_s: float, stop_s: float, fps: float) -> int:
    """Decode (without converting to RGB) the frames in [start_s, stop_s) and count the frame slots they fill.

    A slot is a frame index round((t - start_s) * fps), as the readers assign them: a stream whose timestamps
    are damaged can hold the right number of frames and still leave a slot empty.
    """
    eps = 0.5 / fps
    slots = set()
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        container.seek(max(0, int(start_s / stream.time_base)), stream=stream, backward=True, any_frame=False)
        for frame in container.decode(stream):
            if frame.time is None or frame.time < start_s - eps:
                continue
            if frame.time >= stop_s - eps:
                break
            slots.add(int(round((frame.time - start_s) * fps)))
    return len(slots)


FPS_TOLERANCE = 0.01  # relative: a video's stated frame rate may differ this much from the metadata's


def check_video_range(path: Path, probe: VideoProbe, name: str, start_s: float, n_frames: int, fps: float,
                      expect_hw: tuple[int, int] | None, verify: bool, source: str = "the metadata") -> str | None:
    """Why an episode's time range of a probed video is unusable, or None if it is fine.

    `source` names the metadata file(s) the expectations come from: a mismatch may be their fault, not the video's.
    """
    if expect_hw is not None and (probe.height, probe.width) != tuple(expect_hw):
        return (f"wrong dimension: video {name} is {probe.height}x{probe.width}, {source} says "
                f"{expect_hw[0]}x{expect_hw[1]}")
    if probe.fps is not None and abs(probe.fps - fps) > FPS_TOLERANCE * fps:
        return f"video {name} runs at {probe.fps:g} fps, {source} says {fps:g}"
    end_s = start_s + n_frames / fps
    if probe.duration_s is not None and end_s > probe.duration_s + 0.5 / fps:
        return (f"video {name} ends at {probe.duration_s:.3f}s, episode needs {end_s:.3f}s by {source} "
                f"(truncated?)")
    if verify:
        try:
            got = count_frames(path, start_s, end_s, fps)
        except Exception as err:  # PyAV raises OSError/ValueError subclasses for corrupt streams
            return f"video {name} does not decode: {err}"
        if got != n_frames:
            return f"video {name} decodes {got} distinct frames for the episode, expected {n_frames}"
    return None


KEEP_DECODED_MAX_BYTES = 2 << 30  # decoded uint8 frames a dataset keeps in memory by default


class FrameCache:
    """LRU over (video, episode) entries, each a dict frame index -> decoded RGB frame (None: unbounded)."""

    def __init__(self, max_entries: int | None = 8):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple, dict[int, np.ndarray]] = OrderedDict()

    def get(self, key: tuple, frame: int, fill: Callable[[int, bool], dict[int, np.ndarray]]) -> np.ndarray | None:
        """Frame from the cache, calling `fill(frame, sequential)` on a miss."""
        entry = self._entries.get(key)
        if entry is None:
            entry = self._entries[key] = {}
            while self.max_entries is not None and len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        self._entries.move_to_end(key)
        if frame not in entry:
            entry.update(fill(frame, frame - 1 in entry))
        return entry.get(frame)


def cached_frame(cache: FrameCache, path: Path, key: tuple, start_s: float, n_frames: int, fps: float,
                 frame: int, readahead: int, episode: int, whole: bool = False) -> np.ndarray:
    """Frame `frame` of an episode occupying [start_s, start_s + n_frames/fps) of `path`.

    A miss decodes from the preceding keyframe through `frame`; when the previous frame is already
    cached (sequential reading) it goes on `readahead` frames further, so a sequential reader pays
    one seek per `readahead` frames and a random reader decodes no frames it will not use.
    `whole`: a miss decodes the entire episode (one pass per episode for a cache that keeps everything).
    """

    def fill(f: int, sequential: bool, all_frames: bool = whole) -> dict[int, np.ndarray]:
        if all_frames:
            f, stop = 0, n_frames
        else:
            stop = min(n_frames, f + (readahead if sequential else 1))
        try:
            decoded = decode_frames(path, start_s + f / fps, start_s + stop / fps, start_s, fps)
        except Exception as err:  # PyAV raises OSError/ValueError subclasses for corrupt streams
            raise DataError(f"{path}: episode {episode}: cannot decode frame {f}: {err}") from err
        out = {}
        for t, img in decoded:
            k = int(round((t - start_s) * fps))
            if 0 <= k < n_frames:
                out[k] = img
        return out

    img = cache.get(key, frame, fill)
    if img is None and not whole:
        # A damaged index can make the seek land past the frame; decode the episode from its start instead, the
        # way verify_videos checks it.
        img = cache.get(key, frame, lambda f, sequential: fill(f, sequential, True))
    if img is None:
        raise DataError(f"{path}: episode {episode}: frame {frame} missing from the video")
    return img


# --------------------------------------------------------------------------------------------
# Small parquet helpers
# --------------------------------------------------------------------------------------------


def _fixed_list(mat: np.ndarray) -> pa.Array:
    """(n, d) floats as fixed_size_list<float32>[d], what HF datasets writes for Sequence(length=d)."""
    mat = np.asarray(mat, dtype=np.float32)
    flat = pa.array(mat.reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, mat.shape[1])


def _matrix(column: pa.ChunkedArray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A list (or scalar) column as float32 (n, dim), plus each row's length (-1 for null rows).

    Rows whose length is not `dim` come back as NaN so the caller can name them.
    """
    col = column.combine_chunks()
    n = len(col)
    mat = np.full((n, dim), np.nan, dtype=np.float32)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) or pa.types.is_fixed_size_list(col.type):
        lengths = pc.list_value_length(col).fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
        ok = lengths == dim
        if ok.any():
            good = col if ok.all() else col.filter(pa.array(ok))
            values = good.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
            mat[ok] = values.reshape(-1, dim)
        return mat, lengths
    lengths = np.where(col.is_null().to_numpy(zero_copy_only=False), -1, 1)
    if dim == 1:
        mat[:, 0] = pc.fill_null(col.cast(pa.float32()), np.nan).to_numpy(zero_copy_only=False)
    return mat, lengths


# --------------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------------


QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot 0.6's q01 ... q99 (quantile normalisation, pi0.5's default)
STAT_KEYS = ("min", "max", "mean", "std", "count", *(f"q{round(q * 100):02d}" for q in QUANTILES))


def camera_key(name: str) -> str:
    """A camera name as a LeRobot feature key suffix: lower case, runs of other characters as one "_"."""
    key = re.sub(r"[^0-9a-z]+", "_", name.lower()).strip("_")
    if not key:
        raise ValueError(f"camera name {name!r} has no letters or digits")
    return key


def view_title(camera: str) -> str:
    """A dataset camera name -> the view title of the prompt, camera_key's way back: the official names by the
    released table ("ego" -> "Ego View"), snake_case keys word by word ("base_view" -> "Base View"), others as they
    are."""
    from .official_json import VIEW_TITLES

    if camera in VIEW_TITLES:
        return VIEW_TITLES[camera]
    return " ".join(w.capitalize() for w in camera.split("_")) if "_" in camera else camera


QUANTILE_BINS = 5000  # LeRobot 0.6 estimates quantiles from a histogram of this many bins per channel


def histogram_quantile(x: np.ndarray, q: float, bins: int = QUANTILE_BINS) -> np.ndarray:
    """LeRobot 0.6's quantile estimate of each column of x (n, c) from one episode: a histogram of `bins` equal bins
    spanning [min - 1e-10, max + 1e-10], the first bin whose cumulative count reaches q * n, linear inside it."""
    out = np.empty(x.shape[1])
    target = q * len(x)
    for j in range(x.shape[1]):
        edges = np.linspace(x[:, j].min() - 1e-10, x[:, j].max() + 1e-10, bins + 1)
        cum = np.cumsum(np.histogram(x[:, j], bins=edges)[0])
        k = int(np.searchsorted(cum, target))
        if k == 0 or k >= len(cum):
            out[j] = edges[0] if k == 0 else edges[-1]
            continue
        inside = cum[k] - cum[k - 1]
        out[j] = edges[k] if inside == 0 else edges[k] + (target - cum[k - 1]) / inside * (edges[k + 1] - edges[k])
    return out


def feature_stats(values: np.ndarray, image: bool = False) -> dict[str, np.ndarray]:
    """One episode's statistics of a feature, as LeRobot 0.6 computes and stores them: per channel min, max, mean,
    std, count and the quantiles q01 ... q99 (its histogram estimate, `histogram_quantile`; a single frame: the
    mean, as LeRobot). `values`: (n, ...) for a vector feature (stats over axis 0), (n, H, W, 3) uint8 for a camera
    (per colour channel in [0, 1], shaped (3, 1, 1))."""
    x = np.asarray(values, np.float64)
    if image:
        x = x.reshape(-1, 3) / 255.0
    else:
        x = x.reshape(len(x), -1)
    out = {"min": x.min(0), "max": x.max(0), "mean": x.mean(0), "std": x.std(0), "count": np.array([len(values)])}
    out.update({key: histogram_quantile(x, q) if len(x) > 1 else out["mean"].copy()
                for key, q in zip(STAT_KEYS[5:], QUANTILES)})
    if image:
        out = {k: v if k == "count" else v.reshape(3, 1, 1) for k, v in out.items()}
    return out


def aggregate_stats(episodes: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset statistics of one feature from its per-episode statistics, LeRobot's way: min of the minima, max of
    the maxima, count-weighted mean, the pooled variance, and count-weighted means of the quantiles."""
    counts = np.array([float(e["count"][0]) for e in episodes])
    w = counts.reshape(-1, *([1] * episodes[0]["mean"].ndim)) / counts.sum()
    stack = {k: np.stack([e[k] for e in episodes]) for k in STAT_KEYS if k != "count"}
    mean = (stack["mean"] * w).sum(0)
    var = ((stack["std"] ** 2 + (stack["mean"] - mean) ** 2) * w).sum(0)
    out = {"min": stack["min"].min(0), "max": stack["max"].max(0), "mean": mean, "std": np.sqrt(var),
           "count": np.array([int(counts.sum())])}
    out.update({k: (stack[k] * w).sum(0) for k in STAT_KEYS[5:]})
    return out


def _json_stats(stats: dict[str, np.ndarray]) -> dict:
    return {k: (v.astype(int) if k == "count" else v.astype(float)).tolist() for k, v in stats.items()}


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


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


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
