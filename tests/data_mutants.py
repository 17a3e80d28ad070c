"""Mutation fuzzing of the dataset readers: small clean datasets, one damaged file per mutant, outcome classes.

Shared by tests/test_data_fuzz.py (a few dozen mutants) and benchmarks/fuzz_data.py (hundreds, one JSON line).

A mutant is the clean dataset with exactly one file changed: random byte flips at random offsets, a truncation at a
random length, or (JSON and parquet files) a structural edit: a deleted key/column or a value of the wrong type.
The mutated file is restored before the next mutant, so every mutant starts from the clean bytes.

Strict reading (open, then every sample) ends in one of
    refused           DataError naming the mutated file (and one of its episodes where the file holds episodes)
    identical         no error and every sample equal to the clean dataset's (the damage hit unused bytes)
    unnamed_error     DataError that does not name the file (or names an episode the file does not hold)   [bug]
    crash             any other exception: a raw traceback                                                [bug]
    silent_difference no error, but some sample differs from the clean one                                  [bug]
Reading with skip_bad=True (and verify_videos=True, which checks videos at open) ends in one of
    identical, skipped (the bad episodes skipped and listed naming the file, every other sample equal),
    refused           DataError at open naming the file, for damage to a dataset-wide file (info.json, ...)
or one of the bugs above, or
    not_skipped       DataError (at open or while reading) for damage that skip_bad should have skipped     [bug]
    wrong_skip        episodes skipped, but the records do not name the file or skip foreign episodes       [bug]
and, in either reading, hang (no answer within 60 s) is a bug too.
"""

from __future__ import annotations

import json
import shutil
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from xr0.data import DataError
from xr0.data.integrity import INTEGRITY_KEY  # what xr0's writers add; stripped for the "plain" copies
from xr0.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer
from xr0.data.official_json import OfficialJsonDataset, write_official_episode
from xr0.rotations import axis_angle_to_matrix

CHUNK_LEN = 4
FPS = 10
BUGS = ("crash", "unnamed_error", "silent_difference", "not_skipped", "wrong_skip", "hang")

# LeRobot v3: three episodes over two data/video files (episodes 0 and 1 share file-000), two cameras.
LR_LENGTHS = (8, 6, 7)
LR_CAMS = {"front": (32, 32), "wrist": (32, 48)}
LR_DS, LR_DA = 4, 3
# Official JSON: three episodes, two cameras each.
OF_LENGTHS = (8, 7, 9)
OF_CAMS = ("ego", "wrist_left")


# ------------------------------------------------------------------------------------------------------------------
# Clean datasets
# ------------------------------------------------------------------------------------------------------------------


def frames(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Smooth moving patterns (codec friendly) whose brightness changes every frame."""
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.empty((n, h, w, 3), dtype=np.uint8)
    for i in range(n):
        phase = i / 10 + seed
        r = 128 + 90 * np.sin(2 * np.pi * (xx / w + phase))
        g = 128 + 90 * np.cos(2 * np.pi * (yy / h - phase))
        b = np.full_like(r, 40 + (i * 9 + seed * 30) % 170)
        out[i] = np.stack([r, g, b], -1).round().astype(np.uint8)
    return out


def write_lerobot(root: Path) -> Path:
    with LeRobotV3Writer(root, FPS, LR_CAMS, LR_DS, LR_DA, robot_type="toy", frames_per_file=14) as w:
        for e, n in enumerate(LR_LENGTHS):
            rng = np.random.default_rng(100 + e)
            w.add_episode({c: frames(n, h, wd, e) for c, (h, wd) in LR_CAMS.items()},
                          rng.normal(size=(n, LR_DS)), rng.normal(size=(n, LR_DA)), f"task {e}")
    return root


def official_arms(rng: np.random.Generator, n: int) -> tuple[dict, dict]:
    """Random proprio and action arrays of n frames for both arms, in the official episode JSON's keys."""
    prop, act = {}, {}
    for arm in ("left", "right"):
        for d in (prop, act):
            d[f"{arm}_ee_pos"] = rng.normal(size=(n, 3))
            d[f"{arm}_ee_rotm"] = axis_angle_to_matrix(rng.normal(size=(n, 3))).reshape(n, 9)
            d[f"{arm}_arm_joint"] = rng.normal(size=(n, 6))
            d[f"{arm}_gripper_pos"] = rng.uniform(size=(n, 1))
    return prop, act


def write_official(root: Path) -> Path:
    for e, n in enumerate(OF_LENGTHS):
        prop, act = official_arms(np.random.default_rng(200 + e), n)
        images = {cam: frames(n, 32, 32, e + 5 * k) for k, cam in enumerate(OF_CAMS)}
        write_official_episode(root / f"ep{e}.json", images, prop, act, f"fold towel {e}",
                               trajectory_type="invalid" if e == 1 else "success", fps=FPS)
    return root


def strip_digests(root: Path) -> None:
    """Remove xr0's integrity key from every JSON: the dataset as LeRobot or the official release would write it."""
    for path in sorted(root.rglob("*.json")):
        doc = json.loads(path.read_text())
        if isinstance(doc, dict) and INTEGRITY_KEY in doc:
            del doc[INTEGRITY_KEY]
            path.write_text(json.dumps(doc, indent=2 if path.name in ("info.json", "stats.json") else None))


@dataclass
class Target:
    """One dataset copy to mutate: how to open it, its files by kind, and the clean samples."""

    name: str  # "lerobot" | "official"
    root: Path
    open: Callable[..., object]  # open(skip_bad=..., verify_videos=...) -> dataset
    files: dict[str, list[str]]  # kind -> relative paths
    episodes_of: dict[str, tuple[int, ...]]  # relative path -> episodes it holds (absent: dataset-wide)
    reference: list[dict] | None = None


def lerobot_target(root: Path) -> Target:
    def open_(skip_bad=False, verify_videos=False):
        return LeRobotV3Dataset(root, CHUNK_LEN, skip_bad=skip_bad, verify_videos=verify_videos)

    rel = lambda pattern: sorted(p.relative_to(root).as_posix() for p in root.glob(pattern))  # noqa: E731
    files = {"data_parquet": rel("data/*/*.parquet"), "episodes_parquet": rel("meta/episodes/*/*.parquet"),
             "tasks_parquet": ["meta/tasks.parquet"], "info_json": ["meta/info.json"],
             "stats_json": ["meta/stats.json"], "video_mp4": rel("videos/*/*/*.mp4")}
    eps_of = {}
    for path in files["data_parquet"] + files["video_mp4"]:
        eps_of[path] = (0, 1) if path.endswith("file-000.parquet") or path.endswith("file-000.mp4") else (2,)
    return Target("lerobot", root, open_, files, eps_of)


def official_target(root: Path) -> Target:
    def open_(skip_bad=False, verify_videos=False):
        return OfficialJsonDataset(root, CHUNK_LEN, skip_bad=skip_bad, verify_videos=verify_videos)

    files = {"episode_json": [f"ep{e}.json" for e in range(len(OF_LENGTHS))],
             "episode_mp4": [f"ep{e}_{cam}.mp4" for e in range(len(OF_LENGTHS)) for cam in OF_CAMS]}
    eps_of = {path: (int(path[2]),) for paths in files.values() for path in paths}
    return Target("official", root, open_, files, eps_of)


def build_targets(workdir: Path, digests: bool) -> list[Target]:
    """Write the two clean datasets under `workdir` (with xr0's digests, or stripped) and read their samples."""
    targets = []
    kinds = (("lerobot", write_lerobot, lerobot_target), ("official", write_official, official_target))
    for name, write, make in kinds:
        root = workdir / name
        if root.exists():
            shutil.rmtree(root)
        write(root)
        if not digests:
            strip_digests(root)
        target = make(root)
        target.reference = read_all(target.open())
        targets.append(target)
    return targets


def read_all(ds) -> list[dict]:
    return [ds[i] for i in range(len(ds))]


# ------------------------------------------------------------------------------------------------------------------
# Mutations
# ------------------------------------------------------------------------------------------------------------------


def flip_bytes(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    buf = bytearray(data)
    offsets = sorted(int(o) for o in rng.integers(0, len(buf), size=int(rng.integers(1, 5))))
    for off in offsets:
        if rng.random() < 0.5:
            buf[off] ^= 1 << int(rng.integers(0, 8))  # one bit
        else:
            buf[off] ^= int(rng.integers(1, 256))  # a different byte
    return bytes(buf), f"flip@{','.join(map(str, offsets))}"


def truncate(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    n = int(rng.integers(0, len(data)))
    return data[:n], f"truncate@{n}/{len(data)}"


def _json_paths(node, prefix=()) -> list[tuple]:
    out = []
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for k, v in items:
        out.append((*prefix, k))
        out.extend(_json_paths(v, (*prefix, k)))
    return out


def _wrong_type(value, rng: np.random.Generator):
    choices = [v for v in ("x", 7, -1.5, None, True, [], {}, [1, 2]) if type(v) is not type(value)]
    return choices[int(rng.integers(0, len(choices)))]


def json_edit(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    doc = json.loads(data)
    paths = _json_paths(doc)
    # Half of the edits land on a top-level or second-level key, where the structure is (deep arrays dominate).
    shallow = [p for p in paths if len(p) <= 2]
    pool = shallow if shallow and rng.random() < 0.5 else paths
    path = pool[int(rng.integers(0, len(pool)))]
    parent = doc
    for k in path[:-1]:
        parent = parent[k]
    if rng.random() < 0.5:
        del parent[path[-1]]
        what = "delete"
    else:
        parent[path[-1]] = _wrong_type(parent[path[-1]], rng)
        what = f"type({type(parent[path[-1]]).__name__})"
    return json.dumps(doc, indent=1).encode(), f"json-{what}@{'/'.join(map(str, path))}"


def parquet_edit(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    table = pq.read_table(pa.BufferReader(data))
    col = table.column_names[int(rng.integers(0, table.num_columns))]
    i = table.column_names.index(col)
    r = rng.random()
    if r < 0.4:
        table, what = table.remove_column(i), "drop"
    elif r < 0.7:
        as_text = pa.array([json.dumps(v) for v in table.column(col).to_pylist()], pa.string())
        table, what = table.set_column(i, col, as_text), "type(string)"
    else:
        values = table.column(col).to_pylist()
        values[int(rng.integers(0, len(values)))] = None
        table, what = table.set_column(i, col, pa.array(values, table.schema.field(col).type)), "null"
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes(), f"parquet-{what}@{col}"


def mutate(data: bytes, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One random mutation of a file's bytes, chosen by file kind; returns the new bytes and a description."""
    r = rng.random()
    if not (kind.endswith("json") or kind.endswith("parquet")):  # MP4: bytes only
        return flip_bytes(data, rng) if r < 0.6 else truncate(data, rng)
    if r < 0.45:
        return flip_bytes(data, rng)
    if r < 0.7:
        return truncate(data, rng)
    return (json_edit if kind.endswith("json") else parquet_edit)(data, rng)


# ------------------------------------------------------------------------------------------------------------------
# Outcomes
# ------------------------------------------------------------------------------------------------------------------


def same_sample(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if k == "images":
            if x.keys() != y.keys() or not all(_same_array(x[c], y[c]) for c in x):
                return False
        elif isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not _same_array(x, y):
                return False
        elif type(x) is not type(y) or x != y:
            return False
    return True


def _same_array(x, y) -> bool:
    return (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.dtype == y.dtype
            and x.shape == y.shape and np.array_equal(x, y, equal_nan=True))


def _same_samples(got: list[dict], want: list[dict]) -> bool:
    return len(got) == len(want) and all(same_sample(a, b) for a, b in zip(got, want, strict=True))


def _names(message: str, rel: str, episodes: tuple[int, ...] | None) -> bool:
    if rel not in message:
        return False
    return episodes is None or any(f"episode {e}" in message for e in episodes)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout


def _guarded(fn, timeout_s: int):
    """fn() under a SIGALRM timeout (main thread only): a reader that hangs on bad data is a bug too."""
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(timeout_s)
    try:
        return fn()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _short(err: BaseException) -> str:
    tb = traceback.extract_tb(err.__traceback__)
    where = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
    return f"{type(err).__name__}: {str(err)[:200]}{where}"


def run_strict(target: Target, rel: str, timeout_s: int = 60) -> tuple[str, str]:
    """Outcome of opening the mutated dataset strictly and reading every sample, and a note (the error)."""
    episodes = target.episodes_of.get(rel)
    try:
        got = _guarded(lambda: read_all(target.open()), timeout_s)
    except _Timeout:
        return "hang", f"no answer within {timeout_s}s"
    except DataError as err:
        return ("refused" if _names(str(err), rel, episodes) else "unnamed_error"), str(err)[:300]
    except Exception as err:  # noqa: BLE001 - anything else is a raw traceback for the user
        return "crash", _short(err)
    return ("identical", "") if _same_samples(got, target.reference) else ("silent_difference", _diff(got, target))


def run_skip(target: Target, rel: str, timeout_s: int = 60) -> tuple[str, str]:
    """Outcome of opening the mutated dataset with skip_bad=True, verify_videos=True and reading every sample."""
    episodes = target.episodes_of.get(rel)
    stage = "open"
    try:
        ds = _guarded(lambda: target.open(skip_bad=True, verify_videos=True), timeout_s)
        stage = "read"
        got = _guarded(lambda: read_all(ds), timeout_s)
    except _Timeout:
        return "hang", f"no answer within {timeout_s}s ({stage})"
    except DataError as err:
        if not _names(str(err), rel, None if stage == "open" else episodes):
            return "unnamed_error", str(err)[:300]
        return ("refused" if stage == "open" and episodes is None else "not_skipped"), str(err)[:300]
    except Exception as err:  # noqa: BLE001
        return "crash", _short(err)
    if not ds.skipped:
        return ("identical", "") if _same_samples(got, target.reference) else ("silent_difference", _diff(got, target))
    skipped = {s.episode for s in ds.skipped}
    named = all(rel in s.file or rel in s.reason for s in ds.skipped)
    foreign = episodes is not None and not skipped <= set(episodes)
    if not named or foreign:
        return "wrong_skip", "; ".join(f"{s.file}: episode {s.episode}: {s.reason}" for s in ds.skipped)[:300]
    kept = [s for s in target.reference if s["episode"] not in skipped]
    if not _same_samples(got, kept):
        return "silent_difference", f"after skipping {sorted(skipped)}: " + _diff(got, target, kept)
    return "skipped", f"episodes {sorted(skipped)}"


def _diff(got: list[dict], target: Target, want: list[dict] | None = None) -> str:
    want = target.reference if want is None else want
    if len(got) != len(want):
        return f"{len(got)} samples instead of {len(want)}"
    for a, b in zip(got, want, strict=True):
        if not same_sample(a, b):
            keys = [k for k in a if k not in b or not same_sample({k: a[k]}, {k: b[k]})]
            return f"episode {b['episode']} frame {b['frame']}: {keys or sorted(set(a) ^ set(b))} differ"
    return "?"


@dataclass
class Mutant:
    dataset: str
    kind: str
    file: str
    mutation: str
    strict: str
    skip: str
    note: str


def plan(targets: list[Target], n: int, seed: int) -> list[tuple[Target, str, str, int]]:
    """(target, kind, file, mutant seed) for n mutants: round-robin over every file kind of both datasets."""
    rng = np.random.default_rng(seed)
    kinds = [(t, kind) for t in targets for kind in t.files]
    out = []
    for i in range(n):
        t, kind = kinds[i % len(kinds)]
        files = t.files[kind]
        out.append((t, kind, files[int(rng.integers(0, len(files)))], int(rng.integers(0, 2**31))))
    return out


def run_mutant(target: Target, kind: str, rel: str, seed: int, timeout_s: int = 60) -> Mutant:
    """Mutate one file of the clean dataset, classify strict and skip_bad reading, restore the file."""
    path = target.root / rel
    clean = path.read_bytes()
    rng = np.random.default_rng(seed)
    for _ in range(20):  # a mutation that happens to reproduce the same bytes is drawn again
        data, what = mutate(clean, kind, rng)
        if data != clean:
            break
    try:
        path.write_bytes(data)
        strict, note = run_strict(target, rel, timeout_s)
        skip, skip_note = run_skip(target, rel, timeout_s)
    finally:
        path.write_bytes(clean)
    if skip in BUGS and strict not in BUGS:
        note = skip_note
    return Mutant(target.name, kind, rel, what, strict, skip, note)
