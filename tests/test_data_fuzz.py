"""Mutation fuzzing of the dataset readers (tests/data_mutants.py): damaged files are refused naming the file and
episode, or skipped and listed; never a raw traceback, never a silently different sample. A few dozen derandomised
mutants here; `make test-slow` and benchmarks/fuzz_data.py run hundreds."""

from __future__ import annotations

import collections
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from data_mutants import BUGS, INTEGRITY_KEY, build_targets, plan, read_all, run_mutant, same_sample

import xr0.data.integrity as integrity
from xr0.data import DataError
from xr0.data.lerobot_v3 import LeRobotV3Dataset
from xr0.data.official_json import OfficialJsonDataset

# Without digests a flip inside a number or an MP4 payload can change a sample unseen: the one outcome allowed there.
PLAIN_BUGS = tuple(b for b in BUGS if b != "silent_difference")


def fuzz(targets, n: int, seed: int) -> list:
    return [run_mutant(t, kind, rel, s) for t, kind, rel, s in plan(targets, n, seed)]


def assert_no_bugs(mutants, bugs) -> collections.Counter:
    bad = [m for m in mutants if m.strict in bugs or m.skip in bugs]
    assert not bad, "\n".join(f"{m.dataset}/{m.file} {m.mutation}: {m.strict}/{m.skip}: {m.note}" for m in bad)
    return collections.Counter(m.strict for m in mutants)


@pytest.fixture(scope="module")
def sealed(tmp_path_factory):
    return build_targets(tmp_path_factory.mktemp("sealed"), digests=True)


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    return build_targets(tmp_path_factory.mktemp("plain"), digests=False)


def test_mutants_of_xr0_written_datasets_are_refused_or_skipped_never_silent(sealed):
    mutants = fuzz(sealed, 40, seed=0)
    strict = assert_no_bugs(mutants, BUGS)
    assert {f"{m.dataset}/{m.kind}" for m in mutants} == {f"{t.name}/{k}" for t in sealed for k in t.files}
    assert strict["refused"] >= 30 and strict["refused"] + strict["identical"] == 40
    assert {m.skip for m in mutants} >= {"skipped", "refused"}


def test_mutants_without_digests_never_crash_and_always_name_the_file(plain):
    mutants = fuzz(plain, 40, seed=1)
    strict = assert_no_bugs(mutants, PLAIN_BUGS)
    assert strict["refused"] >= 20


# ------------------------------------------------------------------------------------------------------------------
# The digests
# ------------------------------------------------------------------------------------------------------------------


def test_writers_record_a_digest_of_every_file(sealed):
    lerobot, official = sealed
    info = json.loads((lerobot.root / "meta/info.json").read_text())
    files = info[INTEGRITY_KEY]["files"]
    written = {p.relative_to(lerobot.root).as_posix() for p in lerobot.root.rglob("*") if p.is_file()}
    assert set(files) == written - {"meta/info.json"} and len(files) == 9  # 2 data, 4 videos, 3 meta
    assert all(files[f] == integrity.file_sha256(lerobot.root / f) for f in files)
    assert info[INTEGRITY_KEY]["content"] == integrity.content_sha256(info)
    doc = json.loads((official.root / "ep1.json").read_text())
    assert set(doc[INTEGRITY_KEY]["files"]) == {"ep1_ego.mp4", "ep1_wrist_left.mp4"}


def test_a_changed_value_that_still_parses_is_caught_by_its_digest(tmp_path):
    lerobot, official = build_targets(tmp_path, digests=True)
    path = lerobot.root / "data/chunk-000/file-001.parquet"  # episode 2 alone
    table = pq.read_table(path)
    rows = table.column("action").to_pylist()
    rows[3][1] += 0.5
    pq.write_table(table.set_column(table.column_names.index("action"), "action",
                                    pa.array(rows, table.schema.field("action").type)), path)
    with pytest.raises(DataError, match=r"data/chunk-000/file-001\.parquet: episode 2: SHA-256 .* differs"):
        LeRobotV3Dataset(lerobot.root, 4)
    ds = LeRobotV3Dataset(lerobot.root, 4, skip_bad=True)
    assert ds.episodes == [0, 1] and [s.episode for s in ds.skipped] == [2]
    assert all(same_sample(a, b) for a, b in zip(read_all(ds), lerobot.reference, strict=False))
    # The same change without digests: read back as if nothing happened (what the manifest is for).
    info_path = lerobot.root / "meta/info.json"
    info = json.loads(info_path.read_text())
    del info[INTEGRITY_KEY]
    info_path.write_text(json.dumps(info))
    changed = LeRobotV3Dataset(lerobot.root, 4)
    assert changed[-4]["actions"][0, 1] == np.float32(rows[3][1])

    doc_path = official.root / "ep2.json"
    doc = json.loads(doc_path.read_text())
    doc["actions"]["left_gripper_pos"][3][0] += 0.25
    doc_path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"ep2\.json: episode 2: content does not match its SHA-256"):
        OfficialJsonDataset(official.root, 4)


def test_info_json_content_is_covered_and_the_manifest_itself_too(tmp_path):
    (lerobot, _) = build_targets(tmp_path, digests=True)
    info_path = lerobot.root / "meta/info.json"
    clean = info_path.read_text()
    for edit in (lambda i: i.__setitem__("fps", 11),  # valid, but every frame time would move
                 lambda i: i[INTEGRITY_KEY]["files"].__setitem__("meta/stats.json", "0" * 64),
                 lambda i: i[INTEGRITY_KEY].__setitem__("files", [])):
        info = json.loads(clean)
        edit(info)
        info_path.write_text(json.dumps(info))
        with pytest.raises(DataError, match=r"meta/info\.json: .*(content does not match|malformed)"):
            LeRobotV3Dataset(lerobot.root, 4)


def test_videos_are_hashed_lazily_on_their_first_frame(sealed, monkeypatch):
    lerobot, official = sealed
    hashed = []
    real = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda p: hashed.append(p.name) or real(p))
    ds = LeRobotV3Dataset(lerobot.root, 4)
    assert sorted(hashed) == ["file-000.parquet", "file-000.parquet", "file-001.parquet", "tasks.parquet"]
    hashed.clear()
    ds[0], ds[1], ds[len(ds) - 1]
    assert sorted(hashed) == ["file-000.mp4", "file-000.mp4", "file-001.mp4", "file-001.mp4"]  # once per file
    hashed.clear()
    OfficialJsonDataset(official.root, 4)[0]
    assert sorted(hashed) == ["ep0_ego.mp4", "ep0_wrist_left.mp4"]


def test_a_changed_video_is_refused_on_access_and_skipped_with_verify_videos(tmp_path):
    lerobot, official = build_targets(tmp_path, digests=True)
    mp4 = official.root / "ep1_ego.mp4"
    data = bytearray(mp4.read_bytes())
    data[data.index(b"mdat") + 64] ^= 0x01  # one bit of the first frame's payload; the header still probes fine
    mp4.write_bytes(bytes(data))
    ds = OfficialJsonDataset(official.root, 4)
    ds[0]
    with pytest.raises(DataError, match=r"ep1_ego\.mp4: episode 1 \(ep1\.json\): SHA-256"):
        ds[len(official.reference) - 10]
    checked = OfficialJsonDataset(official.root, 4, skip_bad=True, verify_videos=True)
    assert checked.episodes == [0, 2] and checked.skipped[0].file.endswith("ep1_ego.mp4")


# ------------------------------------------------------------------------------------------------------------------
# Defects the first fuzzing run found, and the checks added with them (datasets without digests)
# ------------------------------------------------------------------------------------------------------------------


def _strip(target) -> None:
    for path in target.root.rglob("*.json"):
        doc = json.loads(path.read_text())
        if doc.pop(INTEGRITY_KEY, None) is not None:
            path.write_text(json.dumps(doc))


def _edit_parquet(path, fn) -> None:
    pq.write_table(fn(pq.read_table(path)), path)


EPISODES = "meta/episodes/chunk-000/file-000.parquet"
LEROBOT_REGRESSIONS = {
    # was a ValueError from str.format: "Unknown format code 'd' for object of type 'str'"
    "file_index_as_text": (EPISODES, lambda t: t.set_column(
        t.column_names.index(c := "videos/observation.images.front/file_index"), c,
        pa.array([str(v) for v in t.column(c).to_pylist()]))),
    # were named after meta/episodes (the folder), not the file
    "null_episode_index": (EPISODES, lambda t: t.set_column(0, "episode_index", pa.array([0, None, 2], pa.int64()))),
    "dropped_column": (EPISODES, lambda t: t.drop_columns(["videos/observation.images.front/file_index"])),
    # was a UnicodeDecodeError from pyarrow
    "column_name_not_utf8": ("meta/tasks.parquet", None),
}


@pytest.mark.parametrize("case", sorted(LEROBOT_REGRESSIONS))
def test_damaged_metadata_is_refused_naming_the_file(tmp_path, case):
    lerobot, _ = build_targets(tmp_path, digests=True)
    _strip(lerobot)
    rel, fn = LEROBOT_REGRESSIONS[case]
    if fn is None:  # pyarrow writes valid UTF-8 only: write a same-length name, then swap its bytes
        path = lerobot.root / rel
        pq.write_table(pq.read_table(path).rename_columns(["tXsk_index", "task"]), path, store_schema=False)
        path.write_bytes(path.read_bytes().replace(b"tXsk_index", b"t\xe4sk_index"))
        with pytest.raises(UnicodeDecodeError):
            pq.read_table(path).column_names
    else:
        _edit_parquet(lerobot.root / rel, fn)
    for skip_bad in (False, True):
        with pytest.raises(DataError, match=rel.replace(".", r"\.")):
            LeRobotV3Dataset(lerobot.root, 4, skip_bad=skip_bad)


def edit_json(path, change) -> None:
    """Rewrite a JSON file after `change(document)`."""
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("fps", [True, "10", 0, -10, None])
def test_a_bad_fps_in_info_json_is_refused_naming_it(tmp_path, fps):
    lerobot, _ = build_targets(tmp_path, digests=False)
    path = lerobot.root / "meta/info.json"
    edit_json(path, lambda info: info.update(fps=fps))  # True used to read as 1 fps and blame the videos
    with pytest.raises(DataError, match=r"meta/info\.json: fps"):
        LeRobotV3Dataset(lerobot.root, 4)


def test_a_frame_rate_that_disagrees_with_the_video_names_both(tmp_path):
    lerobot, official = build_targets(tmp_path, digests=False)
    path = lerobot.root / "meta/info.json"
    edit_json(path, lambda info: info.update(fps=11))
    with pytest.raises(DataError, match=r"file-000\.mp4: episode 0: video \S+ runs at 10 fps, meta/info\.json"):
        LeRobotV3Dataset(lerobot.root, 4)
    doc_path = official.root / "ep0.json"
    edit_json(doc_path, lambda doc: doc["observations"]["ego"][0].update(fps=20))
    with pytest.raises(DataError, match=r"ep0_ego\.mp4: episode 0: video ego runs at 10 fps, ep0\.json says 20"):
        OfficialJsonDataset(official.root, 4)


def test_an_official_episode_missing_a_camera_is_not_read_with_fewer_images(tmp_path):
    _, official = build_targets(tmp_path, digests=False)
    path = official.root / "ep2.json"
    edit_json(path, lambda doc: doc["observations"].pop("wrist_left"))
    with pytest.raises(DataError, match=r"ep2\.json: episode 2: cameras \['ego'\] differ"):
        OfficialJsonDataset(official.root, 4)
    ds = OfficialJsonDataset(official.root, 4, skip_bad=True)
    assert ds.episodes == [0, 1] and ds.skipped[0].episode == 2
    assert len(OfficialJsonDataset(official.root, 4, cameras=["ego"])) == len(official.reference)


@pytest.mark.parametrize("observation", [["ep0_ego.mp4"], [{"path": 7}], [{"path": "ep0_ego.mp4", "fps": "x"}],
                                         [{"path": "ep0_ego.mp4", "start": -1}],
                                         [{"path": "ep0_ego.mp4", "crop_bbox": [0, 0, 99, 8]}]])
def test_malformed_official_observations_are_refused_naming_the_json(tmp_path, observation):
    _, official = build_targets(tmp_path, digests=False)
    path = official.root / "ep0.json"
    edit_json(path, lambda doc: doc["observations"].update(ego=observation))
    with pytest.raises(DataError, match=r"ep0\.json: episode 0: observations\.ego"):
        OfficialJsonDataset(official.root, 4)


@pytest.mark.slow
def test_hundreds_of_mutants(tmp_path):
    """The benchmark's run: 240 mutants with digests (no bug at all), 240 without (no bug but silent differences)."""
    assert_no_bugs(fuzz(build_targets(tmp_path / "sealed", digests=True), 240, seed=0), BUGS)
    assert_no_bugs(fuzz(build_targets(tmp_path / "plain", digests=False), 240, seed=0), PLAIN_BUGS)
