"""xr0.data: LeRobot v3 round trip, official JSON episodes, statistics, augmentation, VL mixing, bad data."""

from __future__ import annotations

import json
import pathlib
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from xr0.data import DataError
from xr0.data.augment import ImageAugment
from xr0.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer, match_cameras, view_title
from xr0.data.official_json import (
    ACTION_LAYOUT,
    ACTIVE_DIMS,
    OfficialJsonDataset,
    relative_chunk,
    write_official_episode,
)
from xr0.data.stats import ChunkStats, compute_stats
from xr0.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from xr0.data.vl import VLDataset
from xr0.processing import RobotSpec

from data_mutants import frames as make_frames, official_arms  # noqa: E402  (tests/ is on sys.path)

FPS, T, DS, DA = 30, 5, 4, 3
LENGTHS = (20, 15, 22)
CAMS = {"front": (32, 32), "wrist": (32, 48)}


def make_episode(e: int, n: int):
    rng = np.random.default_rng(100 + e)
    images = {cam: make_frames(n, h, w, e) for cam, (h, w) in CAMS.items()}
    return images, rng.normal(size=(n, DS)), rng.normal(size=(n, DA)), f"task {e}"


def write_dataset(root, frames_per_file=None, pix_fmt="yuv420p"):
    episodes = [make_episode(e, n) for e, n in enumerate(LENGTHS)]
    with LeRobotV3Writer(root, FPS, CAMS, DS, DA, robot_type="toy", frames_per_file=frames_per_file,
                         pix_fmt=pix_fmt) as w:
        for images, states, actions, task in episodes:
            w.add_episode(images, states, actions, task)
    return episodes


@pytest.fixture(scope="module")
def lerobot(tmp_path_factory):
    root = tmp_path_factory.mktemp("lerobot")
    return root, write_dataset(root)


# ------------------------------------------------------------------------------------------
# LeRobot v3
# ------------------------------------------------------------------------------------------


def test_lerobot_layout_matches_v3(lerobot):
    root, _ = lerobot
    info = json.loads((root / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == FPS
    assert info["total_episodes"] == 3 and info["total_frames"] == sum(LENGTHS) and info["total_tasks"] == 3
    assert info["features"]["observation.images.wrist"]["shape"] == [32, 48, 3]
    assert info["features"]["observation.images.wrist"]["dtype"] == "video"
    assert info["features"]["action"]["shape"] == [DA]
    assert (root / "data/chunk-000/file-000.parquet").is_file()
    assert (root / "videos/observation.images.front/chunk-000/file-000.mp4").is_file()
    eps = pq.read_table(root / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["length"] for e in eps] == list(LENGTHS)
    assert [e["dataset_from_index"] for e in eps] == [0, 20, 35]
    assert [e["dataset_to_index"] for e in eps] == [20, 35, 57]
    assert eps[1]["videos/observation.images.front/from_timestamp"] == pytest.approx(20 / FPS)
    assert eps[2]["videos/observation.images.front/to_timestamp"] == pytest.approx(57 / FPS)
    assert eps[1]["tasks"] == ["task 1"]
    tasks = pq.read_table(root / "meta/tasks.parquet").to_pydict()
    assert tasks == {"task_index": [0, 1, 2], "task": ["task 0", "task 1", "task 2"]}
    data = pq.read_table(root / "data/chunk-000/file-000.parquet")
    assert {"index", "episode_index", "frame_index", "timestamp", "task_index", "observation.state", "action"} <= set(
        data.column_names)
    assert data.column("index").to_pylist() == list(range(57))
    stats = json.loads((root / "meta/stats.json").read_text())
    all_actions = np.concatenate([ep[2] for ep in lerobot[1]])
    np.testing.assert_allclose(stats["action"]["mean"], all_actions.mean(0), rtol=1e-6)
    np.testing.assert_allclose(stats["action"]["std"], all_actions.std(0), rtol=1e-6)


def test_lerobot_round_trip(lerobot):
    root, episodes = lerobot
    ds = LeRobotV3Dataset(root, chunk_len=T)
    assert len(ds) == sum(LENGTHS) and ds.episodes == [0, 1, 2] and ds.cameras == ["front", "wrist"]
    errors, neighbour_gap = [], []
    for i in range(len(ds)):
        s = ds[i]
        images, states, actions, task = episodes[s["episode"]]
        n, f = len(states), s["frame"]
        assert s["instruction"] == task
        assert s["state"].dtype == np.float32 and np.array_equal(s["state"], states[f].astype(np.float32))
        valid = f + np.arange(T) < n
        assert s["action_valid"].dtype == np.bool_ and np.array_equal(s["action_valid"], valid)
        expect = actions[np.minimum(f + np.arange(T), n - 1)].astype(np.float32)
        assert s["actions"].shape == (T, DA) and np.array_equal(s["actions"], expect)
        for cam in CAMS:
            got = s["images"][cam]
            assert got.dtype == np.uint8 and got.shape == images[cam][f].shape
            err = np.abs(got.astype(float) - images[cam][f]).mean()
            errors.append(err)
            other = images[cam][f + 1 if f + 1 < n else f - 1]
            neighbour_gap.append(np.abs(got.astype(float) - other).mean() - err)
    # Lossy H.264 (crf 18, yuv420p) on 32x32 frames: a few grey levels of error (3.8 of the ~4.3
    # measured come from 4:2:0 chroma subsampling alone), and each frame is its own, not a neighbour.
    assert np.mean(errors) < 5.0, np.mean(errors)
    assert np.max(errors) < 7.0, np.max(errors)
    assert np.min(neighbour_gap) > 1.0, np.min(neighbour_gap)
    # Padding: the last frame of episode 0 has one valid action and repeats it.
    last = ds[LENGTHS[0] - 1]
    assert last["action_valid"].tolist() == [True, False, False, False, False]
    assert np.array_equal(last["actions"], np.repeat(episodes[0][2][-1:].astype(np.float32), T, 0))
    # Random access after other episodes gives the same pixels as the sequential pass.
    fresh = LeRobotV3Dataset(root, chunk_len=T, cameras=["observation.images.wrist"], cache_episodes=1,
                             keep_decoded=False)
    for i in (56, 3, 40, 21, 3):
        assert np.array_equal(fresh[i]["images"]["wrist"], ds[i]["images"]["wrist"])
    assert list(fresh[0]["images"]) == ["wrist"]
    assert fresh[-1]["frame"] == LENGTHS[2] - 1
    with pytest.raises(IndexError):
        fresh[len(fresh)]


def test_keep_decoded_decodes_each_episode_once(lerobot, monkeypatch):
    import xr0.data.video as video

    root, _ = lerobot
    calls = []
    decode = video.decode_frames
    monkeypatch.setattr(video, "decode_frames", lambda *a: calls.append(a) or decode(*a))
    kept = LeRobotV3Dataset(root, chunk_len=T)  # small: kept in memory by default
    lazy = LeRobotV3Dataset(root, chunk_len=T, keep_decoded=False)
    assert kept.keep_decoded and not lazy.keep_decoded
    assert kept.decoded_bytes == sum(LENGTHS) * sum(h * w * 3 for h, w in CAMS.values())
    order = [int(i) for i in np.random.default_rng(0).permutation(len(kept))]
    for _ in range(2):  # random access over the whole dataset, twice
        for i in order:
            kept[i]
    # One decode per (episode, camera), each from the episode's first frame to its end.
    assert len(calls) == len(LENGTHS) * len(CAMS)
    assert all(start == keep_from for _, start, _, keep_from, _ in calls)
    for i in order:
        a, b = kept[i], lazy[i]
        assert all(np.array_equal(a["images"][c], b["images"][c]) for c in CAMS)
    import xr0.data.lerobot_v3.reader as reader

    monkeypatch.setattr(reader, "KEEP_DECODED_MAX_BYTES", kept.decoded_bytes - 1)
    assert not LeRobotV3Dataset(root, chunk_len=T).keep_decoded


def _as_image_dtype(src, dst, episodes, damage_frame=None):
    """The dataset at `src` as LeRobot writes it with use_videos=False: the front camera as PNG bytes in the data
    parquet (struct {bytes, path}), no MP4s; the wrist camera dropped; no xr0 digests."""
    import io
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    shutil.copytree(src / "meta", dst / "meta")
    shutil.copytree(src / "data", dst / "data")
    info = json.loads((dst / "meta" / "info.json").read_text())
    info.pop("xr0_integrity", None)
    info["features"]["observation.images.front"]["dtype"] = "image"
    del info["features"]["observation.images.wrist"]
    (dst / "meta" / "info.json").write_text(json.dumps(info))
    for path in sorted((dst / "meta" / "episodes").rglob("*.parquet")):
        table = pq.read_table(path)
        pq.write_table(table.select([c for c in table.column_names if not c.startswith("videos/")]), path)
    for path in sorted((dst / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        blobs = []
        for e, f in zip(table.column("episode_index").to_pylist(), table.column("frame_index").to_pylist()):
            buf = io.BytesIO()
            Image.fromarray(episodes[e][0]["front"][f]).save(buf, format="PNG")
            blobs.append(b"not a png" if (e, f) == damage_frame else buf.getvalue())
        column = pa.StructArray.from_arrays([pa.array(blobs, pa.binary()), pa.array([None] * len(blobs), pa.string())],
                                            names=["bytes", "path"])
        pq.write_table(table.append_column("observation.images.front", column), path)


def test_image_dtype_cameras_are_read(tmp_path, lerobot):
    """LeRobot's dtype "image" cameras (PNG in the data parquet) read exactly, beside no video; a damaged image is a
    DataError naming the camera and frame."""
    src, episodes = lerobot
    _as_image_dtype(src, tmp_path / "img", episodes)
    ds = LeRobotV3Dataset(tmp_path / "img", chunk_len=T)
    assert ds.cameras == ["front"] and len(ds) == sum(LENGTHS)
    for i in (0, 21, len(ds) - 1):
        s = ds[i]
        assert np.array_equal(s["images"]["front"], episodes[s["episode"]][0]["front"][s["frame"]])  # lossless
    _as_image_dtype(src, tmp_path / "bad", episodes, damage_frame=(1, 4))
    bad = LeRobotV3Dataset(tmp_path / "bad", chunk_len=T)
    with pytest.raises(DataError, match=r"observation.images.front does not decode"):
        bad[LENGTHS[0] + 4]


def test_v2_dataset_error_names_the_conversion_command(tmp_path, lerobot):
    import shutil

    shutil.copytree(lerobot[0], tmp_path / "old")
    info = json.loads((tmp_path / "old" / "meta" / "info.json").read_text())
    info.pop("xr0_integrity", None)
    (tmp_path / "old" / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(DataError, match=r"lerobot.scripts.convert_dataset_v21_to_v30 --repo-id=local/old --root="):
        LeRobotV3Dataset(tmp_path / "old", chunk_len=T)


def test_lerobot_multiple_files_yuv444(tmp_path):
    episodes = write_dataset(tmp_path, frames_per_file=1, pix_fmt="yuv444p")
    assert (tmp_path / "data/chunk-000/file-002.parquet").is_file()
    assert (tmp_path / "videos/observation.images.wrist/chunk-000/file-002.mp4").is_file()
    ds = LeRobotV3Dataset(tmp_path, chunk_len=T, verify_videos=True)  # every episode decodes fully
    s = ds[LENGTHS[0] + LENGTHS[1] + 7]
    assert (s["episode"], s["frame"]) == (2, 7)
    assert np.array_equal(s["state"], episodes[2][1][7].astype(np.float32))
    assert np.abs(s["images"]["front"].astype(float) - episodes[2][0]["front"][7]).mean() < 3.5


def test_writer_rejects_bad_input(tmp_path):
    w = LeRobotV3Writer(tmp_path / "x", FPS, {"front": (32, 32)}, DS, DA)
    images = {"front": make_frames(4, 32, 32, 0)}
    with pytest.raises(DataError, match="actions shape"):
        w.add_episode(images, np.zeros((4, DS)), np.zeros((4, DA + 1)), "t")
    with pytest.raises(DataError, match="NaN"):
        w.add_episode(images, np.zeros((4, DS)), np.full((4, DA), np.nan), "t")
    with pytest.raises(DataError, match="task"):
        w.add_episode(images, np.zeros((4, DS)), np.zeros((4, DA)), "")
    w.close()


def test_environment_state_round_trip_and_errors(tmp_path, lerobot):
    """supervision.environment_state (privileged simulator state) is optional, named, checked and read back; kept
    out of observation.* (LeRobot's policies take those as inputs); datasets with the older key still read."""
    names = ["object_x", "goal_x"]
    w = LeRobotV3Writer(tmp_path / "es", FPS, {"front": (32, 32)}, DS, DA, env_state_names=names)
    images = {"front": make_frames(6, 32, 32, 0)}
    env = np.arange(12, dtype=np.float32).reshape(6, 2)
    with pytest.raises(DataError, match=r"env_states shape None, expected \(6, 2\)"):
        w.add_episode(images, np.zeros((6, DS)), np.zeros((6, DA)), "t")
    with pytest.raises(DataError, match="env_states contain NaN"):
        w.add_episode(images, np.zeros((6, DS)), np.zeros((6, DA)), "t", env_states=np.full((6, 2), np.nan))
    w.add_episode(images, np.zeros((6, DS)), np.zeros((6, DA)), "t", env_states=env)
    w.close()
    info = json.loads((tmp_path / "es/meta/info.json").read_text())
    assert info["features"]["supervision.environment_state"] == {"dtype": "float32", "shape": [2], "names": names}
    assert not any(k.startswith("observation.") and "environment" in k for k in info["features"])
    ds = LeRobotV3Dataset(tmp_path / "es", chunk_len=T)
    assert ds.env_state_dim == 2 and np.array_equal(ds[4]["env_state"], env[4]) and np.array_equal(ds.env_state(5), env[5])
    plain = LeRobotV3Dataset(lerobot[0], chunk_len=T)
    assert plain.env_state_dim == 0 and "env_state" not in plain[0]
    with pytest.raises(DataError, match="no supervision.environment_state"):
        plain.env_state(0)
    with pytest.raises(DataError, match="no env_state_names"):
        LeRobotV3Writer(tmp_path / "x", FPS, {"front": (32, 32)}, DS, DA).add_episode(
            images, np.zeros((6, DS)), np.zeros((6, DA)), "t", env_states=env)


def test_match_cameras_by_title_else_by_position_else_an_error(caplog):
    """The one camera rule of training, `xr0 eval metaworld` and the LeRobot plugin."""
    # by view title, in the given order; given cameras of other titles are left out
    assert match_cameras(["top_view", "base_view", "wrist"], ("Base View", "Top View")) == {
        "top_view": "Top View", "base_view": "Base View"}
    assert match_cameras(["observation.images.ego"], ("Ego View",),
                         title=lambda k: view_title(k.removeprefix("observation.images."))) == {
        "observation.images.ego": "Ego View"}
    # by position when the counts match, said once, naming the pairs
    with caplog.at_level("WARNING", logger="xr0.data.lerobot_v3.layout"):
        assert match_cameras(["front", "wrist"], ("Base View", "Top View"), source="the dataset") == {
            "front": "Base View", "wrist": "Top View"}
    assert len(caplog.records) == 1
    assert "the dataset" in caplog.text and "'front' -> 'Base View', 'wrist' -> 'Top View'" in caplog.text
    # once per process and pair of lists; never when the order was chosen on purpose (--cameras)
    with caplog.at_level("WARNING", logger="xr0.data.lerobot_v3.layout"):
        match_cameras(["front", "wrist"], ("Base View", "Top View"), source="the dataset")
        match_cameras(["left", "right"], ("Base View", "Top View"), warn=False)
    assert len(caplog.records) == 1
    # two given cameras of one wanted title: an error, not the last one silently
    with pytest.raises(ValueError, match=r"'Base View'.* more than once"):
        match_cameras(["base_view", "Base View"], ("Base View",))
    # else an error naming both lists
    with pytest.raises(ValueError, match=r"\['front'\] .* model's \['Base View', 'Top View'\] .*; pick two"):
        match_cameras(["front"], ("Base View", "Top View"), hint="pick two")


# ------------------------------------------------------------------------------------------
# Statistics
# ------------------------------------------------------------------------------------------


def test_stats_equal_numpy_over_all_chunks(lerobot):
    ds = LeRobotV3Dataset(lerobot[0], chunk_len=T)
    stats = compute_stats(ds)
    states, chunks, valid = map(np.stack, zip(*(ds.lowdim(i) for i in range(len(ds))), strict=True))
    for t in range(T):
        a = chunks[valid[:, t], t].astype(np.float64)
        np.testing.assert_allclose(stats.action_mean[t], a.mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(stats.action_std[t], a.std(0), rtol=1e-10, atol=1e-12)
        assert stats.count[t] == len(a)
    assert stats.count.tolist() == [57, 54, 51, 48, 45]
    states = states.astype(np.float64)
    np.testing.assert_allclose(stats.state_mean, states.mean(0), rtol=1e-10)
    np.testing.assert_allclose(stats.state_std, states.std(0), rtol=1e-10)
    # the normalising is RobotSpec's, per chunk position, with these statistics
    spec = RobotSpec(stats.action_mean, stats.action_std, np.ones(DA), stats.state_mean, stats.state_std, DA, DS)
    x = chunks[0]
    expect = (x - stats.action_mean) / (stats.action_std + 1e-6)
    np.testing.assert_allclose(spec.normalize_actions(x), expect, rtol=1e-5)
    np.testing.assert_allclose(spec.denormalize_actions(spec.normalize_actions(x)), x, atol=1e-5)
    again = ChunkStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    assert again.sha256() == stats.sha256()


# ------------------------------------------------------------------------------------------
# Official JSON format
# ------------------------------------------------------------------------------------------


def rot_x(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def rot_z(a):
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])


def test_relative_actions_hand_computed():
    # Anchor: left hand at p=(1,2,3) rotated 90° about z. Target: moved +1 along world y and
    # rotated a further 30° about the hand's own x axis.
    n = 2
    prop = {f"{arm}_{k}": np.zeros((n, d)) for arm in ("left", "right")
            for k, d in (("ee_pos", 3), ("ee_rotm", 9), ("arm_joint", 6), ("gripper_pos", 1))}
    act = {k: v.copy() for k, v in prop.items()}
    for d in (prop, act):
        d["right_ee_rotm"][:] = np.eye(3).reshape(9)
    prop["left_ee_pos"][0] = [1, 2, 3]
    prop["left_ee_rotm"][0] = rot_z(math.pi / 2).reshape(9)  # row-major
    prop["left_gripper_pos"][0] = 0.2
    prop["left_arm_joint"][0] = np.arange(6) * 0.1
    act["left_ee_pos"][1] = [1, 3, 3]
    act["left_ee_rotm"][1] = (rot_z(math.pi / 2) @ rot_x(math.pi / 6)).reshape(9)
    act["left_gripper_pos"][1] = 0.5
    act["left_arm_joint"][1] = np.arange(6) * 0.1 + 0.05
    act["right_ee_pos"][1] = [0, 0, 0.25]

    chunk = relative_chunk(prop, act, anchor=0, targets=np.array([1, 1]))
    assert chunk.shape == (2, 32)
    # World +y seen from a frame turned 90° about z is the frame's +x.
    np.testing.assert_allclose(chunk[0, ACTION_LAYOUT["left_ee_pos"]], [1, 0, 0], atol=1e-6)
    np.testing.assert_allclose(chunk[0, ACTION_LAYOUT["left_ee_aa"]], [math.pi / 6, 0, 0], atol=1e-6)
    np.testing.assert_allclose(chunk[0, ACTION_LAYOUT["left_gripper"]], [0.3], atol=1e-6)
    np.testing.assert_allclose(chunk[0, ACTION_LAYOUT["left_joint"]], np.full(6, 0.05), atol=1e-6)
    np.testing.assert_allclose(chunk[0, ACTION_LAYOUT["right_ee_pos"]], [0, 0, 0.25], atol=1e-6)
    np.testing.assert_allclose(chunk[0, ACTION_LAYOUT["right_ee_aa"]], [0, 0, 0], atol=1e-7)
    assert np.all(chunk[:, ~ACTIVE_DIMS] == 0) and ACTIVE_DIMS.sum() == 26
    assert not ACTIVE_DIMS[13] and not ACTIVE_DIMS[27:].any()


def test_axis_angle_round_trip_including_near_pi():
    rng = np.random.default_rng(0)
    axes = rng.normal(size=(64, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    angles = np.concatenate([rng.uniform(0, math.pi, 58), [0.0, 1e-9, 1e-4, math.pi - 1e-7, math.pi - 1e-3, math.pi]])
    aa = axes * angles[:, None]
    back = matrix_to_axis_angle(axis_angle_to_matrix(aa))
    np.testing.assert_allclose(axis_angle_to_matrix(back), axis_angle_to_matrix(aa), atol=1e-9)
    ok = angles < math.pi - 1e-3  # away from π the vector itself is unique
    np.testing.assert_allclose(back[ok], aa[ok], atol=1e-9)
    np.testing.assert_allclose(matrix_to_axis_angle(rot_x(math.pi)), [math.pi, 0, 0], atol=1e-9)


def random_official(n: int, seed: int):
    prop, act = official_arms(np.random.default_rng(seed), n)
    images = {"ego": make_frames(n, 32, 32, seed), "wrist_left": make_frames(n, 32, 32, seed + 7)}
    return images, prop, act


def write_official(root, kinds=("success", "invalid")):
    episodes = []
    for e, kind in enumerate(kinds):
        images, prop, act = random_official(12, e)
        write_official_episode(root / f"ep{e}.json", images, prop, act, f"fold towel {e}", trajectory_type=kind,
                               fps=FPS)
        episodes.append((images, prop, act))
    return episodes


def test_official_dataset(tmp_path):
    episodes = write_official(tmp_path)
    ds = OfficialJsonDataset(tmp_path, chunk_len=T)
    assert len(ds) == 24 and ds.episodes == [0, 1]
    s = ds[9]
    images, prop, act = episodes[0]
    assert s["instruction"] == "fold towel 0" and (s["episode"], s["frame"]) == (0, 9)
    assert s["actions"].shape == (T, 32) and s["actions"].dtype == np.float32
    assert s["action_valid"].tolist() == [True, True, True, False, False]
    expect = relative_chunk(prop, act, 9, np.minimum(9 + np.arange(T), 11))
    np.testing.assert_array_equal(s["actions"], expect)
    np.testing.assert_array_equal(s["actions"][3], s["actions"][2])  # padded by repetition
    # State: grippers at 6/20, joints at 7-12/21-26, nothing else.
    assert s["state"].shape == (32,) and s["state"][6] == np.float32(prop["left_gripper_pos"][9, 0])
    np.testing.assert_array_equal(s["state"][21:27], prop["right_arm_joint"][9].astype(np.float32))
    assert not s["state"][[0, 1, 2, 3, 4, 5, 13, 14, 19, 27, 31]].any()
    assert set(s["images"]) == {"ego", "wrist_left"}
    assert np.abs(s["images"]["ego"].astype(float) - images["ego"][9]).mean() < 5.0
    # "invalid" trajectories are fully masked (the documented behaviour).
    assert not ds[12 + 2]["action_valid"].any()
    full = OfficialJsonDataset(tmp_path, chunk_len=T, cameras=["ego"], full_chunks_only=True)
    assert len(full) == 2 * (12 - T + 1) and all(full[i]["action_valid"].all() for i in range(8))
    stats = compute_stats(full)
    assert stats.action_mean.shape == (T, 32) and stats.count.tolist() == [8] * T


# ------------------------------------------------------------------------------------------
# Augmentation
# ------------------------------------------------------------------------------------------


def test_augment_deterministic_and_off_at_eval():
    views = {"ego": make_frames(1, 64, 64, 0)[0], "wrist": make_frames(1, 64, 64, 3)[0]}
    aug = ImageAugment()
    a = aug(views, np.random.default_rng(5))
    b = aug(views, np.random.default_rng(5))
    assert all(np.array_equal(a[k], b[k]) for k in views)
    assert all(a[k].shape == (64, 64, 3) and a[k].dtype == np.uint8 for k in views)
    outs = [aug(views, np.random.default_rng(seed))["ego"] for seed in range(6)]
    assert len({o.tobytes() for o in outs}) == 6
    assert not np.array_equal(a["ego"], views["ego"])
    rng = np.random.default_rng(5)
    off = ImageAugment(train=False)(views, rng)
    assert all(off[k] is views[k] for k in views)
    assert rng.random() == np.random.default_rng(5).random()  # eval draws nothing
    # Flags and factors are shared across views: identical views stay identical without cropping.
    same = ImageAugment(crop_ratio=1.0)([views["ego"], views["ego"]], np.random.default_rng(1))
    assert np.array_equal(same[0], same[1])
    # Brightness alone on a flat grey image scales it by a factor within 1 ± 32/255.
    grey = np.full((32, 32, 3), 100, np.uint8)
    bright = ImageAugment(crop_ratio=1.0, contrast=(1, 1), saturation=(1, 1), p=1.0)
    factors = [bright([grey], np.random.default_rng(s))[0].mean() / 100 for s in range(20)]
    assert max(factors) <= 1 + 32 / 255 + 0.006 and min(factors) >= 1 - 32 / 255 - 0.006
    assert max(factors) - min(factors) > 0.05


# ------------------------------------------------------------------------------------------
# VL data (the 1:6 mix per batch: Trainer._vl_batch, tests/test_train.py)
# ------------------------------------------------------------------------------------------


def test_vl_dataset(tmp_path):
    (tmp_path / "img").mkdir()
    Image.fromarray(make_frames(1, 16, 24, 0)[0]).save(tmp_path / "img/a.png")
    Image.fromarray(make_frames(1, 20, 20, 1)[0]).save(tmp_path / "img/b.png")
    lines = [{"images": ["img/a.png"], "question": "What colour?", "answer": "red"},
             {"images": ["img/a.png", "img/b.png"], "question": "Same?", "answer": "no"},
             {"images": [], "question": "2+2?", "answer": "4"}]
    (tmp_path / "vl.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    vl = VLDataset(tmp_path / "vl.jsonl")
    assert len(vl) == 3
    s = vl[1]
    assert s["question"] == "Same?" and s["answer"] == "no"
    assert [im.shape for im in s["images"]] == [(16, 24, 3), (20, 20, 3)] and s["images"][0].dtype == np.uint8


def test_vl_bad_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {"images": [], "question": "q", "answer": "a"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "images": ["nope.png"]}) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl.*line\) 2.*nope\.png"):
        VLDataset(path)
    ds = VLDataset(path, skip_bad=True)
    assert len(ds) == 1 and [(s.episode, s.file) for s in ds.skipped] == [(2, str(path))]


# ------------------------------------------------------------------------------------------
# Bad data: each case raises DataError naming file and episode, or is skipped and reported
# ------------------------------------------------------------------------------------------


def strip_digests(root):
    """Drop xr0's SHA-256 manifest from every JSON (as LeRobot or the official release write datasets), so the
    damage below reaches the readers' own checks instead of the digest check (tests/test_data_fuzz.py has those)."""
    for path in root.rglob("*.json"):
        doc = json.loads(path.read_text())
        if doc.pop("xr0_integrity", None) is not None:
            path.write_text(json.dumps(doc))


def _rewrite_parquet(path, fn):
    table = pq.read_table(path)
    pq.write_table(fn(table), path)


def _set_action(table, value):
    rows = [list(r) for r in table.column("action").to_pylist()]
    rows[3] = value
    return table.set_column(table.column_names.index("action"), "action", pa.array(rows, pa.list_(pa.float32())))


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


LEROBOT_CASES = {
    "truncated_parquet": ("data/chunk-000/file-001.parquet",
                          lambda root, p: _truncate(p)),
    "corrupt_mp4": ("videos/observation.images.front/chunk-000/file-001.mp4",
                    lambda root, p: _truncate(p)),
    "nan_action": ("data/chunk-000/file-001.parquet",
                   lambda root, p: _rewrite_parquet(p, lambda t: _set_action(t, [0.0, float("nan"), 0.0]))),
    "wrong_dim": ("data/chunk-000/file-001.parquet",
                  lambda root, p: _rewrite_parquet(p, lambda t: _set_action(t, [0.0] * (DA + 1)))),
    "missing_task": ("data/chunk-000/file-001.parquet",
                     lambda root, p: pq.write_table(pa.table({"task_index": [0, 2], "task": ["task 0", "task 2"]}),
                                                    root / "meta/tasks.parquet")),
}


@pytest.mark.parametrize("case", sorted(LEROBOT_CASES))
def test_lerobot_bad_data(tmp_path, case):
    write_dataset(tmp_path, frames_per_file=1)  # one episode per data/video file
    strip_digests(tmp_path)
    rel, damage = LEROBOT_CASES[case]
    damage(tmp_path, tmp_path / rel)
    with pytest.raises(DataError) as err:
        LeRobotV3Dataset(tmp_path, chunk_len=T)
    assert rel in str(err.value) and "episode 1" in str(err.value), str(err.value)
    ds = LeRobotV3Dataset(tmp_path, chunk_len=T, skip_bad=True)
    assert len(ds.skipped) == 1 and ds.skipped[0].episode == 1 and ds.skipped[0].file.endswith(rel)
    assert ds.episodes == [0, 2] and len(ds) == LENGTHS[0] + LENGTHS[2]
    assert {ds[i]["episode"] for i in range(0, len(ds), 5)} == {0, 2}


def _edit_json(path, fn):
    doc = json.loads(path.read_text())
    fn(doc)
    path.write_text(json.dumps(doc))


def _nan_action(doc):
    doc["actions"]["left_ee_pos"][4][1] = math.nan


OFFICIAL_CASES = {
    "truncated_json": ("ep1.json", lambda p: _truncate(p)),
    "corrupt_mp4": ("ep1_ego.mp4", lambda p: _truncate(p)),
    "nan_action": ("ep1.json", lambda p: _edit_json(p, _nan_action)),
    "wrong_dim": ("ep1.json", lambda p: _edit_json(p, lambda d: d["proprios"]["right_ee_rotm"][2].pop())),
    "missing_task": ("ep1.json", lambda p: _edit_json(p, lambda d: d.__setitem__("instruction", {"general": []}))),
    "not_rotation": ("ep1.json", lambda p: _edit_json(p, lambda d: d["actions"]["right_ee_rotm"][5].__setitem__(0, 3))),
}


@pytest.mark.parametrize("case", sorted(OFFICIAL_CASES))
def test_official_bad_data(tmp_path, case):
    write_official(tmp_path, kinds=("success", "ongoing", "success"))
    strip_digests(tmp_path)
    name, damage = OFFICIAL_CASES[case]
    damage(tmp_path / name)
    with pytest.raises(DataError) as err:
        OfficialJsonDataset(tmp_path, chunk_len=T)
    assert name in str(err.value) and "episode 1" in str(err.value), str(err.value)
    ds = OfficialJsonDataset(tmp_path, chunk_len=T, skip_bad=True)
    assert [(s.episode, s.file.endswith(name)) for s in ds.skipped] == [(1, True)]
    assert ds.episodes == [0, 2] and len(ds) == 24


def test_damaged_stream_found_by_verify_or_on_access(tmp_path):
    """A truncated MP4 whose index sits at the front opens fine; decoding exposes it."""
    import av

    write_official(tmp_path, kinds=("success", "success"))
    strip_digests(tmp_path)
    src, tmp = tmp_path / "ep1_ego.mp4", tmp_path / "faststart.mp4"
    with av.open(str(src)) as inp, av.open(str(tmp), "w", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    data = tmp.read_bytes()
    src.write_bytes(data[: len(data) // 2])
    ds = OfficialJsonDataset(tmp_path, chunk_len=T, cameras=["ego"])  # header probe passes
    with pytest.raises(DataError, match=r"ep1_ego\.mp4: episode 1"):
        [ds[i] for i in range(12, 24)]
    with pytest.raises(DataError, match=r"ep1_ego\.mp4: episode 1: video ego does not decode"):
        OfficialJsonDataset(tmp_path, chunk_len=T, cameras=["ego"], verify_videos=True)
    checked = OfficialJsonDataset(tmp_path, chunk_len=T, cameras=["ego"], verify_videos=True, skip_bad=True)
    assert checked.episodes == [0] and len(checked.skipped) == 1


# ------------------------------------------------------------------------------------------
# The layout LeRobot 0.6.1 writes (recorded from the real library: tests/lerobot/record_schema.py)
# ------------------------------------------------------------------------------------------


def test_writer_layout_matches_lerobot_0_6_1(tmp_path):
    """Same info.json keys, video info keys, stats.json keys per feature (quantiles included) and meta/episodes
    columns and types as LeRobot 0.6.1 writes for the same features, so LeRobot can resume and extend the dataset
    (make test-lerobot does that with the real library)."""
    import pyarrow.parquet as pq

    ref = json.loads((pathlib.Path(__file__).parent / "fixtures" / "lerobot_0_6_1_schema.json").read_text())
    rng = np.random.default_rng(0)
    with LeRobotV3Writer(tmp_path, 10, {"front": (32, 32)}, 4, 3, robot_type="toy") as w:
        for ep in range(2):
            w.add_episode({"front": rng.integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)},
                          rng.normal(size=(12, 4)), rng.normal(size=(12, 3)), f"task {ep}")
    info = json.loads((tmp_path / "meta/info.json").read_text())
    assert sorted(set(info) - {"xr0_integrity"}) == ref["info_keys"]
    assert list(info["features"]["observation.images.front"]["info"]) == ref["video_info_keys"]
    stats = json.loads((tmp_path / "meta/stats.json").read_text())
    assert {k: sorted(v) for k, v in stats.items()} == ref["stats_keys"]
    episodes = pq.read_table(tmp_path / "meta/episodes/chunk-000/file-000.parquet")
    assert {f.name: str(f.type) for f in episodes.schema} == ref["episodes_schema"]
    assert pq.read_table(tmp_path / "data/chunk-000/file-000.parquet").column_names == ref["data_columns"]
    # the statistics themselves: per-episode quantiles estimated and pooled as LeRobot does
    states = np.concatenate([pq.read_table(tmp_path / "data/chunk-000/file-000.parquet")["observation.state"]
                             .to_pylist()])
    assert np.allclose(stats["observation.state"]["mean"], states.mean(0), atol=1e-6)
    assert np.allclose(stats["observation.state"]["std"], states.std(0), atol=1e-6)
    assert np.all(np.diff([stats["action"][q] for q in ("q01", "q10", "q50", "q90", "q99")], axis=0) >= 0)
    assert np.array(stats["observation.images.front"]["q50"]).shape == (3, 1, 1)


def test_data_stats_once_in_lerobots_layout_and_read_by_training(tmp_path, capsys):
    """`xr0 data stats`: stats.json recomputed for state and action reproduces what the writer recorded (LeRobot
    0.6.1's layout and aggregation) while the camera entries stay; the chunk statistics file equals a fresh
    computation, and training reads it instead of recomputing (and says so); a changed dataset is recomputed."""
    import json as _json

    from test_train import write_dataset
    from xr0.cli import main
    from xr0.config import get_preset
    from xr0.data.lerobot_v3 import LeRobotV3Dataset
    from xr0.data.stats import CHUNK_STATS, compute_stats, read_chunk_stats
    from xr0.train.inputs import robot_spec_from_data

    root = write_dataset(tmp_path / "d", lengths=(24, 20, 31))
    written = _json.loads((root / "meta" / "stats.json").read_text())
    (root / "meta" / "stats.json").write_text(_json.dumps({k: v for k, v in written.items()
                                                           if k not in ("action", "observation.state")}))
    assert main(["data", "stats", str(root), "--chunk-len", "10,4"]) == 0
    summary = _json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["episodes"] == 3 and summary["frames"] == 75 and set(summary["chunk_lens"]) == {"10", "4"}
    again = _json.loads((root / "meta" / "stats.json").read_text())
    assert set(again) == set(written)
    for key in ("action", "observation.state"):
        for stat, value in written[key].items():
            np.testing.assert_allclose(again[key][stat], value, rtol=1e-12, atol=1e-12, err_msg=f"{key}/{stat}")
    ds = LeRobotV3Dataset(root, 10)
    fresh, stored = compute_stats(ds), read_chunk_stats(root, 10, len(ds))
    np.testing.assert_array_equal(stored.action_std, fresh.action_std)
    config = get_preset("tiny")
    spec = robot_spec_from_data(ds, config, chunk_len=10)
    assert f"statistics read from {root / CHUNK_STATS}" in capsys.readouterr().err
    assert read_chunk_stats(root, 10, len(ds) + 1) is None and read_chunk_stats(root, 30, len(ds)) is None
    assert spec.chunk_len == 10 and np.allclose(spec.action_mean[:, :7], fresh.action_mean)
    assert main(["data", "stats", str(tmp_path / "missing"), "--chunk-len", "10"]) == 2
