"""Simulator adapters (LIBERO, CALVIN, SimplerEnv): the pure protocol parts with numbers, the LIBERO results
bookkeeping, the install hints, and (slow) a real LIBERO episode with the tiny preset."""

import json
import math
import random
import sys

import numpy as np
import pytest
from PIL import Image

from xr0.processing import RobotSpec
from xr0.sim import calvin, common, libero, simpler
from xr0.sim.common import (
    ChunkPolicy, axis_angle_to_euler, center_crop_resize, euler_to_axis_angle, euler_to_matrix, matrix_to_euler,
    matrix_to_quat, observation_seed, quat_to_axis_angle, quat_to_matrix,
)

S2 = math.sqrt(0.5)


def rx(a):
    return np.array([[1, 0, 0], [0, math.cos(a), -math.sin(a)], [0, math.sin(a), math.cos(a)]])


def ry(a):
    return np.array([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])


def rz(a):
    return np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])


def qmul(a, b):  # xyzw Hamilton product
    x1, y1, z1, w1 = a
    x2, y2, z2, w2 = b
    return np.array([w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2, w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                     w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2, w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2])


# ---------------------------------------------------------------------------------------------- rotations
def test_quaternion_matrix_known_values_and_round_trip():
    np.testing.assert_allclose(quat_to_matrix([0, 0, S2, S2]), [[0, -1, 0], [1, 0, 0], [0, 0, 1]], atol=1e-12)
    np.testing.assert_allclose(quat_to_matrix([1, 0, 0, 0]), np.diag([1, -1, -1]), atol=1e-12)
    np.testing.assert_allclose(matrix_to_quat(np.diag([1, -1, -1])), [1, 0, 0, 0], atol=1e-12)  # 180 deg about x
    np.testing.assert_allclose(matrix_to_quat(rz(math.pi / 2)), [0, 0, S2, S2], atol=1e-12)
    rng = np.random.default_rng(0)
    for _ in range(200):
        q = rng.normal(size=4)
        q /= np.linalg.norm(q)
        back = matrix_to_quat(quat_to_matrix(q))
        assert back[3] >= 0
        np.testing.assert_allclose(back, q if q[3] >= 0 else -q, atol=1e-9)


def test_euler_is_static_xyz_and_round_trips():
    np.testing.assert_allclose(euler_to_matrix([math.pi / 2, 0, 0]), [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)
    np.testing.assert_allclose(euler_to_matrix([0.1, 0.2, 0.3]), rz(0.3) @ ry(0.2) @ rx(0.1), atol=1e-12)
    rng = np.random.default_rng(1)
    for _ in range(200):
        rpy = rng.uniform([-math.pi, -1.5, -math.pi], [math.pi, 1.5, math.pi])
        np.testing.assert_allclose(matrix_to_euler(euler_to_matrix(rpy)), rpy, atol=1e-9)
    # gimbal lock: yaw is folded into roll and the rotation is still reproduced
    r = euler_to_matrix([0.4, math.pi / 2, 0.1])
    e = matrix_to_euler(r)
    assert e[2] == 0.0 and abs(e[1] - math.pi / 2) < 1e-9
    np.testing.assert_allclose(euler_to_matrix(e), r, atol=1e-9)


def test_euler_to_axis_angle_against_quaternion_composition():
    np.testing.assert_allclose(euler_to_axis_angle([0, 0, 0.5]), [0, 0, 0.5], atol=1e-12)
    np.testing.assert_allclose(euler_to_axis_angle([-0.3, 0, 0]), [-0.3, 0, 0], atol=1e-12)
    rpy = (0.1, 0.2, 0.3)
    # independent route: q = qz * qy * qx, axis-angle = 2 acos(w) * v / |v|
    half = [np.array([math.sin(a / 2) * e for e in axis] + [math.cos(a / 2)])
            for a, axis in zip(rpy, ([1, 0, 0], [0, 1, 0], [0, 0, 1]))]
    q = qmul(qmul(half[2], half[1]), half[0])
    expected = 2 * math.acos(q[3]) * q[:3] / np.linalg.norm(q[:3])
    np.testing.assert_allclose(euler_to_axis_angle(rpy), expected, atol=1e-12)
    np.testing.assert_allclose(expected, [0.06892461, 0.21322593, 0.28874894], atol=1e-6)
    np.testing.assert_allclose(axis_angle_to_euler(expected), rpy, atol=1e-12)
    # and against scipy's extrinsic 'xyz' (= static axes) for random angles
    from scipy.spatial.transform import Rotation
    rng = np.random.default_rng(4)
    for rpy in rng.uniform([-3, -1.5, -3], [3, 1.5, 3], (50, 3)):
        ref = Rotation.from_euler("xyz", rpy)
        np.testing.assert_allclose(euler_to_axis_angle(rpy), ref.as_rotvec(), atol=1e-9)
        np.testing.assert_allclose(matrix_to_euler(ref.as_matrix()), ref.as_euler("xyz"), atol=1e-9)


def test_libero_quaternion_to_axis_angle_keeps_robosuites_convention():
    assert quat_to_axis_angle([0, 0, 0, 1]).tolist() == [0, 0, 0]
    np.testing.assert_allclose(quat_to_axis_angle([0, math.sin(0.5), 0, math.cos(0.5)]), [0, 1.0, 0], atol=1e-12)
    # w < 0: angle 3pi/2 about +x, not the canonical -pi/2 (the LIBERO checkpoints were trained on this)
    np.testing.assert_allclose(quat_to_axis_angle([S2, 0, 0, -S2]), [1.5 * math.pi, 0, 0], atol=1e-9)
    # the gripper-down pose LIBERO starts in: ~pi about x
    v = quat_to_axis_angle([0.9996059, -1.828e-4, -2.807109e-2, -7.129e-5])
    assert abs(np.linalg.norm(v) - math.pi) < 2e-3 and v[0] > 3.1


# ---------------------------------------------------------------------------------------------- LIBERO protocol
def test_libero_state_images_and_prompt():
    obs = {"robot0_eef_pos": [0.1, -0.2, 1.0], "robot0_eef_quat": [0, 0, S2, S2], "robot0_gripper_qpos": [0.04, -0.039],
           "agentview_image": np.arange(12, dtype=np.uint8).reshape(2, 2, 3),
           "robot0_eye_in_hand_image": np.zeros((2, 2, 3), np.uint8)}
    state = libero.libero_state(obs)
    assert state.dtype == np.float64 and state.shape == (8,)  # float64, as the official client's payload
    np.testing.assert_allclose(state, [0.1, -0.2, 1.0, 0, 0, math.pi / 2, 0.04, -0.039], atol=1e-6)
    images = libero.libero_images(obs)
    assert list(images) == ["Base View", "Left-Wrist View"]
    assert images["Base View"][0, 0].tolist() == [9, 10, 11] and images["Base View"][1, 1].tolist() == [0, 1, 2]
    assert libero.libero_prompt("pick up the black bowl") == "Pick up the black bowl."
    assert libero.libero_prompt("put both the Alphabet soup in it") == "Put both the alphabet soup in it."  # capitalize()
    request = libero.libero_request(obs, "pick up the BLACK bowl")
    assert sorted(request) == ["base", "language", "state", "task_id", "wrist_left"]
    assert request["language"] == "Pick up the black bowl" and request["task_id"] == "libero_all"
    assert request["state"].dtype == np.float64 and request["state"].shape == (32,)
    assert request["base"].mode == "RGB" and np.array_equal(np.asarray(request["base"]), images["Base View"])
    assert libero.SUITES == {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520}
    assert libero.NOOP.tolist() == [0, 0, 0, 0, 0, 0, -1]


class _Env:
    """A fake per-tick-delta environment for the executor protocol."""

    def __init__(self, succeed_at=None):
        self.actions, self.success, self.succeed_at = [], False, succeed_at

    def observe(self):
        return {"images": {}, "state": np.zeros(8, np.float32), "prompt": "x."}

    def act(self, action):
        self.actions.append(np.asarray(action))
        self.success = self.succeed_at is not None and len(self.actions) >= self.succeed_at


class _Chunks:
    def __init__(self, T=10):
        self.T, self.calls = T, 0

    def __call__(self, obs, prefix=None):
        self.calls += 1
        chunk = np.zeros((self.T, 7))
        chunk[:, 0] = 100 * self.calls + np.arange(self.T)  # call id and index, to read back what ran
        return chunk


def test_sync_executor_runs_whole_chunks_and_stops_on_success():
    env, pol = _Env(), _Chunks()
    libero.make_executor("sync", env, pol, 10, None, None).run(25, stop=lambda: env.success)
    ran = [int(a[0]) for a in env.actions]
    assert pol.calls == 3 and ran == list(range(100, 110)) + list(range(200, 210)) + list(range(300, 305))
    env, pol = _Env(succeed_at=13), _Chunks()
    libero.make_executor("sync", env, pol, 10, None, None).run(220, stop=lambda: env.success)
    assert len(env.actions) == 13 and pol.calls == 2
    with pytest.raises(ValueError, match="--replan"):
        libero.make_executor("sync", _Env(), _Chunks(), 10, 11, None)


def test_async_executor_sends_a_prefix_and_keeps_moving():
    prefixes = []

    class Pol(_Chunks):
        def __call__(self, obs, prefix=None):
            prefixes.append(None if prefix is None else prefix.shape)
            return super().__call__(obs, prefix)

    env, pol = _Env(), Pol()
    trace = libero.make_executor("async", env, pol, 10, None, 80.0).run(40)  # 80 ms = 2 ticks at 20 Hz
    assert len(env.actions) == 40 and pol.calls >= 4
    assert prefixes[0] is None and all(p is not None and p[1] == 7 for p in prefixes[1:])
    assert not any(t.idle for t in trace.ticks[1:])  # the old chunk covers the latency: no waiting


class _Policy:
    """Duck-typed XR0Policy: records what sample() received."""

    def __init__(self, robots):
        from types import SimpleNamespace

        self.robots, self.seen = robots, []
        self.config = SimpleNamespace(max_prefix=6)

    def robot(self, name):
        return self.robots[name]

    def sample(self, images, instruction, state, prefix=None, seed=0, robot_type=None, steps=None):
        self.seen.append(dict(state=state, prefix=prefix, seed=seed, robot_type=robot_type))
        return np.tile(np.arange(self.robots[robot_type].action_dim, dtype=np.float32), (10, 1))


def test_chunk_policy_pads_state_and_prefix_and_seeds_by_observation():
    pol = _Policy({"default": RobotSpec.identity(10)})  # a random preset: one robot type, 32/32 wide
    cp = libero.libero_policy(pol)
    assert cp.robot_type == "default"
    obs = {"images": {"Base View": np.zeros((4, 4, 3), np.uint8)}, "state": np.arange(8, dtype=np.float32),
           "prompt": "Pick."}
    out = cp(obs, np.ones((3, 7)))
    assert out.shape == (10, 7) and out[0].tolist() == list(range(7))
    seen = pol.seen[-1]
    assert seen["state"].shape == (32,) and seen["state"][:8].tolist() == list(range(8)) and not seen["state"][8:].any()
    assert seen["prefix"].shape == (3, 32) and seen["prefix"][:, :7].all() and not seen["prefix"][:, 7:].any()
    cp(obs)
    assert pol.seen[-1]["seed"] == seen["seed"]  # same observation, same noise
    obs["images"]["Base View"][0, 0, 0] = 1
    cp(obs)
    assert pol.seen[-1]["seed"] != seen["seed"]
    two = _Policy({"a": RobotSpec.identity(10), "b": RobotSpec.identity(10)})
    with pytest.raises(ValueError, match="no robot type 'libero_all'"):
        libero.libero_policy(two)


def test_observation_seed_is_the_official_hash_data_to_seed():
    """The official clients' hash: SHA-256 of the canonical JSON text written out here by hand (arrays as
    dtype/shape/hex of their bytes, PIL images as mode/size/MD5), modulo 2**32."""
    import hashlib

    img = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    payload = {"task_id": "libero_all", "state": np.array([1.0, -2.0]), "language": "Pick it",
               "base": Image.fromarray(img)}
    text = ('{"base":{"__type__":"PIL.Image","content_hash":"' + hashlib.md5(img.tobytes()).hexdigest()
            + '","mode":"RGB","size":[2,2]},"language":"Pick it","state":{"__type__":"numpy","data":"'
            + "000000000000f03f00000000000000c0" + '","dtype":"float64","shape":[2]},"task_id":"libero_all"}')
    assert observation_seed(payload) == int(hashlib.sha256(text.encode()).hexdigest(), 16) % 2 ** 32
    reordered = dict(reversed(list(payload.items())))
    assert observation_seed(reordered) == observation_seed(payload)
    payload["state"] = payload["state"].astype(np.float32)  # the dtype is part of the payload
    assert observation_seed(reordered) != observation_seed(payload)


# ---------------------------------------------------------------------------------------------- LIBERO bookkeeping
def _rec(t, e, ok, steps=50):
    return {"suite": "libero_goal", "task_id": t, "episode": e, "success": ok, "steps": steps, "task": f"task{t}"}


def test_records_resume_and_summary(tmp_path):
    for r in [_rec(0, 0, True), _rec(0, 1, False), _rec(2, 0, True)]:
        libero.append_record(tmp_path, r)
    with open(tmp_path / libero.RECORDS, "a") as f:
        f.write('{"suite": "libero_goal", "task_id": 2, "epi')  # a writer killed mid-line
    libero.append_record(tmp_path, _rec(2, 1, True))
    recs = libero.read_records(tmp_path)
    assert [(r["task_id"], r["episode"]) for r in recs] == [(0, 0), (0, 1), (2, 0), (2, 1)]
    assert libero.pending(recs, "libero_goal", [0, 2, 5], 3) == [(0, 2), (2, 2), (5, 0), (5, 1), (5, 2)]
    s = libero.summarize(recs, "libero_goal", [0, 2], 2)
    assert s["success_rate"] == 0.75 and s["complete"] and s["tasks"]["0"]["success_rate"] == 0.5
    s = libero.summarize(recs, "libero_goal", [0, 2, 5], 3)
    assert s["episodes"] == 4 and s["expected_episodes"] == 9 and not s["complete"]
    assert s["tasks"]["5"]["success_rate"] is None


def test_run_file_refuses_other_settings(tmp_path):
    a = libero.Settings("libero_10", None, "tiny", 520)
    libero.check_run_file(tmp_path, a)
    libero.check_run_file(tmp_path, a)  # same settings: resume
    with pytest.raises(ValueError, match="max_steps: 520 there, 30 now"):
        libero.check_run_file(tmp_path, libero.Settings("libero_10", None, "tiny", 30))


def test_work_split_is_balanced_and_keeps_tasks_together():
    todo = [(t, e) for t in range(10) for e in range(50)]
    shards = libero.split_work(todo, 4)
    assert sorted(p for s in shards for p in s) == todo and max(map(len, shards)) - min(map(len, shards)) <= 50
    assert all(len({t for t, _ in s}) <= 4 for s in shards)
    one = libero.split_work([(3, e) for e in range(50)], 4)  # one task over 4 workers: split its episodes
    assert [len(s) for s in one] == [13, 13, 13, 11]
    assert libero.split_work([(0, 0)], 8) == [[(0, 0)]]


def test_install_hints_when_simulators_are_missing(monkeypatch):
    for name in ("libero", "libero.libero", "libero.libero.envs"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(libero.LiberoNotInstalled, match="make libero.*requirements-libero.txt"):
        libero.require_libero()
    from xr0.sim import libero_cli
    assert libero_cli.main(["--preset", "tiny", "--suite", "libero_10"]) == 2
    monkeypatch.setitem(sys.modules, "calvin_env", None)
    with pytest.raises(calvin.CalvinNotInstalled, match="not on PyPI"):
        calvin.require_calvin()
    monkeypatch.setitem(sys.modules, "simpler_env", None)
    with pytest.raises(simpler.SimplerNotInstalled, match="not on PyPI"):
        simpler.require_simpler()


def test_eval_calvin_and_simpler_commands(monkeypatch, capsys):
    """`xr0 eval calvin|simpler`: --help works; without the simulator the command names the install step (exit 2)
    before loading any model; a bad --noise-seed is named."""
    from xr0.cli import main

    for bench in ("calvin", "simpler"):
        with pytest.raises(SystemExit) as e:
            main(["eval", bench, "--help"])
        assert e.value.code == 0 and "--noise-seed" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "calvin_env", None)
    monkeypatch.setitem(sys.modules, "simpler_env", None)
    assert main(["eval", "calvin", "--checkpoint", "nowhere", "--dataset", "d", "--config", "c"]) == 2
    assert "CALVIN is not installed" in capsys.readouterr().err
    assert main(["eval", "simpler", "--checkpoint", "nowhere", "--env-options", "x.json"]) == 2
    assert "pip install -e ManiSkill2_real2sim" in capsys.readouterr().err
    assert main(["eval", "simpler", "--preset", "tiny", "--env-options", "x.json", "--noise-seed", "abc"]) == 2
    assert "--noise-seed must be 'official' or an integer" in capsys.readouterr().err
    assert common.noise_seeds("official") is None and common.noise_seeds("7")(3) == 7


# ---------------------------------------------------------------------------------------------- CALVIN
def test_calvin_state_prompt_gripper_and_chunk():
    robot_obs = np.arange(15, dtype=np.float32) / 10
    np.testing.assert_allclose(calvin.calvin_state(robot_obs), np.arange(7) / 10, rtol=1e-6)
    assert calvin.calvin_prompt("lift the RED block") == "Lift the red block."  # str.capitalize()
    assert [calvin.calvin_gripper(v) for v in (0.3, 1e-6, 0.0, -0.2)] == [1, 1, -1, -1]
    chunk = np.zeros((10, 33))
    chunk[:, 6] = np.linspace(-1, 1, 10)
    chunk[:, 32] = 7  # the trailing "prob" column is dropped with everything past dim 7
    acts = calvin.calvin_actions(chunk)
    assert acts.shape == (10, 7) and acts[:, 6].tolist() == [-1] * 5 + [1] * 5
    assert calvin.robot_type("ABCD") == "calvin_abcd_orig"
    with pytest.raises(ValueError, match="split"):
        calvin.robot_type("d")


def test_center_crop_matches_the_official_offsets():
    img = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    out = center_crop_resize(img, 0.95)
    ref = np.asarray(Image.fromarray(img[5:195, 5:195]).resize((200, 200), Image.BILINEAR))  # 190 px, top 5
    assert out.shape == img.shape and np.array_equal(out, ref)
    g = np.random.default_rng(1).integers(0, 256, (84, 84, 3), dtype=np.uint8)
    ref = np.asarray(Image.fromarray(g[2:81, 2:81]).resize((84, 84), Image.BILINEAR))  # int(79.8) = 79, top 2
    assert np.array_equal(center_crop_resize(g, 0.95), ref)
    images = calvin.calvin_images(img, g)  # sent at the cameras' own sizes: the processor sizes them
    assert [v.shape for v in images.values()] == [(200, 200, 3), (84, 84, 3)]


def test_calvin_observation_and_sequence_shuffle():
    rng = np.random.default_rng(2)
    obs = {"rgb_obs": {"rgb_static": rng.integers(0, 256, (200, 200, 3), dtype=np.uint8),
                       "rgb_gripper": rng.integers(0, 256, (84, 84, 3), dtype=np.uint8)},
           "robot_obs": np.arange(15, dtype=np.float32)}
    o = calvin.calvin_observation(obs, "open the drawer", "abc")
    assert o["prompt"] == "Open the drawer." and o["state"].tolist() == list(range(7))
    request = calvin.calvin_request(o["state"], o["images"], "open the drawer", "abc")
    assert request["task_id"] == "calvin_abc_orig" and request["language"] == "Open the drawer"  # "." after hashing
    assert request["state"].dtype == np.float64 and request["state"].shape == (32,)
    assert request["wrist_left"].size == (84, 84)
    assert o["seed"] == observation_seed(request)
    seqs = list(range(1200))
    legacy = list(seqs)
    random.seed(42)
    random.shuffle(legacy)
    assert calvin.shuffled_sequences(seqs) == legacy[:1000]
    assert calvin.average_length([5, 3, 0, 1]) == {"avg_len": 2.25, "success_at": [0.75, 0.5, 0.5, 0.25, 0.25]}


# ---------------------------------------------------------------------------------------------- SimplerEnv
def _wxyz(r):
    x, y, z, w = matrix_to_quat(r)
    return [w, x, y, z]


def test_bridge_state_is_relative_to_the_top_down_pose():
    eef = [0.3, -0.1, 0.2, *_wxyz(simpler.TOPDOWN), 0.8]
    np.testing.assert_allclose(simpler.bridge_state(eef), [0.3, -0.1, 0.2, 0, 0, 0, 0, 0.8], atol=1e-6)
    eef = [0, 0, 0, *_wxyz(rz(0.3) @ rx(0.2) @ simpler.TOPDOWN), 0.1]
    np.testing.assert_allclose(simpler.bridge_state(eef)[3:], [0.2, 0, 0.3, 0, 0.1], atol=1e-6)
    with pytest.raises(ValueError, match="8 numbers"):
        simpler.bridge_state([0] * 7)


def test_fractal_state_reorders_and_canonicalises_the_quaternion():
    w, x, y, z = -S2, 0.0, 0.0, -S2  # = +90 deg about z with a negative w
    state = simpler.fractal_state([1, 2, 3, w, x, y, z, 0.25])
    np.testing.assert_allclose(state, [1, 2, 3, 0, 0, S2, S2, 0.75], atol=1e-6)


def test_simpler_gripper_and_action_conversion():
    assert [simpler.bridge_gripper(v) for v in (0.9, 0.51, 0.5, 0.0)] == [1, 1, -1, -1]
    assert [simpler.fractal_gripper(v) for v in (1.0, 0.0, 0.5, 1.7, -0.4)] == [-1, 1, 0, -1, 1]
    a = simpler.env_action([0.01, 0.02, 0.03, 0.0, 0.0, 0.2, 0.9, 5.0], simpler.BRIDGE)
    np.testing.assert_allclose(a, [0.01, 0.02, 0.03, 0, 0, 0.2, 1.0], atol=1e-12)
    a = simpler.env_action([0, 0, 0, 0.1, 0.2, 0.3, 0.0], simpler.FRACTAL)
    np.testing.assert_allclose(a[3:6], [0.06892461, 0.21322593, 0.28874894], atol=1e-6)
    assert a[6] == 1.0


def test_simpler_images_and_observation():
    img = np.random.default_rng(3).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert simpler.simpler_image(img, simpler.BRIDGE).shape == (256, 256, 3)
    assert simpler.simpler_image(img, simpler.FRACTAL).shape == (256, 320, 3)
    eef = [0.3, -0.1, 0.2, 1, 0, 0, 0, 1.0]
    o = simpler.simpler_observation(img, eef, "put the spoon on the Towel", simpler.FRACTAL)
    assert list(o["images"]) == ["Ego View"] and o["prompt"] == "Put the spoon on the Towel."  # rest kept
    request = simpler.simpler_request(o["images"]["Ego View"], o["state"], "put the spoon on the Towel",
                                      simpler.FRACTAL)
    assert request["language"] == ("<|im_start|>user\nThe following observations are captured from multiple views.\n"
                                   "# Ego View\n<|vision_start|><|image_pad|><|vision_end|>\nGenerate robot actions for "
                                   "the task:\nPut the spoon on the Towel. /no_cot<|im_end|>\n<|im_start|>assistant\n"
                                   "<cot></cot><|im_end|>\n")
    assert request["state"].shape == (1, 1, 32) and request["state"].dtype == np.float64
    assert request["base"].size == (320, 256) and o["seed"] == observation_seed(request)
    bridge = simpler.bridge_state([0.3, -0.1, 0.2, *_wxyz(simpler.TOPDOWN), 0.8])
    assert bridge[6] == 0 and bridge[7] == 0.8  # the zero inserted before the gripper
    assert o["state"].tolist() == pytest.approx([0.3, -0.1, 0.2, 0, 0, 0, 1, 0])
    assert simpler.embodiment("widowx") is simpler.BRIDGE


def test_common_module_needs_no_simulator():
    import subprocess

    code = ("import sys, xr0.sim.common, xr0.sim.calvin, xr0.sim.simpler; "
            "bad = [m for m in ('libero', 'calvin_env', 'simpler_env', 'mujoco', 'torch') if m in sys.modules]; "
            "assert not bad, bad")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert callable(ChunkPolicy)


# ---------------------------------------------------------------------------------------------- slow: real LIBERO
@pytest.mark.slow
def test_libero_episode_with_tiny_preset_and_resume(tmp_path, capsys):
    pytest.importorskip("libero.libero", reason=libero.INSTALL_HINT)
    from xr0.sim import libero_cli

    args = ["--preset", "tiny", "--suite", "libero_spatial", "--tasks", "0", "--episodes", "1", "--max-steps", "24",
            "--out", str(tmp_path), "--json"]
    assert libero_cli.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["complete"] and out["new_episodes"] == 1 and out["episodes"] == 1
    rec = libero.read_records(tmp_path)[0]
    assert rec["steps"] == 24 and rec["inferences"] == 3 and rec["success"] is False  # random weights
    with capsys.disabled():
        print("\nLIBERO tiny smoke timing:", json.dumps(out["timing"]), "wall_s", out["wall_s"])
    assert libero_cli.main(args) == 0  # resumed: nothing left to run
    again = json.loads(capsys.readouterr().out)
    assert again["new_episodes"] == 0 and again["tasks"] == out["tasks"]
