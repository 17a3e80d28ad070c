"""A released folder in its real layout, run end to end against the official release code's own outputs
(tests/fixtures/release_e2e, README inside): raw uint8 images of three sizes, instructions, raw states and seeds in,
decoded actions out, for a folder with two robot types of different chunk lengths (libero_all T = 10, bridge_delta
T = 4). Nothing here was computed by xr0: the weights come from the fixture's rule, the numbers from the release code.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_parity import build_folder
from xr0 import XR0Policy

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "release_e2e"
CASES = json.loads((FIXTURE / "cases.json").read_text())["cases"]
TOL = 1e-4  # relative, fp32 (the fixture README)


def build_release_folder(out: pathlib.Path) -> pathlib.Path:
    """The fixture's folder completed: model.safetensors from the weight rule (sha256-checked) beside its JSON."""
    return build_folder(out, FIXTURE, ("config.json", "preprocessor_config.json"))


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> pathlib.Path:
    return build_release_folder(tmp_path_factory.mktemp("release_e2e"))


@pytest.fixture(scope="module")
def policy(release) -> XR0Policy:
    return XR0Policy.from_pretrained(release)  # no extra argument: everything comes from the folder


@pytest.fixture(scope="module")
def tensors() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE / "cases.safetensors"))


def inputs(name: str, tensors: dict) -> dict:
    case = CASES[name]
    images = [tensors[f"{name}.image{k}"].numpy() for k in range(len(case["views"]))]
    return dict(images=images, instruction=case["instruction"], state=tensors[f"{name}.state"].numpy(),
                seed=case["seed"], robot_type=case["robot_type"])


def rel(ours: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> float:
    on = mask.astype(bool)
    return float(np.abs(ours - ref)[on].max() / np.abs(ref[on]).max())


def test_the_folder_loads_with_both_robot_types_and_their_own_chunk_lengths(policy):
    assert sorted(policy.robots) == ["bridge_delta", "libero_all"]
    libero, bridge = policy.robot("libero_all"), policy.robot("bridge_delta")
    assert (libero.chunk_len, bridge.chunk_len) == (10, 4)
    assert libero.cameras == ("Base View", "Left-Wrist View") and bridge.cameras == ("Base View",)
    assert (libero.action_dim, libero.state_dim) == (7, 8)
    # the release's pixel budget (transformers 4.57.1: size is replaced unless min/max_pixels are given), bicubic
    assert (libero.image.size, libero.image.min_pixels, libero.image.max_pixels, libero.image.resample) == \
        (None, 3136, 1003520, "bicubic")
    assert policy.config.max_prefix == 0
    with pytest.raises(ValueError, match="robot_type is required"):
        policy.robot()


@pytest.mark.parametrize("name", sorted(CASES))
def test_processor_gives_the_release_processor_outputs(policy, tensors, name):
    x = inputs(name, tensors)
    batch = policy.processor(x["images"], x["instruction"], policy.robot(x["robot_type"]))
    assert batch["input_ids"][0].tolist() == tensors[f"{name}.input_ids"].tolist()
    assert batch["image_grid_thw"].tolist() == tensors[f"{name}.image_grid_thw"].tolist() == CASES[name]["grids"]
    assert batch["input_ids"].shape[1] == CASES[name]["tokens"]
    assert (batch["pixel_values"] - tensors[f"{name}.pixel_values"]).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", sorted(CASES))
def test_raw_inputs_to_decoded_actions_match_the_release(policy, tensors, name):
    x = inputs(name, tensors)
    robot = policy.robot(x["robot_type"])
    out = policy.sample(**x)
    ref = tensors[f"{name}.actions"].numpy()
    mask = tensors[f"{name}.action_mask"].numpy()
    T, active = CASES[name]["chunk"], CASES[name]["active_dims"]
    assert out.shape == (T, robot.action_dim) == (T, active)
    np.testing.assert_array_equal(mask[0, :active], 1)
    err = rel(out, ref[:, :active], mask[:, :active])
    print(f"{name}: max relative error {err:.2e}")
    assert err <= TOL
    # the seeded draw is the release's (torch.manual_seed(seed); randn_like of the (1, T, 32) mask)
    from xr0.model.flow import initial_noise
    assert (initial_noise((1, T, 32), x["seed"])[0] - tensors[f"{name}.noise"]).abs().max() < 1e-5


def test_a_square_squash_would_be_far_off(policy, tensors):
    """What the fixed 256² resize of earlier xr0 did to the 224² case: far outside the tolerance."""
    from xr0.processing.images import resize

    x = inputs("libero_224", tensors)
    x["images"] = [resize(im, (256, 256)) for im in x["images"]]
    out = policy.sample(**x)
    ref = tensors["libero_224.actions"].numpy()[:, :7]
    assert rel(out, ref, np.ones_like(ref)) > 1e-2


# ---------------------------------------------------------------------------------------------- T = 15 and 30
def _stats(T: int, seed: int) -> dict:
    """One robot type in the release's action_config layout: (T, 32) mean/std, 7 dims active (std > 1e-5)."""
    rng = np.random.default_rng(seed)
    mean, std = np.zeros((T, 32)), np.zeros((T, 32))
    mean[:, :7], std[:, :7] = rng.normal(size=(T, 7)), rng.uniform(0.5, 2, (T, 7))
    return {"mean": mean.tolist(), "std": std.tolist(), "state_dim": 8}


@pytest.fixture(scope="module")
def two_lengths(tmp_path_factory) -> pathlib.Path:
    """A release-layout folder (the tiny preset's weights) whose two robot types have T = 15 and T = 30, as the
    released Pretrain checkpoint's."""
    from test_official import write_official

    folder = write_official(tmp_path_factory.mktemp("pretrain"), XR0Policy.from_preset("tiny", seed=1))
    pre = json.loads((folder / "preprocessor_config.json").read_text())
    pre.pop("robot_types")
    pre["action_config"] = {"arm_fifteen": _stats(15, 0), "arm_thirty": _stats(30, 1)}
    (folder / "preprocessor_config.json").write_text(json.dumps(pre))
    return folder


def _observation(cameras, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    return dict(images={c: rng.integers(0, 256, (96, 128, 3), dtype=np.uint8) for c in cameras},
                instruction="pick up the cube", state=rng.normal(size=8).astype(np.float32))


def test_two_chunk_lengths_load_sample_and_serve(two_lengths):
    from xr0.runtime.client import PolicyClient
    from xr0.runtime.server import PolicyServer

    policy = XR0Policy.from_pretrained(two_lengths)
    assert {n: r.chunk_len for n, r in policy.robots.items()} == {"arm_fifteen": 15, "arm_thirty": 30}
    obs = _observation(policy.robot("arm_thirty").cameras)
    a15 = policy.sample(**obs, robot_type="arm_fifteen", seed=2)
    a30 = policy.sample(**obs, robot_type="arm_thirty", seed=2)
    assert a15.shape == (15, 7) and a30.shape == (30, 7)
    with PolicyServer(policy, port=0, robot_type="arm_thirty") as srv, PolicyClient("127.0.0.1", srv.port) as c:
        meta = c.metadata
        assert meta["robot_type"] == "arm_thirty" and meta["chunk_len"] == 30
        assert {n: m["chunk_len"] for n, m in meta["robots"].items()} == {"arm_fifteen": 15, "arm_thirty": 30}
        assert meta["robots"]["arm_fifteen"]["image_size"] is None  # the release processor takes any size
        request = {"images": obs["images"], "prompt": obs["instruction"], "state": obs["state"], "seed": 2}
        np.testing.assert_array_equal(c.infer({**request, "robot_type": "arm_fifteen"})["actions"], a15)
        np.testing.assert_array_equal(c.infer(request)["actions"], a30)  # the default robot type
        with pytest.raises(Exception, match="robot_type"):
            c.infer({**request, "robot_type": "arm_ninety"})
        assert c.infer({**request, "robot_type": "arm_fifteen"})["actions"].shape == (15, 7)  # still serving


def test_two_chunk_lengths_fine_tune_with_init_and_reload(two_lengths, tmp_path):
    from test_train import write_dataset
    from xr0.train import TrainConfig, Trainer

    data = write_dataset(tmp_path / "data", lengths=(40, 36))
    base = dict(recipe="stage2", data=str(data), steps=3, batch_size=2, lr=1e-3, warmup=1, save_every=3,
                log_every=1, dtype="fp32", seed=0, progress=False, init=str(two_lengths))
    Trainer(TrainConfig(**base, out=str(tmp_path / "ft"), robot_type="arm_fifteen")).run()
    saved = XR0Policy.from_pretrained(tmp_path / "ft")
    assert {n: r.chunk_len for n, r in saved.robots.items()} == {"arm_fifteen": 15, "arm_thirty": 30}
    obs = _observation(saved.robot("arm_fifteen").cameras)
    assert saved.sample(**obs, robot_type="arm_fifteen").shape == (15, 7)
    assert saved.sample(**obs, robot_type="arm_thirty").shape == (30, 7)
    # --chunk-len for a robot type the checkpoint already has is refused, naming why
    with pytest.raises(ValueError, match="--chunk-len 20: robot type 'arm_fifteen'"):
        Trainer(TrainConfig(**base, out=str(tmp_path / "bad"), robot_type="arm_fifteen", chunk_len=20))
    # a new robot type gets its own chunk length beside both
    new = Trainer(TrainConfig(**base, out=str(tmp_path / "new"), robot_type="toy", chunk_len=12))
    new.run()
    again = XR0Policy.from_pretrained(tmp_path / "new")
    assert {n: r.chunk_len for n, r in again.robots.items()} == {"arm_fifteen": 15, "arm_thirty": 30, "toy": 12}
    assert again.robot("toy").cameras == ("front", "wrist")  # the dataset's cameras


# ---------------------------------------------------------------------------------------------- the folder's tokenizer
@pytest.mark.parametrize("layout", ["tokenizer.json", "vocab.json + merges.txt"])
def test_the_folders_own_tokenizer_gives_the_release_ids(release, tensors, tmp_path, layout):
    """A release folder ships Qwen3-VL's tokenizer files; xr0 reads them (same ids as the official processor's on
    the fixture) and a saved checkpoint carries them along."""
    import shutil

    from xr0.processing.tokenizer import CACHE_NAME, cache_dir, qwen_tokenizer

    folder = tmp_path / "release"
    shutil.copytree(release, folder)
    qwen_tokenizer()  # the built-in tokenizer's JSON, written into the cache on first use
    built = json.loads((cache_dir() / CACHE_NAME).read_text())
    if layout == "tokenizer.json":
        shutil.copy(cache_dir() / CACHE_NAME, folder / "tokenizer.json")
    else:
        (folder / "vocab.json").write_text(json.dumps(built["model"]["vocab"], ensure_ascii=False), encoding="utf-8")
        merges = ["#version: 0.2"] + [" ".join(m) for m in built["model"]["merges"]]
        (folder / "merges.txt").write_text("\n".join(merges) + "\n", encoding="utf-8")
        added = {str(t["id"]): {"content": t["content"], "special": t["special"]} for t in built["added_tokens"]}
        (folder / "tokenizer_config.json").write_text(json.dumps({"added_tokens_decoder": added,
                                                                 "eos_token": "<|im_end|>",
                                                                 "pad_token": "<|endoftext|>"}))
    policy = XR0Policy.from_pretrained(folder)
    assert policy.tokenizer is not None and policy.processor.tokenizer is policy.tokenizer
    for name in sorted(CASES):
        x = inputs(name, tensors)
        ids, _ = policy.processor.encode(x["images"], x["instruction"], policy.robot(x["robot_type"]))
        assert ids == tensors[f"{name}.input_ids"].tolist()
    policy.save_pretrained(tmp_path / "saved")
    assert (tmp_path / "saved" / "tokenizer.json").is_file()
    assert XR0Policy.from_pretrained(tmp_path / "saved").tokenizer is not None
    if layout != "tokenizer.json":  # a damaged file is named
        (folder / "merges.txt").write_text("#version: 0.2\na b c\n")
        with pytest.raises(ValueError, match="merges.txt"):
            XR0Policy.from_pretrained(folder)
