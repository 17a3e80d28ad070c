"""The core model: masks, positions, time law, sampling, layout, checkpoints, processing, bad input."""

import copy
import json
import pathlib
import re

import numpy as np
import pytest
import torch
from scipy import stats
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionPatchEmbed

from conftest import random_observation
from xr0 import LossOptions, RobotSpec, XR0Policy
from xr0.inspect import OFFICIAL_LAYOUT, official_layout
from xr0.model.flow import sample_time
from xr0.model.masks import expert_mask, expert_positions, sample_hidden_prefix
from xr0.processing.images import patchify

DOCS = pathlib.Path(__file__).resolve().parents[2] / "shared" / "docs"


# ---------------------------------------------------------------- Λ mask and positions
def test_lambda_mask_table_without_prefix():
    m = expert_mask(8, 0, window=4).int()
    # rows = queries [sink, state, a0..a7], columns = keys; 1 = may attend.
    expected = [
        [1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 0, 0, 1, 1, 1, 1, 1, 0],
        [1, 1, 0, 0, 0, 1, 1, 1, 1, 1],
    ]
    assert m.tolist() == expected


def test_lambda_mask_with_prefix_and_dropout():
    p = 3
    m = expert_mask(10, prefix_len=p, window=4)
    assert not m[:2, 2:].any(), "sink/state must never see actions"
    # noisy a3..a6 still reach the prefix tail; a7 (= p + 4) and later see no prefix token at all
    a = lambda i: 2 + i  # noqa: E731
    assert m[a(3), a(0):a(3)].tolist() == [True, True, True]
    assert m[a(6), a(0):a(3)].tolist() == [False, False, True]
    assert not m[a(7):, a(0):a(3)].any()
    # prefix dropout hides prefix slot 0 from noisy queries only; prefix queries still see it
    hidden = torch.tensor([True, False, False])
    md = expert_mask(10, prefix_len=p, window=4, hidden_prefix=hidden)
    assert not md[a(3):, a(0)].any() and md[a(1), a(0)] and md[a(2), a(0)]
    assert (md ^ m).sum() == 2  # exactly (a3, a0) and (a4, a0) changed
    # the last 2 prefix tokens are never dropped
    draws = torch.stack([sample_hidden_prefix(6, 0.5, 2, generator=torch.Generator().manual_seed(s)) for s in range(400)])
    assert not draws[:, 4:].any()
    assert abs(draws[:, :4].float().mean().item() - 0.5) < 0.05
    assert sample_hidden_prefix(2, 0.5, 2) is None


def test_positions_and_rope_offset():
    P = torch.tensor([[20, 7], [20, 7], [20, 7]])  # (3, B)
    pos = expert_positions(P, chunk_len=6, prefix_len=0, rope_offset=10)
    assert pos[0, 0].tolist() == [21, 22, 33, 34, 35, 36, 37, 38]
    assert pos[0, 1].tolist() == [8, 9, 20, 21, 22, 23, 24, 25]
    pos = expert_positions(P, chunk_len=6, prefix_len=2, rope_offset=10)
    assert pos[1, 0].tolist() == [21, 22, 23, 24, 35, 36, 37, 38]  # prefix a0, a1 unshifted; noisy +10
    assert torch.equal(pos[0], pos[2])
    assert expert_positions(P, 6, 2, rope_offset=0)[0, 0].tolist() == list(range(21, 29))


def test_time_law_ks():
    t = sample_time(10_000, generator=torch.Generator().manual_seed(0)).numpy()
    cdf = lambda x: 1 - np.clip(1 - x / 0.999, 0, 1) ** 1.5  # P(0.999 (1 - u) <= x), u ~ Beta(1.5, 1)  # noqa: E731
    res = stats.kstest(t, cdf)
    assert res.pvalue > 0.01, res
    assert t.min() >= 0 and t.max() <= 0.999
    assert np.mean(t < 0.5) > 0.6  # the noisy end is favoured


# ---------------------------------------------------------------- sampling
def test_vlm_runs_once_and_prefix_is_kept(tiny):
    calls = []
    h = tiny.model.vlm.model.register_forward_hook(lambda *a: calls.append(1))
    try:
        obs = random_observation(tiny)
        tiny.sample(**obs, steps=5)
        assert len(calls) == 1
        tiny.sample(**obs, steps=10)
        assert len(calls) == 2
        prefix = np.random.default_rng(1).normal(size=(3, 32)).astype(np.float32)
        out = tiny.sample(**obs, prefix=prefix)
        assert len(calls) == 3
    finally:
        h.remove()
    assert np.array_equal(out[:3], prefix)
    # in normalised space the denoiser never moves the prefix slots
    batch = tiny.processor(obs["images"], obs["instruction"])
    ctx = tiny.model.context(tiny.model.encode(batch), torch.zeros(1, 32), torch.ones(1, 10, 32), prefix_len=3)
    pre = torch.randn(1, 3, 32)
    x = tiny.model.denoise(ctx, torch.randn(1, 10, 32), 5, pre)
    assert torch.equal(x[:, :3], pre)


def test_expert_reads_the_last_vlm_layers(tiny):
    obs = random_observation(tiny)
    batch = tiny.processor(obs["images"], obs["instruction"])
    out = tiny.model.vlm.model(**batch, use_cache=True)
    n_vlm, n_exp = tiny.config.text["num_hidden_layers"], tiny.config.expert.num_layers
    pre = tiny.model.encode(batch)
    for i in range(n_exp):
        assert torch.allclose(pre.keys[i], out.past_key_values.layers[n_vlm - n_exp + i].keys, atol=1e-5)
    assert pre.position_ids.shape == (3, 1, batch["input_ids"].shape[1])


def test_velocity_is_causal_and_masked(tiny):
    obs = random_observation(tiny)
    batch = tiny.processor(obs["images"], obs["instruction"])
    amask = torch.ones(1, 10, 32)
    amask[..., 7:] = 0
    ctx = tiny.model.context(tiny.model.encode(batch), torch.zeros(1, 32), amask, prefix_len=2)
    x = torch.randn(1, 10, 32)
    t = torch.tensor([0.3])
    v = tiny.model.velocity(ctx, x, t)
    # prefix rows are 0; dims the action mask drops are left free, as the official DiT (decoding zeroes them)
    assert v[:, :2].abs().max() == 0 and v[:, 2:, 7:].abs().min() > 0
    x2 = x.clone()
    x2[:, 8] += 5.0  # a later slot must not change earlier slots' velocity
    v2 = tiny.model.velocity(ctx, x2, t)
    assert torch.allclose(v[:, :8], v2[:, :8], atol=1e-6) and not torch.allclose(v[:, 8], v2[:, 8])
    x3 = x.clone()
    x3[..., 7:] += 5.0  # masked dims are not inputs
    assert torch.equal(tiny.model.velocity(ctx, x3, t), v)


def test_padding_does_not_change_actions(tiny):
    a, b = random_observation(tiny, 0), random_observation(tiny, 1)
    b["instruction"] = "open the top drawer of the cabinet and put the bowl inside it carefully"
    proc = tiny.processor
    batch = proc.collate([proc.prompt_ids(o["instruction"]) for o in (a, b)], [proc.images(o["images"]) for o in (a, b)])
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # sample 0 is right-padded
    noise = torch.randn(2, 10, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ctx = tiny.model.context(tiny.model.encode(batch), torch.zeros(2, 32), torch.ones(2, 10, 32))
        both = tiny.model.denoise(ctx, noise)
        single = tiny.processor(a["images"], a["instruction"])
        ctx1 = tiny.model.context(tiny.model.encode(single), torch.zeros(1, 32), torch.ones(1, 10, 32))
        alone = tiny.model.denoise(ctx1, noise[:1])
    assert torch.allclose(both[0], alone[0], atol=1e-4)


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
        (dict(prefix=np.zeros((11, 32))), "prefix: too long: p=11 > 10"),
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
    official = official_layout()  # the packaged copy of ../shared/docs/official_layout.tsv
    shared = DOCS / "official_layout.tsv"
    if shared.exists():
        assert shared.read_text() == OFFICIAL_LAYOUT.read_text()
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
        other.model.load_weights(state)


# ---------------------------------------------------------------- processing
def test_patchify_matches_qwen_image_processor():
    from transformers import Qwen2VLImageProcessorPil

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (2, 64, 96, 3), dtype=np.uint8)
    ref = Qwen2VLImageProcessorPil(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3, do_resize=False)(list(imgs), return_tensors="pt")
    ours, grid = patchify(imgs)
    assert grid.tolist() == ref["image_grid_thw"].tolist() == [[1, 4, 6], [1, 4, 6]]
    assert torch.allclose(ours, ref["pixel_values"].float(), atol=1e-6)


def test_patch_embedding_is_the_stock_conv3d(tiny):
    """The matmul patch embedding (backbone.MatmulPatchEmbed) gives Qwen3-VL's Conv3d result and gradients."""
    embed = tiny.model.vlm.model.visual.patch_embed
    x = torch.randn(40, embed.proj.weight[0].numel())
    fast = embed(x)
    stock = Qwen3VLVisionPatchEmbed.forward(embed, x)  # transformers' own Conv3d forward
    assert fast.shape == stock.shape == (40, embed.embed_dim)
    torch.testing.assert_close(fast, stock, atol=1e-5, rtol=1e-5)
    g_fast = torch.autograd.grad(fast.square().sum(), embed.proj.weight)[0]
    g_stock = torch.autograd.grad(stock.square().sum(), embed.proj.weight)[0]
    torch.testing.assert_close(g_fast, g_stock, atol=1e-4, rtol=1e-4)
    half = copy.deepcopy(tiny.model.vlm).to(torch.bfloat16).model.visual.patch_embed  # a copy uses its own weights
    assert half(x).dtype == torch.bfloat16 and embed(x).dtype == torch.float32


def test_tokenizer_and_prompt(tiny):
    tok = tiny.processor.tokenizer
    assert len(tok) == 151669
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|vision_start|>", "<|image_pad|>"]) == [151644, 151652, 151655]
    assert tok("Hello", add_special_tokens=False)["input_ids"] == [9707]
    ids = tiny.processor.prompt_ids("pick up the cube")
    assert ids.count(151655) == 2 * tiny.processor.image_tokens == 8  # 2 views of 64x64 -> 2 x 4 tokens
    text = tok.decode(ids)
    assert text.startswith("<|im_start|>user\nThe following observations are captured from multiple views.\n# Base View\n")
    assert "Generate robot actions for the task:\npick up the cube /no_cot<|im_end|>\n<|im_start|>assistant\n<cot></cot>" in text


# ---------------------------------------------------------------- training signal
def test_loss_options_and_learning():
    policy = XR0Policy.from_preset("tiny", seed=0)
    policy.model.train()
    rng = np.random.default_rng(0)
    samples = [dict(random_observation(policy, i), actions=rng.normal(size=(10, 32)).astype(np.float32)) for i in range(2)]
    batch = policy.make_batch(samples)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    full = policy.model.loss(batch, LossOptions(prefix_len=3, reweight=True, freq_weight=1.0, repeat=2, generator=gen()))
    assert set(full) == {"mse", "loss", "freq"} and torch.isfinite(full["loss"])
    assert torch.allclose(full["loss"], 0.5 * full["mse"] + full["freq"])
    opt = torch.optim.AdamW([p for n, p in policy.model.named_parameters() if not n.startswith("vlm.")], lr=3e-3)
    losses = []
    for _ in range(30):
        out = policy.model.loss(batch, LossOptions(generator=gen()))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert losses[-1] < 0.5 * losses[0], losses


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


def test_dit_with_more_heads_than_the_vlm_has_kv_heads_repeats_them():
    """GQA as the official repeat_kv: DiT head h reads VLM KV head h // (heads / kv_heads)."""
    from xr0.config import ExpertConfig
    from xr0.model.action_expert import VLMCache

    expert = ExpertConfig(num_layers=2, hidden_size=64, intermediate_size=128, num_heads=4, head_dim=16,
                          time_embed_dim=32)
    policy = XR0Policy.from_preset("tiny", seed=0, expert=expert)  # the tiny VLM has 2 KV heads of 16
    obs = random_observation(policy)
    with torch.no_grad():
        cache = policy.model.encode(policy.processor(obs["images"], obs["instruction"]))
        assert cache.keys[0].shape[1] == 2
        repeated = VLMCache([k.repeat_interleave(2, 1) for k in cache.keys],
                            [v.repeat_interleave(2, 1) for v in cache.values], cache.position_ids, cache.pad_mask)
        x, t, mask = torch.randn(1, 10, 32), torch.tensor([0.4]), torch.ones(1, 10, 32)
        v = policy.model.velocity(policy.model.context(cache, torch.zeros(1, 32), mask, 0), x, t)
        v_ref = policy.model.velocity(policy.model.context(repeated, torch.zeros(1, 32), mask, 0), x, t)
    assert torch.equal(v, v_ref) and v.abs().max() > 0
    with pytest.raises(ValueError, match="multiple"):
        XR0Policy.from_preset("tiny", expert=ExpertConfig(num_layers=2, hidden_size=48, num_heads=3, head_dim=16))


def test_a_hugging_face_repo_id_loads_from_the_local_cache_only(tiny, tmp_path):
    """XR0Policy.from_pretrained("org/name") finds the snapshot in the local Hugging Face cache (no network); a repo
    that is not there is a FileNotFoundError naming the `hf download` command."""
    import os
    import subprocess
    import sys

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
