"""XR0Policy (src/xr0/policy.py): input checks, the official layout, checkpoint files and their loading."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import random_observation
from xr0 import RobotSpec, XR0Policy
from xr0.model.weights import load_strict
from xr0.inspect import official_layout


# ---------------------------------------------------------------- bad input
def test_bad_input_names_the_problem(tiny):
    obs = random_observation(tiny)
    cases = [
        (dict(state=np.zeros(31)), "state: expected shape (32,)"),
        (dict(state=np.full(32, np.nan)), "state: contains NaN"),
        (dict(state="zeros"), "state: expected numbers"),
        (dict(images=None), "images: none given"),
        (dict(images={"Base View": obs["images"]["Base View"]}), "images['Left-Wrist View']: missing camera"),
        (dict(images={**obs["images"], "Top": obs["images"]["Base View"]}), "images['Top']: unknown camera"),
        (dict(images={c: im.astype(np.float32) for c, im in obs["images"].items()}), "images['Base View']: expected dtype uint8"),
        (dict(images={c: im[..., :2] for c, im in obs["images"].items()}), "expected shape (H, W, 3)"),
        (dict(prefix=np.zeros((7, 32))), "prefix: too long: p=7 > 6 (the longest clean prefix"),
        (dict(prefix=np.zeros((3, 33))), "prefix: expected shape (p, 32)"),
        (dict(prefix=np.full((2, 32), np.inf)), "prefix: contains NaN"),
        (dict(instruction=""), "instruction: empty"),
        (dict(steps=0), "steps: expected an int in [1, 128]"),
        (dict(robot_type="ur5"), "unknown robot_type"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=re.escape(message)):
            tiny.sample(**{**obs, **change})


# ---------------------------------------------------------------- layout and checkpoints
def test_official_layout_on_meta():
    policy = XR0Policy.from_preset("xr0-4b", device="meta")
    state = policy.model.state_dict()
    assert all(t.device.type == "meta" for t in state.values())
    official = official_layout()  # src/xr0/assets/official_layout.tsv: the released tensor names and shapes
    ours = {k: tuple(v.shape) for k, v in state.items() if not k.startswith("vlm.")}
    assert ours == official
    assert sum(np.prod(s) for s in ours.values()) == 278_458_368
    vlm = [k for k in state if k.startswith("vlm.") and k != "vlm.lm_head.weight"]
    assert len(vlm) == 713  # 398 text + 315 vision, the tied lm_head is not stored
    total = sum(p.numel() for p in policy.model.parameters())
    assert 4.6e9 < total < 4.8e9


def test_save_load_sample_is_bit_identical(tiny, tmp_path):
    robots = {"arm": RobotSpec(np.full((10, 32), 0.5), np.full((10, 32), 2.0), np.r_[np.ones(7), np.zeros(25)],
                               np.zeros(32), np.ones(32), action_dim=7, state_dim=8)}
    policy = XR0Policy.from_preset("tiny", seed=3, robots=robots)
    obs = random_observation(policy)
    obs["state"] = obs["state"][:8]
    before = policy.sample(**obs, seed=11)
    assert before.shape == (10, 7)
    policy.save_pretrained(tmp_path / "ckpt")
    loaded = XR0Policy.from_pretrained(tmp_path / "ckpt")
    after = loaded.sample(**obs, seed=11)
    assert np.array_equal(before, after)
    assert loaded.metadata()["norm_stats_hash"] == policy.metadata()["norm_stats_hash"]
    assert loaded.model.vlm.lm_head.weight is loaded.model.vlm.model.language_model.embed_tokens.weight
    assert not np.array_equal(after, loaded.sample(**obs, seed=12))


def test_corrupt_checkpoint_is_a_clear_error(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "ok")
    weights = tmp_path / "ok" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        XR0Policy.from_pretrained(tmp_path / "ok")
    with pytest.raises(FileNotFoundError, match="config.json"):
        XR0Policy.from_pretrained(tmp_path / "nowhere")
    tiny.save_pretrained(tmp_path / "stats")
    (tmp_path / "stats" / "normalization.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ValueError, match="normalization.safetensors"):
        XR0Policy.from_pretrained(tmp_path / "stats")
    (tmp_path / "stats" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        XR0Policy.from_pretrained(tmp_path / "stats")


def test_checkpoint_manifest_names_a_changed_file(tiny, tmp_path):
    """config.json carries the SHA-256 of the weight and statistics files; a flipped byte that still parses as
    safetensors (a silently different weight) is caught and the file named; a folder without a manifest loads."""
    tiny.save_pretrained(tmp_path / "ok")
    meta = json.loads((tmp_path / "ok" / "config.json").read_text())
    assert set(meta["sha256"]) == {"model.safetensors", "normalization.safetensors"}
    weights = tmp_path / "ok" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor's bytes: the header still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"model.safetensors does not match the sha256 manifest"):
        XR0Policy.from_pretrained(tmp_path / "ok")
    del meta["sha256"]
    (tmp_path / "ok" / "config.json").write_text(json.dumps(meta))
    XR0Policy.from_pretrained(tmp_path / "ok")  # an older checkpoint: nothing to verify


def test_strict_load_lists_missing_and_unexpected(tiny):
    state = dict(tiny.model.state_dict())
    state.pop("sink.weight")
    state["dit.layers.9.adaln_table"] = torch.zeros(6, 32)
    other = XR0Policy.from_preset("tiny", device="meta")
    with pytest.raises(ValueError, match=r"missing \(1\).*sink.weight[\s\S]*unexpected \(1\).*layers.9"):
        load_strict(other.model, state)


def test_checkpoint_without_frozen_embedding(tmp_path):
    policy = XR0Policy.from_preset("tiny", seed=5)
    obs = random_observation(policy)
    policy.save_pretrained(tmp_path / "full")
    policy.save_pretrained(tmp_path / "lean", store_embedding=False)
    full, lean = ((tmp_path / d / "model.safetensors").stat().st_size for d in ("full", "lean"))
    assert lean < full - 151936 * 64 * 4 * 0.99  # the (151,936 x 64) fp32 embedding is gone
    loaded = XR0Policy.from_pretrained(tmp_path / "lean")
    assert np.array_equal(policy.sample(**obs), loaded.sample(**obs))
    meta = json.loads((tmp_path / "lean" / "config.json").read_text())
    meta["embedding_sha256"] = "0" * 64
    (tmp_path / "lean" / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="regenerated token embedding"):
        XR0Policy.from_pretrained(tmp_path / "lean")
    with torch.no_grad():
        policy.model.vlm.model.language_model.embed_tokens.weight[0] += 1
    with pytest.raises(ValueError, match="seeded initial value"):
        policy.save_pretrained(tmp_path / "bad", store_embedding=False)


def test_a_hugging_face_repo_id_loads_from_the_local_cache_only(tiny, tmp_path):
    """XR0Policy.from_pretrained("org/name") finds the snapshot in the local Hugging Face cache (no network); a repo
    that is not there is a FileNotFoundError naming the `hf download` command."""
    snap = tmp_path / "hub" / "models--XiaomiRobotics--tiny-test"
    tiny.save_pretrained(snap / "snapshots" / "abc123")
    (snap / "refs").mkdir()
    (snap / "refs" / "main").write_text("abc123")
    code = ("import sys\nfrom xr0 import XR0Policy\np = XR0Policy.from_pretrained('XiaomiRobotics/tiny-test')\n"
            "print(p.config.name)\ntry:\n    XR0Policy.from_pretrained('XiaomiRobotics/missing')\n"
            "except FileNotFoundError as e:\n    print(e)\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "tiny" and "hf download XiaomiRobotics/missing" in lines[1]


def test_sample_batch_equals_one_at_a_time(tiny):
    """The batched path (the LeRobot plugin's predict_action_chunk): prompts of different lengths padded in one
    VLM pass give the chunks sample() gives one by one."""
    rng = np.random.default_rng(5)
    obs = [dict(images={c: rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for c in tiny.config.cameras},
                instruction=text, state=rng.normal(size=32).astype(np.float32))
           for text in ("pick", "put the red block in the bowl on the left", "open the drawer")]
    batched = tiny.sample_batch(obs, seeds=[3, 4, 5])
    single = np.stack([tiny.sample(**o, seed=s) for o, s in zip(obs, (3, 4, 5))])
    assert batched.shape == (3, tiny.config.chunk_len, 32)
    np.testing.assert_allclose(batched, single, atol=2e-5 * max(1.0, np.abs(single).max()))
    with pytest.raises(ValueError, match="2 seeds for 3 observations"):
        tiny.sample_batch(obs, seeds=[1, 2])
