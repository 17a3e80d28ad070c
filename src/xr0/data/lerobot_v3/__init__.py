"""LeRobotDataset v3.0 reader and writer, written against the on-disk format (no `lerobot` import): `layout` (paths,
keys, camera names), `parquet` helpers, `stats` (LeRobot's per-feature statistics), `writer`, `reader`; video I/O is
xr0.data.video.

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

from xr0.data.video import (FPS_TOLERANCE, KEEP_DECODED_MAX_BYTES, VIDEO_PRESET, FrameCache, VideoEncoder, VideoProbe,
                            cached_frame, check_video_range, count_frames, decode_frames, probe_video)

from .layout import (ACTION_KEY, CHUNKS_SIZE, CODEBASE_VERSION, DATA_PATH, ENV_STATE_KEY, ENV_STATE_KEYS, EPISODES_PATH,
                     IMAGE_PREFIX, INFO_PATH, STATE_KEY, STATS_PATH, TASKS_PATH, VIDEO_PATH, VIEW_TITLES, camera_key,
                     match_cameras, view_title)
from .reader import LeRobotV3Dataset
from .stats import QUANTILE_BINS, QUANTILES, STAT_KEYS, _json_stats, aggregate_stats, feature_stats, histogram_quantile
from .writer import LeRobotV3Writer
