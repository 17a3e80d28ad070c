"""Serving real robots: openpi's own client package against `xr0 serve --obs-map`, seeds, the serving set-up per
robot type (fixed DiT buffers, warm-up), the prefix and hold rules that keep a robot safe."""

from __future__ import annotations

import http.client
import json

import numpy as np
import pytest
import torch

from xr0 import XR0Policy
from xr0.runtime import AsyncExecutor, IdentityActions, RTCExecutor, SimClock
from xr0.runtime.client import PolicyClient, PolicyServerError
from xr0.runtime.obs_maps import ObsMap
from xr0.runtime.server import PolicyServer, prepare_for_serving

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def embedded() -> XR0Policy:
    return XR0Policy.from_pretrained("embedded")


def openpi_libero_observation(policy: XR0Policy, rng, prompt: str | None = "pick up the black bowl") -> dict:
    """The observation openpi's LIBERO example client sends (examples/libero/main.py): its keys, 224x224 uint8
    images (resize_with_pad); the state at the serving checkpoint's width (the example's is LIBERO's 8)."""
    obs = {"observation/image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
           "observation/wrist_image": rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
           "observation/state": rng.normal(size=policy.robot().state_dim).astype(np.float32)}
    if prompt is not None:
        obs["prompt"] = prompt
    return obs


def test_openpi_client_unchanged_against_obs_map(embedded):
    """openpi-client's WebsocketClientPolicy, as its examples call it: 20 chunks; a missing prompt raises
    RuntimeError naming `prompt` (a text frame) and the connection keeps serving."""
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    rng = np.random.default_rng(0)
    with PolicyServer(embedded, port=0, obs_map=ObsMap.load("openpi-libero")) as srv:
        client = WebsocketClientPolicy(host="127.0.0.1", port=srv.port)
        meta = client.get_server_metadata()
        assert meta["obs_map"] == "openpi-libero" and meta["chunk_len"] == embedded.robot().chunk_len
        for _ in range(20):
            reply = client.infer(openpi_libero_observation(embedded, rng))
            assert reply["actions"].shape == (embedded.robot().chunk_len, 4)
            assert np.isfinite(reply["actions"]).all()
            assert reply["policy_timing"]["infer_ms"] > 0 and reply["server_timing"]["infer_ms"] > 0
        with pytest.raises(RuntimeError) as err:
            client.infer(openpi_libero_observation(embedded, rng, prompt=None))
        error = json.loads(str(err.value).split("\n", 1)[1])["error"]
        assert error["field"] == "prompt" and "missing" in error["message"]
        with pytest.raises(RuntimeError, match="observation/extra.*unknown field"):
            client.infer({**openpi_libero_observation(embedded, rng), "observation/extra": np.zeros(3)})
        with pytest.raises(RuntimeError, match="observation/state"):
            client.infer({**openpi_libero_observation(embedded, rng), "observation/state": np.zeros(9, np.float32)})
        assert client.infer(openpi_libero_observation(embedded, rng))["actions"].shape[1] == 4  # still serving
        with PolicyClient("127.0.0.1", srv.port) as own:  # xr0's client parses the same text frame
            with pytest.raises(PolicyServerError) as e:
                own.infer(openpi_libero_observation(embedded, rng, prompt=None))
            assert e.value.field == "prompt"


def test_obs_maps_and_their_errors():
    aloha = ObsMap.load("openpi-aloha")
    cams = ["a", "b", "c", "d"]
    obs = {"images": {k: np.zeros((3, 48, 64), np.uint8) for k in ("cam_high", "cam_low", "cam_left_wrist",
                                                                     "cam_right_wrist")},
           "state": np.arange(14, dtype=np.float32), "prompt": "fold"}
    out = aloha.apply(obs, cams)
    assert list(out["images"]) == cams and out["images"]["a"].shape == (48, 64, 3)  # channels-first transposed
    droid = ObsMap.load("openpi-droid").apply({"observation/exterior_image_1_left": np.zeros((32, 32, 3), np.uint8),
                                              "observation/wrist_image_left": np.zeros((32, 32, 3), np.uint8),
                                              "observation/joint_position": np.arange(7.0),
                                              "observation/gripper_position": np.array([0.5]), "prompt": "x",
                                              "seed": 3}, ["Base View", "Wrist"])
    assert droid["state"].tolist() == [0, 1, 2, 3, 4, 5, 6, 0.5] and droid["seed"] == 3  # xr0 fields pass through
    with pytest.raises(ValueError, match="maps 2 image keys .* 4 cameras"):
        ObsMap.load("openpi-libero").check_cameras(cams)
    with pytest.raises(ValueError, match="neither a built-in map"):
        ObsMap.load("openpi-nothing")
    with pytest.raises(Exception, match="images/cam_low: missing"):
        aloha.apply({**obs, "images": {"cam_high": obs["images"]["cam_high"]}}, cams)


def test_seeds_fresh_by_default_or_from_the_observation(embedded):
    rng = np.random.default_rng(1)
    obs = openpi_libero_observation(embedded, rng)
    request = {"images": dict(zip(embedded.robot().cameras, (obs["observation/image"], obs["observation/wrist_image"]))),
               "state": obs["observation/state"], "prompt": "reach"}
    with PolicyServer(embedded, port=0, strict_image_size=False) as srv, PolicyClient("127.0.0.1", srv.port) as c:
        a, b = c.infer(request), c.infer(request)
        assert a["seed"] != b["seed"] and not np.array_equal(a["actions"], b["actions"])  # a fresh draw each time
        again = c.infer({**request, "seed": a["seed"]})  # the reply's seed replays the chunk
        np.testing.assert_array_equal(again["actions"], a["actions"])
    with PolicyServer(embedded, port=0, strict_image_size=False, seed_mode="observation") as srv, \
            PolicyClient("127.0.0.1", srv.port) as c:
        a, b = c.infer(request), c.infer(request)
        assert a["seed"] == b["seed"] and np.array_equal(a["actions"], b["actions"])
        assert c.infer({**request, "prompt": "reach it"})["seed"] != a["seed"]
        conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
        conn.request("GET", "/stats")
        stats = json.loads(conn.getresponse().read())
        assert stats["chunks"] == 3 and 0 < stats["infer_ms_p50"] <= stats["infer_ms_p95"]
        assert stats["infer_ms_p50"] <= stats["server_ms_p50"]


def test_serving_setup_per_robot_type_matches_the_eager_path():
    """Fixed DiT buffers per chunk length (the CUDA-graph path's static shapes, run on the CPU), warm-up included:
    the same chunks as the eager loop; a longer prompt falls back to the eager loop."""
    from xr0.processing import RobotSpec

    policy = XR0Policy.from_preset("tiny", robots={"ten": RobotSpec.identity(10, 7, 8), "four": RobotSpec.identity(4, 7, 8)})
    rng = np.random.default_rng(2)
    images = {c: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for c in policy.config.cameras}
    state = rng.normal(size=8).astype(np.float32)
    eager = {n: policy.sample(images, "stack the cups", state, robot_type=n, seed=4) for n in policy.robots}
    info = prepare_for_serving(policy)
    assert set(info) == {"ten", "four"} and all(v["warmup_ms"] > 0 and not v["cuda_graph"] for v in info.values())
    assert set(policy.model._static_denoisers) == {10, 4}
    for n in policy.robots:
        np.testing.assert_allclose(policy.sample(images, "stack the cups", state, robot_type=n, seed=4), eager[n],
                                   atol=1e-5)
    long = "stack the cups " * 40  # more VLM tokens than the buffers hold: the eager loop, the same numbers
    ref = policy.sample(images, long, state, robot_type="ten", seed=4)
    policy.model.use_static_denoiser(None)
    np.testing.assert_allclose(ref, policy.sample(images, long, state, robot_type="ten", seed=4), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the GPU issue's script runs it)")
def test_serving_on_cuda_with_cuda_graphs():
    policy = XR0Policy.from_preset("tiny", device="cuda", dtype=torch.bfloat16)
    info = prepare_for_serving(policy)
    assert all(v["cuda_graph"] for v in info.values())
    with PolicyServer(policy, port=0) as srv, PolicyClient("127.0.0.1", srv.port) as c:
        h, w = policy.config.image_size
        reply = c.infer({"images": {cam: np.zeros((h, w, 3), np.uint8) for cam in policy.config.cameras},
                         "state": np.zeros(32, np.float32), "prompt": "pick"})
        assert reply["actions"].shape == (policy.config.chunk_len, 32)


# ---------------------------------------------------------------------------------------------- safe defaults
class _Env:
    def __init__(self):
        self.actions = []

    def observe(self):
        return {}

    def act(self, action):
        self.actions.append(np.asarray(action))


def test_async_executor_takes_the_policys_max_prefix_and_refuses_more():
    def policy(obs, prefix=None, prefix_weights=None):
        return np.ones((10, 4))

    policy.max_prefix = 3
    ex = AsyncExecutor(_Env(), policy, SimClock(0.1))
    assert ex.max_prefix == 3  # not the global 6
    with pytest.raises(ValueError, match="exceeds the longest clean prefix .* RTCExecutor"):
        AsyncExecutor(_Env(), policy, SimClock(0.1), max_prefix=6)
    policy.max_prefix = 0  # a release folder: no clean prefix at all
    with pytest.raises(ValueError, match="not trained with clean action prefixes"):
        AsyncExecutor(_Env(), policy, SimClock(0.1))
    RTCExecutor(_Env(), policy, SimClock(0.1))  # guidance needs no prefix training


def test_sample_refuses_a_clean_prefix_longer_than_trained(tmp_path):
    from test_release_e2e import build_release_folder

    release = XR0Policy.from_pretrained(build_release_folder(tmp_path))
    assert release.config.max_prefix == 0
    x = dict(images=[np.zeros((64, 64, 3), np.uint8)] * 2, instruction="pick", state=np.zeros(8, np.float32),
             robot_type="libero_all")
    with pytest.raises(ValueError, match="longest clean prefix this checkpoint was trained with is 0.*RTC"):
        release.sample(**x, prefix=np.zeros((2, 7), np.float32))
    guided = release.sample(**x, prefix=np.zeros((2, 7), np.float32), prefix_weights=np.ones(2, np.float32))
    assert guided.shape == (10, 7)


def test_a_held_tick_sends_zero_motion_on_delta_dims(embedded):
    """The embedded checkpoint records MetaWorld's xyz as per-tick deltas: a late chunk holds the arm still
    (gripper kept) by default, without the caller naming an action space."""
    from xr0.sim.common import ChunkPolicy

    assert embedded.robot().delta_dims == (0, 1, 2) and embedded.metadata()["delta_dims"] == [0, 1, 2]
    chunk = ChunkPolicy(embedded, None, act_dims=4)
    assert chunk.delta_dims == (0, 1, 2) and chunk.max_prefix == embedded.config.max_prefix
    ex = AsyncExecutor(_Env(), chunk, SimClock(0.1))
    assert isinstance(ex.action_space, IdentityActions)
    np.testing.assert_array_equal(ex.action_space.hold(np.array([0.3, -0.2, 0.1, 0.8])), [0, 0, 0, 0.8])
    release_like = IdentityActions()  # no delta dims recorded: holding repeats the (absolute) command
    np.testing.assert_array_equal(release_like.hold(np.array([0.3, 0.8])), [0.3, 0.8])


def test_realtime_metaworld_over_the_socket(embedded):
    """The robot side alone: MetaWorld on the wall clock, chunks from the server over the socket (a short run;
    docs/latency.md has the 12-episode table). A server of another policy is refused by name."""
    from xr0.sim.metaworld_eval import checkpoint_setup, evaluate, render_view

    setup = checkpoint_setup("embedded")
    with PolicyServer(embedded, port=0) as srv:
        result, traces = evaluate(embedded, ["reach-v3"], 1, "async", seed=1000, max_ticks=30, progress=False,
                                  server=f"ws://127.0.0.1:{srv.port}", realtime=True, **render_view(setup))
    assert result["realtime"] and result["episodes"] == 1 and result["errors"] == 0
    assert 0 < result["control_rate_held_hz"] <= 40.5 and result["round_trip_ms_p50"] > 0
    assert result["tick_jitter_ms_p50"] >= 0 and traces[("reach-v3", 0)].ticks
    with PolicyServer(XR0Policy.from_preset("tiny"), port=0) as other:
        with pytest.raises(ValueError, match="serves another policy"):
            evaluate(embedded, ["reach-v3"], 1, "async", max_ticks=5, progress=False,
                     server=f"ws://127.0.0.1:{other.port}", realtime=True, **render_view(setup))
