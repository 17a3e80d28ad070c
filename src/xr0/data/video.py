"""Video I/O shared by the dataset readers and writers: encoding, probing, decoding frame ranges, and a cache of
decoded episodes (xr0.data.lerobot_v3, xr0.data.official_json)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from xr0.data import DataError

VIDEO_PRESET = "fast"  # the x264/x265 speed preset of written videos (recorded as video.preset)


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
