"""The fast inference path gives the reference's actions: fused fp32 DiT, bf16, static buffers, K/V reuse vs naive."""

import copy
import io
import json
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from xr0.bench import Runner, Setup, observation
from xr0.cli import main

# fp32 paths that do the same math in another order (fused norms/modulation, one batched time MLP, padded K/V):
# rounding differences of ~1e-7 per op, far below this.
FP32_ATOL = 1e-5
# bf16 keeps 8 significant bits (rounding <= 2^-9 = 0.2% per op). Actions of |a| <= ~4 (ulp 2^-6 at 4) come out of
# the VLM, 5 Euler steps and the DiT, so a few ulps at the largest actions are expected: max 0.05, and a mean error
# of 0.005 (~1% of the actions' spread). Measured on tiny/small: max 0.007-0.010, mean 0.0014.
BF16_MAX, BF16_MEAN = 0.05, 0.005


pytestmark = pytest.mark.usefixtures("one_thread")


def _rms(norm, x):
    xf = x.float()
    return norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.eps)).to(x.dtype)


def _rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


def reference_velocity(model, ctx, x, t):
    """Spec §2.3 written plainly: unfused RMSNorms, x * (1 + scale) + shift, concatenated K/V, masked write."""
    dtype, B = model.sink.weight.dtype, x.shape[0]
    time_mod = model.t_projector(model.t_embedder(t)).view(B, 6, -1)
    h = torch.cat([model.sink.weight.expand(B, 1, -1), ctx.state_token,
                   model.action_projector((x * ctx.action_mask).to(dtype))], dim=1)
    S = h.shape[1]
    for layer, vlm_k, vlm_v in zip(model.dit.layers, ctx.cache.keys, ctx.cache.values):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = (time_mod + layer.adaln_table).unsqueeze(2).unbind(1)
        a = layer.attn
        y = _rms(layer.input_layernorm, h) * (1 + scale_a) + shift_a
        q, k, v = a.qkv_proj(y).view(B, S, 3, a.heads, a.head_dim).permute(2, 0, 3, 1, 4)
        q, k = _rms(a.q_norm, q), _rms(a.k_norm, k)
        q, k = q * ctx.cos + _rotate_half(q) * ctx.sin, k * ctx.cos + _rotate_half(k) * ctx.sin
        att = F.scaled_dot_product_attention(q, torch.cat([vlm_k, k], 2), torch.cat([vlm_v, v], 2), attn_mask=ctx.mask)
        h = _rms(layer.middle_layernorm, h + gate_a * a.o_proj(att.transpose(1, 2).reshape(B, S, -1)))
        y = _rms(layer.post_layernorm, h) * (1 + scale_m) + shift_m
        y = layer.mlp.down_proj(F.silu(layer.mlp.gate_proj(y)) * layer.mlp.up_proj(y))
        h = _rms(layer.final_layernorm, h + gate_m * y)
    out = model.action_output_layer(h[:, 2:]).to(x.dtype)  # the official DiT leaves masked dims free
    out[:, : ctx.prefix_len] = 0
    return out


def reference_denoise(model, ctx, noise, steps, prefix):
    x = noise.clone()
    if prefix is not None:
        x[:, : prefix.shape[1]] = prefix
    for k in range(steps):
        x = x + (1.0 / steps) * reference_velocity(model, ctx, x, torch.full((x.shape[0],), k / steps))
    return x


@torch.inference_mode()
def test_fp32_fast_denoise_matches_the_plain_reference(tiny):
    obs = observation(tiny, seed=1)
    batch = tiny.processor(obs["images"], obs["instruction"])
    amask = torch.ones(1, 10, 32)
    amask[..., 7:] = 0
    ctx = tiny.model.context(tiny.model.encode(batch), torch.randn(1, 32), amask, prefix_len=3)
    noise, prefix = torch.randn(1, 10, 32), torch.randn(1, 3, 32)
    fast = tiny.model.denoise(ctx, noise, 5, prefix)
    ref = reference_denoise(tiny.model, ctx, noise, 5, prefix)
    assert (fast - ref).abs().max() < FP32_ATOL
    assert torch.equal(fast[:, :3], prefix)  # held fixed
    t = torch.tensor([0.37])  # the public per-call velocity (training path) agrees too, at any t
    assert (tiny.model.velocity(ctx, noise, t) - reference_velocity(tiny.model, ctx, noise, t)).abs().max() < FP32_ATOL


def test_bf16_actions_match_fp32(tiny):
    half = copy.deepcopy(tiny).to(torch.bfloat16)
    obs = observation(tiny, seed=0, prefix_len=4)
    ref, out = tiny.sample(**obs), half.sample(**obs)
    err = np.abs(out - ref)[4:]
    assert err.max() < BF16_MAX and err.mean() < BF16_MEAN, (err.max(), err.mean())
    assert np.array_equal(out[:4], ref[:4])


def test_naive_equals_kv_reuse(tiny):
    obs = observation(tiny, seed=2, prefix_len=2)
    kv, _, _ = Runner(tiny, Setup(), obs, 5, "cpu").chunk()
    naive, stages, _ = Runner(tiny, Setup(naive=True), obs, 5, "cpu").chunk()
    assert np.abs(naive - kv).max() < FP32_ATOL
    assert np.array_equal(kv, tiny.sample(**obs, seed=0))  # the staged benchmark pipeline is sample() itself
    assert {"preprocess", "prefill", "context", "dit_step_4", "postprocess"} <= set(stages)


def test_static_denoiser_matches_eager(tiny):
    obs = observation(tiny, seed=3, prefix_len=3)
    ref = tiny.sample(**obs, seed=5)
    L = len(tiny.processor.prompt_ids(obs["instruction"]))
    try:
        static = tiny.model.use_static_denoiser(max_len=L + 13)  # padded: the extra K/V slots must be masked out
        assert not static.cuda_graph
        out = tiny.sample(**obs, seed=5)
        assert np.abs(out - ref).max() < FP32_ATOL and np.array_equal(out[:3], ref[:3])
        tiny.model.use_static_denoiser(max_len=L - 1)  # prompt does not fit: falls back to the eager loop
        assert np.array_equal(tiny.sample(**obs, seed=5), ref)
    finally:
        tiny.model.use_static_denoiser(None)


def _cli(*argv) -> dict:
    buf = io.StringIO()
    with redirect_stdout(buf):
        assert main(list(argv)) == 0
    return json.loads(buf.getvalue().strip().splitlines()[-1])


def test_bench_cli_json():
    res = _cli("bench", "latency", "--preset", "tiny", "--runs", "2", "--warmup", "0", "--prefix", "2",
               "--compare", "naive", "--threads", "1", "--json")
    assert res["max_abs_diff_vs_sample"] == 0 and res["compare"]["naive"]["naive"]
    assert res["p50_ms"] > 0 and {"preprocess", "prefill", "dit_step_0", "postprocess"} <= set(res["stages"])
    assert {"torch", "transformers", "threads", "device", "dtype", "preset"} <= set(res)
    res = _cli("bench", "train", "--preset", "tiny", "--batch-size", "2", "--steps", "1", "--warmup", "0",
               "--threads", "1", "--json")
    assert res["samples_per_s"] > 0 and np.isfinite(res["loss_last"])


@pytest.mark.slow
def test_compiled_step_matches_eager(tiny):  # slow: inductor needs ~30 s to compile on 2 cores
    obs = observation(tiny, seed=4)
    ref = tiny.sample(**obs)
    fast = copy.deepcopy(tiny)
    fast.model.compile_denoiser()
    assert np.abs(fast.sample(**obs) - ref).max() < FP32_ATOL
