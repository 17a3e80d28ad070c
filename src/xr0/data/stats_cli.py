"""`xr0 data stats DATASET --chunk-len T[,T...]`: a LeRobot dataset's statistics, computed once and written beside it.

- `meta/stats.json`: `observation.state` and `action` recomputed in LeRobot 0.6's layout (min, max, mean, std,
  count, q01 ... q99 per episode, aggregated LeRobot's way); the other features' entries (cameras) are kept.
- `meta/xr0_chunk_stats.json`: xr0's per-timestep chunk statistics for each chunk length, which `xr0 train` reads
  instead of recomputing them (when they still cover the dataset as it is).
"""

from __future__ import annotations

import json
import pathlib
import sys
import time


from ..checkpoints import atomic_write
from .lerobot_v3 import ACTION_KEY, STATE_KEY, STATS_PATH, LeRobotV3Dataset, _json_stats, aggregate_stats, feature_stats
from .stats import CHUNK_STATS, compute_stats, write_chunk_stats


def write_stats(root: str | pathlib.Path, chunk_lens: list[int]) -> dict:
    root = pathlib.Path(root)
    t0 = time.perf_counter()
    data = LeRobotV3Dataset(root, chunk_lens[0])
    episodes = data.episode_data()
    per_episode = [(feature_stats(ep.state), feature_stats(ep.actions)) for ep in episodes]
    file = root / STATS_PATH
    table = json.loads(file.read_text()) if file.is_file() else {}
    table[STATE_KEY] = _json_stats(aggregate_stats([s for s, _ in per_episode]))
    table[ACTION_KEY] = _json_stats(aggregate_stats([a for _, a in per_episode]))
    atomic_write(file, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(table, indent=2)))
    summary = {"dataset": str(root), "episodes": len(episodes), "frames": int(sum(ep.length for ep in episodes)),
               "stats": str(file), "chunk_stats": str(root / CHUNK_STATS), "chunk_lens": {}}
    for T in chunk_lens:
        ds = data if T == chunk_lens[0] else LeRobotV3Dataset(root, T)
        stats = compute_stats(ds)
        write_chunk_stats(root, T, stats)
        summary["chunk_lens"][str(T)] = {"samples": stats.n_samples}
    summary["seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def add_arguments(p) -> None:
    p.add_argument("dataset", help="a LeRobotDataset v3 folder (meta/info.json)")
    p.add_argument("--chunk-len", required=True, metavar="T[,T...]",
                   help="the chunk length(s) the dataset will be trained with")


def run(args) -> int:
    try:
        lens = [int(t) for t in args.chunk_len.split(",") if t.strip()]
        if not lens or min(lens) < 1:
            raise ValueError(f"--chunk-len must be positive integers, got {args.chunk_len!r}")
        summary = write_stats(args.dataset, lens)
    except (FileNotFoundError, ValueError) as e:
        print(f"xr0 data stats: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


__all__ = ["write_stats"]
