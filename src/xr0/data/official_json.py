"""The official XR-0 episode format (spec §6.7): one JSON plus one MP4 per camera per episode.

JSON fields read here (the released `json_dataset.py` reads the same ones)::

    num_frames        int N
    trajectory_type   "success" | "ongoing" | "invalid"   (default "success")
    instruction       {"general": [{"images": ["observations.ego", ...],
                                    "conversations": [{"from": "human", "value": <prompt>}, ...]}]}
    observations      {cam: [{"path": mp4 (relative to the JSON or absolute), "start": first video
                              frame, "end": ..., "fps": 30, "crop_bbox": null | [x0, y0, x1, y1]}]}
    proprios/actions  {"<arm>_ee_pos": (N, 3), "<arm>_ee_rotm": (N, 9) row-major,
                       "<arm>_arm_joint": (N, 6), "<arm>_gripper_pos": (N, 1)} for arm in left, right

`actions[t]` is the target for frame t. A chunk anchored at frame t is expressed relative to the
anchor pose (R_t, p_t) for every one of its T steps (not incrementally):
position R_tᵀ(p − p_t), rotation axis-angle(R_tᵀ R), gripper and joints target − current.

Choices where the release is silent or inconsistent (documented, [INF]):
- the task is the human prompt's text after "Generate robot actions for the task:" (first prompt);
- `trajectory_type == "invalid"` masks every action (what the docs say; the released code
  returns an all-ones mask instead);
- `crop_bbox` is read as pixel [x0, y0, x1, y1].
"""

from __future__ import annotations

import collections
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xr0.config import PADDED_DIM
from xr0.rotations import matrix_to_axis_angle
from xr0.data import DataError, EpisodeIndex, Skipped, chunk_window
from xr0.data.integrity import Digests, seal
from xr0.data.lerobot_v3.layout import VIEW_TITLES
from xr0.data.video import FrameCache, VideoEncoder, cached_frame, check_video_range, probe_video

ACTION_DIM = STATE_DIM = PADDED_DIM
ARMS = ("left", "right")
FIELDS = {"ee_pos": 3, "ee_rotm": 9, "arm_joint": 6, "gripper_pos": 1}

# The 32-D action layout of §6.7; dims 13 and 27-31 are reserved.
ACTION_LAYOUT: dict[str, slice] = {
    "left_ee_pos": slice(0, 3), "left_ee_aa": slice(3, 6), "left_gripper": slice(6, 7), "left_joint": slice(7, 13),
    "right_ee_pos": slice(14, 17), "right_ee_aa": slice(17, 20), "right_gripper": slice(20, 21),
    "right_joint": slice(21, 27),
}
# The state holds only grippers and joints, raw (not normalised); the end-effector pose is not in it.
STATE_LAYOUT: dict[str, slice] = {k: v for k, v in ACTION_LAYOUT.items() if k.endswith(("gripper", "joint"))}
ACTIVE_DIMS = np.zeros(ACTION_DIM, dtype=bool)
for _slc in ACTION_LAYOUT.values():
    ACTIVE_DIMS[_slc] = True

TASK_MARKER = "Generate robot actions for the task:"
TRAJECTORY_TYPES = ("success", "ongoing", "invalid")


# --------------------------------------------------------------------------------------------
# Chunk-anchored relative actions (rotations: xr0.rotations)
# --------------------------------------------------------------------------------------------


def relative_chunk(proprios: dict[str, np.ndarray], actions: dict[str, np.ndarray], anchor: int,
                   targets: np.ndarray) -> np.ndarray:
    """(T, 32) chunk of action targets at frames `targets`, relative to the proprio at `anchor`."""
    out = np.zeros((len(targets), ACTION_DIM), dtype=np.float64)
    for arm in ARMS:
        rot = np.asarray(proprios[f"{arm}_ee_rotm"][anchor], np.float64).reshape(3, 3)
        pos = np.asarray(proprios[f"{arm}_ee_pos"][anchor], np.float64)
        t_pos = np.asarray(actions[f"{arm}_ee_pos"][targets], np.float64)
        t_rot = np.asarray(actions[f"{arm}_ee_rotm"][targets], np.float64).reshape(-1, 3, 3)
        out[:, ACTION_LAYOUT[f"{arm}_ee_pos"]] = (t_pos - pos) @ rot  # row form of R_tᵀ (p − p_t)
        out[:, ACTION_LAYOUT[f"{arm}_ee_aa"]] = matrix_to_axis_angle(rot.T @ t_rot)
        for name, key in (("gripper", "gripper_pos"), ("joint", "arm_joint")):
            cur = np.asarray(proprios[f"{arm}_{key}"][anchor], np.float64)
            out[:, ACTION_LAYOUT[f"{arm}_{name}"]] = np.asarray(actions[f"{arm}_{key}"][targets], np.float64) - cur
    return out.astype(np.float32)


def state_vector(proprios: dict[str, np.ndarray], frame: int) -> np.ndarray:
    """(32,) raw state: grippers at dims 6/20, joints at 7-12/21-26, zeros elsewhere."""
    state = np.zeros(STATE_DIM, dtype=np.float32)
    for arm in ARMS:
        state[STATE_LAYOUT[f"{arm}_gripper"]] = proprios[f"{arm}_gripper_pos"][frame]
        state[STATE_LAYOUT[f"{arm}_joint"]] = proprios[f"{arm}_arm_joint"][frame]
    return state


# --------------------------------------------------------------------------------------------
# Writer (tests, converters)
# --------------------------------------------------------------------------------------------


def write_official_episode(json_path: str | Path, images: dict[str, np.ndarray], proprios: dict[str, np.ndarray],
                           actions: dict[str, np.ndarray], task: str, trajectory_type: str = "success",
                           fps: int = 30, crf: int = 18) -> Path:
    """Write one episode: `<stem>.json` and `<stem>_<cam>.mp4` beside it (paths stored relative).

    The JSON records the SHA-256 of its MP4s and of its own content (`xr0_integrity`, xr0.data.integrity), which
    OfficialJsonDataset checks; readers of the official format ignore the extra key."""
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    n = len(next(iter(images.values())))
    observations = {}
    for cam, frames in images.items():
        mp4 = json_path.with_name(f"{json_path.stem}_{cam}.mp4")
        enc = VideoEncoder(mp4, fps, frames.shape[1], frames.shape[2], crf=crf)
        enc.write(frames)
        enc.close()
        observations[cam] = [{"path": mp4.name, "start": 0, "end": n, "fps": fps, "crop_bbox": None}]
    views = "".join(f"# {VIEW_TITLES.get(cam, cam + ' View')}\n<image>\n" for cam in images)
    prompt = f"The following observations are captured from multiple views.\n{views}{TASK_MARKER}\n{task}"
    doc = {
        "trajectory_type": trajectory_type,
        "time": json_path.stem,
        "num_frames": n,
        "instruction": {"general": [{"images": [f"observations.{cam}" for cam in images],
                                     "conversations": [{"from": "human", "value": prompt},
                                                       {"from": "gpt", "value": "<cot></cot>"}]}]},
        "observations": observations,
        "proprios": {k: np.asarray(v).tolist() for k, v in proprios.items()},
        "actions": {k: np.asarray(v).tolist() for k, v in actions.items()},
    }
    json_path.write_text(json.dumps(seal(doc, json_path.parent, [obs[0]["path"] for obs in observations.values()])))
    return json_path


# --------------------------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------------------------


@dataclass
class _Episode:
    index: int
    path: Path
    length: int
    task: str
    invalid: bool
    proprios: dict[str, np.ndarray]
    actions: dict[str, np.ndarray]
    # cam -> (mp4, start time in seconds, fps, crop box or None)
    videos: dict[str, tuple[Path, float, float, list | None]] = field(default_factory=dict)
    digests: Digests | None = None  # the MP4s' SHA-256, in episodes written by xr0


def _crop_ok(crop, height: int, width: int) -> bool:
    if not isinstance(crop, list) or len(crop) != 4:
        return False
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in crop):
        return False
    x0, y0, x1, y1 = (int(v) for v in crop)
    return 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height


def _task_from_prompt(doc: dict) -> str | None:
    try:
        text = doc["instruction"]["general"][0]["conversations"][0]["value"]
    except (KeyError, IndexError, TypeError):
        return None
    if not isinstance(text, str):
        return None
    text = text.split(TASK_MARKER, 1)[1] if TASK_MARKER in text else text.replace("<image>", "")
    return text.removesuffix(" /no_cot").strip() or None


def _field(doc: dict, group: str, key: str, n: int, dim: int) -> tuple[np.ndarray | None, str | None]:
    """doc[group][key] as finite float64 (n, dim), or a reason naming the field and the bad frame."""
    fields = doc.get(group)
    rows = fields.get(key) if isinstance(fields, dict) else None
    if not isinstance(rows, list):
        return None, f"{group}.{key} is missing"
    if len(rows) != n:
        return None, f"{group}.{key} has {len(rows)} frames, num_frames is {n}"
    if dim == 1:  # grippers are sometimes stored as bare numbers
        rows = [[r] if isinstance(r, (int, float)) else r for r in rows]
    for k, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != dim:
            got = len(row) if isinstance(row, list) else type(row).__name__
            return None, f"wrong dimension: {group}.{key} has length {got} at frame {k}, expected {dim}"
    try:
        value = np.asarray(rows, dtype=np.float64)
    except (TypeError, ValueError) as err:
        return None, f"{group}.{key} is not numeric: {err}"
    bad = ~np.isfinite(value).all(1)
    if key.endswith("ee_rotm"):
        r = value.reshape(n, 3, 3)
        with np.errstate(invalid="ignore"):
            off = np.abs(r @ r.transpose(0, 2, 1) - np.eye(3)).max(axis=(1, 2))
            bad_rot = (off > 1e-2) | (np.linalg.det(r) < 0)
        if (bad_rot & ~bad).any():
            return None, f"{group}.{key} at frame {int(np.argmax(bad_rot & ~bad))} is not a rotation matrix"
    if bad.any():
        return None, f"{group}.{key} has NaN/inf at frame {int(np.argmax(bad))}"
    return value, None


class OfficialJsonDataset(EpisodeIndex):
    """Chunked samples from official XR-0 JSON episodes; the same sample dict as LeRobotV3Dataset.

    `root` is a directory (searched recursively for *.json, sorted) or a list of JSON files; the
    episode number is the position in that sorted list. `actions` are (T, 32) in the §6.7 layout,
    `state` is (32,). `full_chunks_only=True` restricts start frames to 0..N−T like the release.
    `verify_videos`, caching and read-ahead behave as in LeRobotV3Dataset. Episodes written by xr0 carry
    SHA-256 digests (xr0.data.integrity): the JSON's content is checked at open, each MP4 on its first frame
    read (at open with `verify_videos=True`). Without `cameras`, every episode must have the same cameras.
    """

    def __init__(self, root: str | Path | list, chunk_len: int, cameras: list[str] | None = None,
                 skip_bad: bool = False, *, full_chunks_only: bool = False, cache_episodes: int = 8,
                 readahead: int = 16, verify_videos: bool = False):
        if chunk_len <= 0:
            raise ValueError(f"chunk_len must be positive, got {chunk_len}")
        self.verify_videos = verify_videos
        self.chunk_len = int(chunk_len)
        self.skip_bad = skip_bad
        self.full_chunks_only = full_chunks_only
        self.readahead = max(1, readahead)
        self.skipped: list[Skipped] = []
        self._cache = FrameCache(cache_episodes)
        if isinstance(root, (list, tuple)):
            files = sorted(Path(p) for p in root)
        else:
            files = sorted(Path(root).rglob("*.json"))
        if not files:
            raise DataError(f"{root}: no episode JSON files")
        self.files = files
        self.cameras = list(cameras) if cameras is not None else None
        self._episodes: list[_Episode] = []
        for i, path in enumerate(files):
            ep = self._load(i, path)
            if ep is not None:
                self._episodes.append(ep)
        if self.cameras is None:
            self._same_cameras()
        counts = [self._n_starts(e.length) for e in self._episodes]
        self._offsets = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])

    def _n_starts(self, n: int) -> int:
        return max(0, n - self.chunk_len + 1) if self.full_chunks_only else n

    def _bad(self, episode: int, file: Path, reason: str) -> None:
        if Path(file) != self.files[episode]:  # a video: name the episode's JSON too, its metadata may be at fault
            reason = f"{reason} (episode file {self.files[episode].name})"
        if not self.skip_bad:
            raise DataError(f"{file}: episode {episode}: {reason}")
        self.skipped.append(Skipped(episode, str(file), reason))

    def _same_cameras(self) -> None:
        """Without `cameras`, every episode must have the cameras most episodes have (first seen wins a tie)."""
        sets = collections.Counter(frozenset(ep.videos) for ep in self._episodes)
        if len(sets) <= 1:
            return
        common = sets.most_common(1)[0][0]
        kept = []
        for ep in self._episodes:
            if frozenset(ep.videos) == common:
                kept.append(ep)
            else:
                self._bad(ep.index, ep.path, f"cameras {sorted(ep.videos)} differ from the {sorted(common)} of the "
                                             "other episodes (pass cameras= to read a subset)")
        self._episodes = kept

    def _load(self, i: int, path: Path) -> _Episode | None:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            self._bad(i, path, f"cannot read episode JSON: {err!r}")
            return None
        if not isinstance(doc, dict):
            self._bad(i, path, f"expected a JSON object, got {type(doc).__name__}")
            return None
        try:
            digests = Digests.from_doc(doc, path.parent, path.name)
        except ValueError as err:
            self._bad(i, path, str(err))
            return None
        n = doc.get("num_frames")
        if isinstance(n, float) and n.is_integer():
            n = int(n)
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            self._bad(i, path, f"num_frames is {n!r:.40}, expected a positive integer")
            return None
        kind = doc.get("trajectory_type", "success")
        if kind not in TRAJECTORY_TYPES:
            self._bad(i, path, f"trajectory_type {kind!r:.40} not in {TRAJECTORY_TYPES}")
            return None
        task = _task_from_prompt(doc)
        if task is None:
            self._bad(i, path, "missing task string (instruction.general[0].conversations[0].value)")
            return None
        arrays: dict[str, dict[str, np.ndarray]] = {"proprios": {}, "actions": {}}
        for group, arm, (name, dim) in itertools.product(arrays, ARMS, FIELDS.items()):
            value, reason = _field(doc, group, f"{arm}_{name}", n, dim)
            if reason:
                self._bad(i, path, reason)
                return None
            arrays[group][f"{arm}_{name}"] = value
        ep = _Episode(i, path, n, task, kind == "invalid", arrays["proprios"], arrays["actions"], digests=digests)
        observations = doc.get("observations")
        if observations is None:
            observations = {}
        if not isinstance(observations, dict):
            self._bad(i, path, f"observations is {type(observations).__name__}, expected an object")
            return None
        cams = self.cameras if self.cameras is not None else list(observations)
        for cam in cams:
            if not self._video(ep, cam, observations.get(cam)):
                return None
        return ep

    def _video(self, ep: _Episode, cam: str, infos) -> bool:
        info = infos[0] if isinstance(infos, list) and infos else None
        if not isinstance(info, dict) or not isinstance(info.get("path"), str) or not info["path"]:
            self._bad(ep.index, ep.path, f"observations.{cam} missing or has no video path")
            return False
        mp4 = Path(info["path"])
        mp4 = mp4 if mp4.is_absolute() else ep.path.parent / mp4
        fps, start, crop = info.get("fps") or 30, info.get("start") or 0, info.get("crop_bbox")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            self._bad(ep.index, ep.path, f"observations.{cam}.fps is {fps!r:.40}, expected a positive number")
            return False
        if isinstance(start, float) and start.is_integer():
            start = int(start)
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            self._bad(ep.index, ep.path, f"observations.{cam}.start is {start!r:.40}, expected a frame number")
            return False
        try:
            probe = probe_video(mp4)
        except Exception as err:  # PyAV raises several OSError/ValueError subclasses
            self._bad(ep.index, mp4, f"cannot open video {cam}: {err}")
            return False
        if crop is not None and not _crop_ok(crop, probe.height, probe.width):
            self._bad(ep.index, ep.path, f"observations.{cam}.crop_bbox {crop!r:.60} is not [x0, y0, x1, y1] inside "
                                         f"the {probe.width}x{probe.height} video")
            return False
        reason = check_video_range(mp4, probe, cam, start / fps, ep.length, fps, None, self.verify_videos,
                                   ep.path.name)
        if reason is None and self.verify_videos and ep.digests is not None:
            reason = ep.digests.check(mp4)
        if reason:
            self._bad(ep.index, mp4, reason)
            return False
        ep.videos[cam] = (mp4, start / fps, float(fps), crop)
        return True

    # ---- access ---------------------------------------------------------------------------

    def lowdim(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(state, actions, action_valid) of sample i without touching video; for statistics."""
        ep, frame = self._locate(i)
        idx, valid = chunk_window(ep.length, frame, self.chunk_len)
        if ep.invalid:
            valid = np.zeros_like(valid)
        return state_vector(ep.proprios, frame), relative_chunk(ep.proprios, ep.actions, frame, idx), valid

    def __getitem__(self, i: int) -> dict:
        ep, frame = self._locate(int(i))
        state, actions, valid = self.lowdim(int(i))
        return {"images": {cam: self._frame(ep, cam, frame) for cam in ep.videos}, "instruction": ep.task,
                "state": state, "actions": actions, "action_valid": valid, "episode": ep.index, "frame": frame}

    def _frame(self, ep: _Episode, cam: str, frame: int) -> np.ndarray:
        path, start_s, fps, crop = ep.videos[cam]
        reason = ep.digests.check(path) if ep.digests is not None else None  # hashed once, on the first frame
        if reason:
            raise DataError(f"{path}: episode {ep.index} ({ep.path.name}): {reason}")
        img = cached_frame(self._cache, path, (cam, ep.index), start_s, ep.length, fps, frame, self.readahead, ep.index)
        if crop:
            x0, y0, x1, y1 = (int(v) for v in crop)
            img = img[y0:y1, x0:x1]
        return img
