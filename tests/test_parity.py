"""Numerical parity with the official XR-0 code, from its own outputs on a tiny model (tests/fixtures/official_tiny).

The fixture ships the official code's inputs and outputs, no weights: `weights_rule.md` regenerates every tensor from
its name. Each case runs with the settings that produced it: the April training code (w = 4 band, +10 RoPE offset,
fp32 tables; `asbuilt.*` with bf16-rounded tables) and the release runtime (`release.*`: plain causal, no offset),
which is what an official folder loads as by default. Tolerances are the fixture README's.
"""

from __future__ import annotations

import json
import math
import pathlib
import zlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from xr0 import XR0Policy
from xr0.config import APRIL_RUNTIME, RELEASE_RUNTIME
from xr0.model.flow import initial_noise
from xr0.model.masks import expert_positions, hidden_prefix_from_draws
from xr0.train.recipes import get_recipe

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "official_tiny"
APRIL = {**APRIL_RUNTIME, "rope_tables": "fp32"}  # the fixture's April cases use exact tables (asbuilt.*: bf16)
TOL = 1e-5


def weight(name: str, shape: tuple[int, ...], offset: int = 0) -> torch.Tensor:
    """The fixture's weight rule (weights_rule.md): a pure function of the tensor's name and shape."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode("utf-8")) + offset)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    parts = name.split(".")
    if parts[-1] == "bias":
        y = 0.1 * x
    elif parts[-1] == "adaln_table" or name == "sink.weight":
        y = 0.5 * x
    elif parts[-1] == "weight" and "norm" in parts[-2]:
        y = 1.0 + 0.1 * x
    else:
        y = x / math.sqrt(math.prod(shape[1:]))
    return y.to(torch.float32)


def build_folder(out: pathlib.Path, fixture: pathlib.Path = FIXTURE,
                 files: tuple[str, ...] = ("config.json", "processor_config.json")) -> pathlib.Path:
    """A fixture's official-layout folder: model.safetensors from the weight rule (sha256-checked against its
    tensors.tsv) beside the fixture's `files`."""
    import hashlib

    rows = [line.split("\t") for line in (fixture / "tensors.tsv").read_text().splitlines()[1:] if line.strip()]
    tensors = {}
    for _, name, shape, _, _, sha in rows:
        w = weight(name, tuple(int(d) for d in shape.split("x")))
        assert hashlib.sha256(w.numpy().tobytes()).hexdigest() == sha, name
        tensors[name] = w
    save_file(tensors, str(out / "model.safetensors"))
    for f in files:
        (out / f).write_text((fixture / f).read_text())
    return out


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
    return build_folder(tmp_path_factory.mktemp("official_tiny"))


def load_cases() -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_file(str(FIXTURE / "cases.safetensors")).items()}


@pytest.fixture(scope="module")
def cases() -> dict[str, torch.Tensor]:
    return load_cases()


@pytest.fixture(scope="module")
def april(folder) -> XR0Policy:
    return XR0Policy.from_pretrained(folder, **APRIL)


def vlm_batch(c: dict) -> dict:
    return {k: c[f"in.{k}"] for k in ("input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                                      "image_grid_thw")}


def rel(x: torch.Tensor, ref: torch.Tensor, where: torch.Tensor) -> float:
    """max |x - ref| / max |ref| over the entries where `where` is true (the fixture's measure)."""
    where = where.bool()
    return ((x.float() - ref.float())[where].abs().max() / ref.float()[where].abs().max()).item()


def actions(policy: XR0Policy, c: dict, p: int, noise: torch.Tensor | None = None) -> torch.Tensor:
    with torch.inference_mode():
        ctx = policy.model.context(policy.model.encode(vlm_batch(c)), c["in.state"][:, 0], c["in.action_mask"], p)
        return policy.model.denoise(ctx, c["in.noise"] if noise is None else noise, 5,
                              c["in.prefix_actions"][:, :p] if p else None)


def test_the_folder_loads_strictly_with_the_release_runtime_by_default(folder):
    policy = XR0Policy.from_pretrained(folder)
    assert policy.config.runtime() == RELEASE_RUNTIME
    assert policy.model.action_output_layer.layers[0].weight.shape == (32, 1024)
    assert policy.model.action_output_layer.layers[2].weight.shape == (32, 32)


def test_vlm_kv_and_positions(april, cases):
    c = cases
    with torch.inference_mode():
        cache = april.model.encode(vlm_batch(c))
    real = c["in.attention_mask"].bool()
    tokens = real[:, None, :, None].expand_as(cache.keys[0])
    for i in range(3):
        assert rel(cache.keys[i], c[f"a.k{i}"], tokens) < TOL
        assert rel(cache.values[i], c[f"a.v{i}"], tokens) < TOL
    assert torch.equal(cache.position_ids[:, real], c["ctx.vlm_position_ids"][:, real])


@pytest.mark.parametrize("p", [0, 3])
def test_expert_context_velocity_and_every_euler_step(april, cases, p):
    c, key = cases, f"p{p}"
    with torch.inference_mode():
        cache = april.model.encode(vlm_batch(c))
        ctx = april.model.context(cache, c["in.state"][:, 0], c["in.action_mask"], p)
        assert torch.equal(ctx.mask[:, :, :, :], c[f"ctx.{key}.attn_mask"])
        positions = expert_positions(cache.max_position(), 10, p, april.config.expert.rope_offset)
        assert torch.equal(positions, c[f"ctx.{key}.dit_position_ids"])
        assert rel(ctx.state_token, c[f"ctx.{key}.state_embed"], torch.ones_like(ctx.state_token)) < TOL
        x_t = c["in.x_t"] if p == 0 else c["in.x_t_prefix"]
        active = c["in.action_mask"]
        assert rel(april.model.velocity(ctx, x_t, c["in.t_fixed"]), c[f"b.{key}.velocity"], active) < TOL
        for k in range(5):
            x = c[f"c.{key}.step{k}.x"]
            assert rel(april.model.velocity(ctx, x, c[f"c.{key}.step{k}.t"]), c[f"c.{key}.step{k}.v"], active) < TOL
    assert rel(actions(april, c, p), c[f"c.{key}.actions"], c["in.action_mask"]) < TOL


def test_asbuilt_bf16_rounded_rope_tables(folder, cases):
    c = cases
    policy = XR0Policy.from_pretrained(folder, **{**APRIL, "rope_tables": "bf16"})
    with torch.inference_mode():
        cache = policy.model.encode(vlm_batch(c))
    tokens = c["in.attention_mask"].bool()[:, None, :, None].expand_as(cache.keys[0])
    for i in range(3):
        assert rel(cache.keys[i], c[f"asbuilt.a.k{i}"], tokens) < TOL
        assert rel(cache.keys[i], c[f"a.k{i}"], tokens) > 1e-3  # the rounding is visible: the setting matters
    assert rel(actions(policy, c, 0), c["asbuilt.c.p0.actions"], c["in.action_mask"]) < TOL


def test_release_runtime_case(folder, cases):
    c = cases
    policy = XR0Policy.from_pretrained(folder)  # the release defaults: causal DiT mask, no offset, fp32 tables
    active = c["in.action_mask"]
    with torch.inference_mode():
        cache = policy.model.encode(vlm_batch(c))
        ctx = policy.model.context(cache, c["in.state"][:, 0], active, 0)
        assert torch.equal(ctx.mask, c["release.ctx.attn_mask"])
        for k in range(5):
            v = policy.model.velocity(ctx, c[f"release.c.p0.step{k}.x"], c[f"release.c.p0.step{k}.t"])
            assert rel(v, c[f"release.c.p0.step{k}.v"], active) < TOL
    assert rel(actions(policy, c, 0), c["release.c.p0.actions"], active) < TOL
    # the April settings give the other runtime's answer, ~0.1 away: the defaults are what makes the match
    assert rel(actions(policy, c, 0), c["c.p0.actions"], active) > 1e-2
    # the runtime's own x_0 draw for seed 0 (ISA-dependent in the last bits: see the fixture README)
    assert (initial_noise((2, 10, 32), 0) - c["release.noise_seed0"]).abs().max() < 1e-5


def test_sample_takes_an_explicit_noise_and_draws_the_runtime_noise_by_default(cases):
    c = cases  # the fixture's 2,048-token vocabulary cannot take real prompts: the tiny preset stands in
    policy = XR0Policy.from_preset("tiny")
    rng = np.random.default_rng(0)
    obs = dict(images={cam: rng.integers(0, 255, (*policy.config.image_size, 3), dtype=np.uint8)
                       for cam in policy.config.cameras}, instruction="pick", state=np.zeros(32, np.float32))
    default = policy.sample(**obs, seed=3)
    explicit = policy.sample(**obs, noise=initial_noise((1, 10, 32), 3))
    np.testing.assert_array_equal(default, explicit)
    assert not np.array_equal(default, policy.sample(**obs, noise=c["in.noise"][:1]))
    with pytest.raises(ValueError, match="noise"):
        policy.sample(**obs, noise=torch.zeros(3, 32))


def test_server_decoding(cases):
    from xr0.processing.normalize import RobotSpec

    c = cases
    mask = c["e.mask"].numpy()
    assert (mask == mask[0]).all()
    spec = RobotSpec(c["e.mean"].numpy(), c["e.std"].numpy(), mask[0], np.zeros(32, np.float32),
                     np.ones(32, np.float32), 32, 32)
    np.testing.assert_allclose(spec.normalize_actions(c["e.raw"].numpy()), c["e.normalized"].numpy(),
                               rtol=1e-6, atol=1e-6)
    decoded = spec.denormalize_actions(c["c.p0.actions"][0].numpy())
    np.testing.assert_allclose(decoded, c["e.decoded"].numpy(), rtol=1e-6, atol=1e-6)
    assert (decoded[:, mask[0] == 0] == 0).all()  # dims the mask drops reach the robot as 0


@pytest.mark.parametrize("case", ["sync", "async"])
def test_training_loss(april, cases, case):
    """The official XR0.forward(return_loss=True) with its recorded draws, through the trainer's own recipe."""
    c = cases
    recipe = get_recipe("post-async" if case == "async" else "post-sync", repeat=2, freq_weight=1.0)

    class Recorded:  # the Python draws the official forward made: random.random() then random.randint(1, 6)
        def random(self):
            return c["in.async.random"].item()

        def randint(self, a, b):
            assert (a, b) == (1, 6)
            return int(c["in.async.prefix_length"])

    opts = recipe.options(10, Recorded(), torch.Generator())
    if case == "async":
        assert opts.prefix_len == 5 and opts.reweight and opts.hidden_prefix is not None
        hidden = hidden_prefix_from_draws(c["in.async.prefix_mask_draws"], recipe.prefix_dropout, recipe.keep_last)
        assert hidden.tolist() == c["in.async.hidden_prefix"].tolist()
        opts.hidden_prefix = hidden
    else:
        assert opts.prefix_len == 0
    opts.time, opts.noise = c[f"d.{case}.t"], c[f"in.{case}.noise"]
    batch = dict(vlm_batch(c), state=c["in.state"][:, 0], actions=c["in.train_actions"],
                 action_mask=c["in.action_mask"])
    april.model.train()
    try:
        with torch.no_grad():
            out = april.model.loss(batch, opts)
    finally:
        april.model.eval()
    for ours, theirs in (("loss", "loss"), ("mse", "loss_mse"), ("freq", "loss_freq")):
        ref = c[f"d.{case}.{theirs}"].item()
        assert abs(out[ours].item() - ref) <= TOL * abs(ref), (ours, out[ours].item(), ref)


def test_bf16_lands_as_close_as_the_official_bf16_run(folder, cases):
    c = cases
    policy = XR0Policy.from_pretrained(folder, dtype=torch.bfloat16, **APRIL)
    active = c["in.action_mask"]
    for p in (0, 3):
        ours = actions(policy, c, p, c["in.noise"].to(torch.bfloat16)).float()
        official_gap = rel(c[f"bf16.c.p{p}.actions"], c[f"c.p{p}.actions"], active)  # ~7e-3
        assert rel(ours, c[f"c.p{p}.actions"], active) < 2 * official_gap
        assert rel(ours, c[f"bf16.c.p{p}.actions"], active) < 2 * official_gap


def test_an_old_layout_checkpoint_names_the_tensor_and_its_expected_shape(folder, tmp_path):
    for f in ("config.json", "processor_config.json"):
        (tmp_path / f).write_text((folder / f).read_text())
    state = load_file(str(folder / "model.safetensors"))
    state["action_output_layer.layers.0.weight"] = torch.zeros(1024, 1024)  # xr0's pre-parity head
    state["action_output_layer.layers.2.weight"] = torch.zeros(32, 1024)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        XR0Policy.from_pretrained(tmp_path)
    msg = str(err.value)
    assert "action_output_layer.layers.0.weight: file (1024, 1024) vs model (32, 1024)" in msg
    assert "action_output_layer.layers.2.weight: file (32, 1024) vs model (32, 32)" in msg
    assert json.loads((folder / "config.json").read_text())["model_type"] == "mibot"


def test_april_deepspeed_checkpoint_converts_and_runs_as_the_april_code(folder, cases, tmp_path, capsys):
    """A DeepSpeed `mp_rank_00_model_states.pt` ({"module": {"model.<name>": tensor}, ...}) of the fixture's
    weights converts through `xr0 convert` and runs with the April settings, bf16 tables included (asbuilt.*)."""
    from xr0.cli import main

    module = {f"model.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()}
    run = tmp_path / "run" / "last.ckpt" / "checkpoint"
    run.mkdir(parents=True)
    torch.save({"module": module, "ds_version": "0.16.4", "buffer_names": [], "global_steps": 7},
               run / "mp_rank_00_model_states.pt")
    out = tmp_path / "converted"
    args = ["convert", "--official", str(tmp_path / "run"), "--out", str(out), "--vlm-config",
            str(folder / "config.json"), "--stats", str(folder / "processor_config.json"), "--json"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["source"] == "deepspeed" and summary["runtime"] == APRIL_RUNTIME
    policy = XR0Policy.from_pretrained(out)
    assert policy.config.runtime() == APRIL_RUNTIME
    assert rel(actions(policy, cases, 0), cases["asbuilt.c.p0.actions"], cases["in.action_mask"]) < TOL
    # without statistics: a clear error, no traceback
    assert main(args[:7]) == 2
    assert "--stats" in capsys.readouterr().err


class NotATensor:  # any pickled class: a weights-only load must refuse it
    pass


def test_a_deepspeed_file_holding_code_is_refused(tmp_path, capsys):
    from xr0.cli import main

    torch.save({"module": {"model.sink.weight": torch.zeros(1, 4)}, "extra": NotATensor()},
               tmp_path / "mp_rank_00_model_states.pt")
    assert main(["convert", "--official", str(tmp_path / "mp_rank_00_model_states.pt"), "--out",
                 str(tmp_path / "out"), "--stats", str(FIXTURE / "processor_config.json")]) == 2
    assert "weights_only" in capsys.readouterr().err


def test_runtime_settings_from_the_cli_and_the_async_refusal(folder, tmp_path, capsys):
    """--dit-window/--rope-offset/--rope-tables override what a folder records; a folder not trained with
    prefixes (the release runtime: max_prefix 0) refuses the async executor and points to rtc."""
    from xr0.cli import main
    from xr0.config import runtime_settings

    out = tmp_path / "xr0"
    assert main(["convert", "--official", str(folder), "--out", str(out), "--dit-window", "4", "--rope-offset",
                 "10", "--json"]) == 0
    capsys.readouterr()
    policy = XR0Policy.from_pretrained(out)
    assert policy.config.runtime() == {**RELEASE_RUNTIME, "local_window": 4, "rope_offset": 10}
    assert main(["inspect", "--checkpoint", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["runtime"]["local_window"] == 4
    with pytest.raises(ValueError, match="--executor rtc"):
        policy.config.check_executor("async")
    policy.config.check_executor("rtc")
    import argparse
    with pytest.raises(ValueError, match="--dit-window"):
        runtime_settings(argparse.Namespace(dit_window="wide", rope_offset=None, rope_tables=None))
    with pytest.raises(ValueError, match="rope_tables"):
        XR0Policy.from_pretrained(folder, rope_tables="fp16")
    # a built policy switches its tables too: bf16-rounded values, fp32 storage
    text_rotary = policy.model.vlm.model.language_model.rotary_emb
    exact = text_rotary.inv_freq.clone()
    policy.set_runtime(rope_tables="bf16")
    assert text_rotary.inv_freq.dtype == torch.float32
    assert torch.equal(text_rotary.inv_freq, exact.to(torch.bfloat16).float())
    assert not torch.equal(text_rotary.inv_freq, exact)
