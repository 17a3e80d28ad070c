"""LeRobotDataset v3.0's on-disk names: file path templates, feature keys, camera keys and the prompt's view titles,
and how cameras are matched to a model's view titles (`match_cameras`)."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence



CODEBASE_VERSION = "v3.0"
CHUNKS_SIZE = 1000  # files per chunk directory, as in LeRobot
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
TASKS_PATH = "meta/tasks.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
STATE_KEY = "observation.state"
# Optional privileged simulator state (objects, goals) for training-only supervision (xr0.train.env_state). Not under
# `observation.`: LeRobot's policies take every observation.* feature as an input. Datasets written before read too.
ENV_STATE_KEY = "supervision.environment_state"
ENV_STATE_KEYS = (ENV_STATE_KEY, "observation.environment_state")
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."

# Official camera names -> the prompt's view titles (the official JSON layout; others: "base_view" -> "Base View")
VIEW_TITLES = {"ego": "Ego View", "wrist_left": "Left-Wrist View", "wrist_right": "Right-Wrist View"}


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
    if camera in VIEW_TITLES:
        return VIEW_TITLES[camera]
    return " ".join(w.capitalize() for w in camera.split("_")) if "_" in camera else camera


_WARNED: set[tuple] = set()  # (given, wanted) pairs already mapped by position with a warning in this process


def match_cameras(given: Sequence[str], wanted: Sequence[str], title: Callable[[str], str] = view_title,
                  source: str = "the inputs", hint: str = "", warn: bool = True) -> dict[str, str]:
    """Cameras `given` (a dataset's, a LeRobot batch's image keys, a simulator's) -> the `wanted` view titles (the
    model's cameras), the one rule training, `xr0 eval metaworld` and the LeRobot plugin share:

    - by view title (`title`, default `view_title`) when every wanted title is among the given cameras' (given
      cameras with other titles are left out);
    - else by position when the counts match, said as a warning naming the pairs (once per process and pair of
      lists; `warn=False` where the order was chosen on purpose, e.g. `--cameras`);
    - else a ValueError naming both lists; also when two given cameras have the same wanted title.

    The result keeps the order of `given`. `source` names the given cameras in messages; `hint` ends them (e.g. the
    option that chooses the cameras).
    """
    given, wanted = list(given), list(wanted)
    titles = [title(g) for g in given]
    tail = f"; {hint}" if hint else ""
    if set(wanted) <= set(titles):
        twice = sorted({t for t in titles if t in wanted and titles.count(t) > 1})
        if twice:
            raise ValueError(f"the cameras of {source}, {given}, give the view title(s) {twice} more than once{tail}")
        return {g: t for g, t in zip(given, titles) if t in wanted}
    if len(given) == len(wanted):
        pairs = dict(zip(given, wanted))
        key = (tuple(given), tuple(wanted))
        if warn and key not in _WARNED:
            _WARNED.add(key)
            logging.getLogger(__name__).warning(
            "the view titles %s of the cameras of %s are not the model's %s: mapping them by position, %s%s", titles,
                source, wanted, ", ".join(f"{g!r} -> {w!r}" for g, w in pairs.items()), tail)
        return pairs
    raise ValueError(f"the cameras of {source}, {given} (view titles {titles}), match the model's {wanted} neither "
                     f"by view title nor in number{tail}")
