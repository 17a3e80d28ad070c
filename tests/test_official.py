"""Official release folders: a synthetic tiny one in the official layout loads strictly, samples, converts, and
round-trips bit for bit; missing/extra tensors and bad statistics fail with messages that name them."""

import dataclasses
import json
import pathlib

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from xr0 import XR0Policy
from xr0.cli import main as cli_main
from xr0.config import RELEASE_RUNTIME
from xr0 import official

T = 10  # LIBERO chunk length (from the stats, although config.json says action_length 30)


def _vlm_config_457(policy) -> dict:
    """The tiny preset's VLM config written the way transformers 4.57.1 serialises Qwen3VLConfig."""
    vlm = json.loads(json.dumps(policy.config.vlm))
    text = vlm["text_config"]
    rope = text.pop("rope_parameters")
    text["rope_theta"] = rope["rope_theta"]
    text["rope_scaling"] = {"rope_type": "default", "mrope_section": rope["mrope_section"],
                            "mrope_interleaved": rope["mrope_interleaved"]}
    text.update(model_type="qwen3_vl_text", torch_dtype="bfloat16", use_cache=True, tie_word_embeddings=True)
    vlm["vision_config"].update(model_type="qwen3_vl", torch_dtype="bfloat16")
    vlm.update(architectures=["Qwen3VLForConditionalGeneration"], model_type="qwen3_vl",
               transformers_version="4.57.1", torch_dtype="bfloat16")
    return vlm


def _libero_stats(rng) -> dict:
    mean = rng.normal(0, 0.1, (T, 7)).astype(np.float32)
    std = rng.uniform(0.1, 0.5, (T, 7)).astype(np.float32)
    mask = np.zeros((1, T, 32), np.float32)
    mask[..., :7] = 1
    return {"action_mean": mean.tolist(), "action_std": std.tolist(), "action_mask": mask.tolist()}


def write_official(folder: pathlib.Path, policy, rename=None, drop=(), extra=None, stats=None,
                   dtype=None) -> pathlib.Path:
    """Write `policy` as an official release: 2 shards + index, 4.57-style nested vlm_config, processor stats."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in policy.model.state_dict().items() if k != "vlm.lm_head.weight"}
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    for k in drop:
        state.pop(k)
    state.update(extra or {})
    if rename:
        state = {rename(k): v for k, v in state.items()}
    names = sorted(state)
    halves = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, 1):
        shard = f"model-0000{i}-of-00002.safetensors"
        save_file({k: state[k] for k in part}, str(folder / shard), metadata={"format": "pt"})
        weight_map.update({k: shard for k in part})
    total = sum(v.numel() * v.element_size() for v in state.values())
    (folder / official.INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    config = {"architectures": ["MiBotModel"], "model_type": "mibot",
              "auto_map": {"AutoConfig": "configuration_mibot.MiBotConfig"}, "state_dim": 32, "action_length": 30,
              "transformers_version": "4.57.1", "vlm_config": _vlm_config_457(policy)}
    (folder / "config.json").write_text(json.dumps(config))
    rng = np.random.default_rng(0)
    table = stats if stats is not None else {"libero_all": _libero_stats(rng)}
    (folder / "preprocessor_config.json").write_text(json.dumps({"processor_class": "MiBotProcessor",
                                                                 "robot_types": table}))
    return folder


def _obs(policy, seed=0):
    rng = np.random.default_rng(seed)
    h, w = policy.config.image_size
    images = {c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in policy.config.cameras}
    return images, "Pick up the black bowl and place it on the plate.", rng.normal(size=8).astype(np.float32)


@pytest.fixture(scope="module")
def source():
    return XR0Policy.from_preset("tiny", seed=3)


@pytest.fixture(scope="module")
def folder(source, tmp_path_factory):
    return write_official(tmp_path_factory.mktemp("official") / "Xiaomi-Robotics-0-LIBERO", source)


def test_official_folder_loads_strictly_with_the_mapped_config(source, folder):
    assert official.is_official(folder / "config.json")
    policy = XR0Policy.from_pretrained(folder)
    cfg = policy.config
    assert cfg.chunk_len == T and sorted(policy.robots) == ["libero_all"]
    assert cfg.cameras == ("Base View", "Left-Wrist View") and cfg.image_size == (256, 256)
    # expert dims read off the tensor shapes; the DiT runs as the release runtime (causal, no offset, no prefix)
    assert cfg.expert == dataclasses.replace(source.config.expert, local_window=None, rope_offset=0)
    assert cfg.runtime() == RELEASE_RUNTIME
    rope = cfg.vlm["text_config"]["rope_parameters"]
    assert rope == {"rope_type": "default", "rope_theta": 5e6, "mrope_section": [4, 2, 2], "mrope_interleaved": True}
    assert "rope_scaling" not in cfg.vlm["text_config"] and cfg.vlm["tie_word_embeddings"] is True
    for k, v in source.model.state_dict().items():
        assert torch.equal(policy.model.state_dict()[k], v), k
    assert policy.model.vlm.lm_head.weight is policy.model.vlm.model.language_model.embed_tokens.weight
    robot = policy.robot("libero_all")
    assert (robot.action_dim, robot.state_dim) == (7, 8)
    assert robot.action_mask.tolist() == [1.0] * 7 + [0.0] * 25
    stats = json.loads((folder / "preprocessor_config.json").read_text())["robot_types"]["libero_all"]
    np.testing.assert_array_equal(robot.action_std[:, :7], np.asarray(stats["action_std"], np.float32))
    assert (robot.action_std[:, 7:] == 1).all() and (robot.state_std == 1).all()  # padding / raw state


def test_sample_convert_reload_is_bit_identical(folder, tmp_path):
    policy = XR0Policy.from_pretrained(folder)
    images, instruction, state = _obs(policy)
    a = policy.sample(images, instruction, state, seed=123, robot_type="libero_all")
    assert a.shape == (T, 7) and np.isfinite(a).all()
    out = tmp_path / "xr0"
    assert cli_main(["convert", "--official", str(folder), "--out", str(out), "--json"]) == 0
    meta = json.loads((out / "config.json").read_text())
    assert meta["format"] == "xr0" and not official.is_official(out / "config.json")
    reloaded = XR0Policy.from_pretrained(out)
    b = reloaded.sample(images, instruction, state, seed=123, robot_type="libero_all")
    assert np.array_equal(a, b)
    c = reloaded.sample(images, instruction, state, seed=124, robot_type="libero_all")
    assert not np.array_equal(a, c)  # the seed matters, so equality above is not vacuous


@pytest.mark.parametrize("layout", ["qwen3vl_model", "legacy", "deepspeed"])
def test_other_vlm_key_layouts_are_remapped(source, tmp_path, layout):
    def rename(k):
        if layout == "qwen3vl_model":  # a Qwen3VLModel under `vlm`
            return k.replace("vlm.model.language_model.", "vlm.language_model.").replace("vlm.model.visual.", "vlm.visual.")
        if layout == "legacy":  # pre-4.52 Qwen2-VL style names
            return k.replace("vlm.model.language_model.", "vlm.model.").replace("vlm.model.visual.", "vlm.visual.")
        return "model." + k
    folder = write_official(tmp_path / layout, source, rename=rename)
    policy = XR0Policy.from_pretrained(folder)
    sd = policy.model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in source.model.state_dict().items())


def test_missing_and_unexpected_tensors_are_listed(source, tmp_path):
    gone = "dit.layers.1.attn.o_proj.weight"
    folder = write_official(tmp_path / "missing", source, drop=[gone])
    with pytest.raises(ValueError, match=r"missing \(1\): \['dit\.layers\.1\.attn\.o_proj\.weight'\]"):
        XR0Policy.from_pretrained(folder)
    folder = write_official(tmp_path / "extra", source, extra={"choice_head.weight": torch.zeros(3, 4)})
    with pytest.raises(ValueError, match=r"unexpected \(1\): \['choice_head\.weight'\]"):
        XR0Policy.from_pretrained(folder)
    bad = {"sink.weight": torch.zeros(1, 32), "dit.layers.0.adaln_table": torch.zeros(5, 32)}
    folder = write_official(tmp_path / "shape", source, extra=bad)
    with pytest.raises(ValueError, match=r"shape mismatch \(1\): \['dit\.layers\.0\.adaln_table: file \(5, 32\)"):
        XR0Policy.from_pretrained(folder)


def test_index_naming_an_absent_shard_is_an_error(source, tmp_path):
    folder = write_official(tmp_path / "idx", source)
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(official.OfficialFormatError, match="model-00002-of-00002.safetensors"):
        XR0Policy.from_pretrained(folder)


def test_bf16_release_keeps_its_dtype_and_samples(source, tmp_path):
    folder = write_official(tmp_path / "bf16", source, dtype=torch.bfloat16)
    policy = XR0Policy.from_pretrained(folder)
    assert policy.model.sink.weight.dtype == torch.bfloat16
    images, instruction, state = _obs(policy, 1)
    a = policy.sample(images, instruction, state, seed=5)
    assert a.shape == (T, 7) and np.isfinite(a).all()


def test_vlm_config_conversion_and_its_errors(source):
    vlm = _vlm_config_457(source)
    out = official.convert_vlm_config(vlm)
    assert out["text_config"]["rope_parameters"]["mrope_section"] == [4, 2, 2]
    assert not {"rope_theta", "rope_scaling", "model_type", "torch_dtype"} & set(out["text_config"])
    assert "architectures" not in out and out["image_token_id"] == 151655
    del vlm["text_config"]["rope_scaling"]["mrope_section"]
    with pytest.raises(official.OfficialFormatError, match="mrope_section"):
        official.convert_vlm_config(vlm)
    with pytest.raises(official.OfficialFormatError, match="vision_config"):
        official.convert_vlm_config({"text_config": {}})


def test_statistics_variants_and_errors(tmp_path):
    # per-dim stats (no time axis) take T from an action_mask (1, T, 32); state stats are padded
    mask = np.zeros((1, 4, 32))
    mask[..., :7] = 1
    entry = {"action": {"mean": [0.1] * 7, "std": [0.2] * 7}, "action_mask": mask.tolist(),
             "state": {"mean": [1.0] * 7, "std": [2.0] * 7}}
    spec = official.robot_spec("calvin_abcd_orig", entry, None, "x.json")
    assert spec.chunk_len == 4 and spec.action_dim == 7 and spec.state_dim == 7
    assert np.allclose(spec.action_mean[:, :7], 0.1) and (spec.action_mean[:, 7:] == 0).all()
    assert spec.state_std[:7].tolist() == [2.0] * 7 and spec.state_std[7:].tolist() == [1.0] * 25
    # no time axis anywhere: the config's action_length is the fallback, and without it the error says what to give
    assert official.robot_spec("bridge_delta", {"mean": [0] * 7, "std": [1] * 7}, 4, "x.json").chunk_len == 4
    with pytest.raises(official.OfficialFormatError, match="chunk length is unknown"):
        official.robot_spec("bridge_delta", {"mean": [0] * 7, "std": [1] * 7}, None, "x.json")
    bad = mask.copy()
    bad[0, 2, 8] = 1
    with pytest.raises(official.OfficialFormatError, match="differs between timesteps"):
        official.robot_spec("x", {"mean": [0] * 7, "std": [1] * 7, "action_mask": bad.tolist()}, None, "x.json")
    with pytest.raises(official.OfficialFormatError, match=r"\[fractal_delta\]: needs action mean and std"):
        official.robot_spec("fractal_delta", {"avg": [0]}, 4, "x.json")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(official.OfficialFormatError, match="--stats"):
        official.find_stats_table(tmp_path)
    # robot types at the top level of a stats file, and different chunk lengths in one checkpoint
    two = {"libero_all": {"mean": np.zeros((10, 7)).tolist(), "std": np.ones((10, 7)).tolist()},
           "calvin_abc_orig": {"mean": np.zeros((4, 7)).tolist(), "std": np.ones((4, 7)).tolist()}}
    (tmp_path / "norm_stats.json").write_text(json.dumps(two))
    robots = official.stats_table_robots(tmp_path)
    assert {n: r.chunk_len for n, r in robots.items()} == {"libero_all": 10, "calvin_abc_orig": 4}
    # without an explicit mask the release's rule: std > 1e-5 on the given columns
    std = np.ones((4, 7))
    std[:, 3] = 0
    spec = official.robot_spec("x", {"mean": np.zeros((4, 7)).tolist(), "std": std.tolist()}, None, "x.json")
    assert spec.action_mask.tolist() == [1, 1, 1, 0, 1, 1, 1] + [0] * 25 and spec.action_dim == 7


def test_convert_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mibot", "vlm_config": {}}))
    assert cli_main(["convert", "--official", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "neither model.safetensors.index.json nor model.safetensors" in capsys.readouterr().err
