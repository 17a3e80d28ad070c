"""XR0Model (src/xr0/model): the Λ mask and positions, the time law, sampling from the VLM cache, the loss, GQA."""


import numpy as np
import pytest
import torch
from scipy import stats

from conftest import random_observation
from xr0 import LossOptions, XR0Policy
from xr0.config import ExpertConfig
from xr0.model.action_expert import VLMCache
from xr0.model.flow import sample_time
from xr0.model.masks import expert_mask, expert_positions, sample_hidden_prefix


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


def test_dit_with_more_heads_than_the_vlm_has_kv_heads_repeats_them():
    """GQA as the official repeat_kv: DiT head h reads VLM KV head h // (heads / kv_heads)."""
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
