"""Inference-time RTC (Black et al. 2025): guided sampling toward a soft prefix, on the tiny preset."""

import numpy as np
import pytest
import torch

from conftest import random_observation
from xr0.model.rtc import BETA, guidance_weight
from xr0.runtime import RTCExecutor, SimClock, rtc_prefix_weights
from xr0.runtime.requests import RequestError, validate_observation

HZ = 30.0


def _target(T, D=32):
    """A smooth chunk-long trajectory, in physical units (= normalised units for the tiny identity robot)."""
    return (np.sin(np.linspace(0, 3, T))[:, None] * np.linspace(-1, 1, D)[None]).astype(np.float32)


def _row_error(actions, target):
    return np.abs(actions - target).mean(axis=1)


# ---------------------------------------------------------------- guidance weight
def test_guidance_weight_is_clipped_at_beta():
    w = guidance_weight(torch.tensor([0.0, 0.2, 0.5, 0.8, 1.0]))
    assert w[0] == BETA and w[-1] == BETA  # t clamped away from 0 and 1: the formula blows up there
    r2 = 0.64 / (0.04 + 0.64)
    assert w[1].item() == pytest.approx(0.8 / (0.2 * r2))
    assert w[2].item() == pytest.approx(2.0)  # r^2 = 1/2 at t = 1/2
    assert guidance_weight(torch.tensor([0.5]), beta=1.0).item() == 1.0


# ---------------------------------------------------------------- sampling
def test_without_prefix_weights_sampling_is_unchanged(tiny):
    """sample() without prefix_weights equals the unguided pipeline step by step, bit for bit."""
    obs = random_observation(tiny)
    robot, T, D = tiny.robot(), tiny.config.chunk_len, tiny.config.action_dim
    prefix = np.random.default_rng(1).normal(size=(3, 32)).astype(np.float32)
    for pre, seed in ((None, 3), (prefix, 4)):
        with torch.inference_mode():
            noise = torch.randn((1, T, D), generator=torch.Generator().manual_seed(seed))
            p = 0 if pre is None else len(pre)
            prefix_t = None if pre is None else torch.from_numpy(robot.normalize_actions(pre))[None]
            ctx = tiny.model.context(tiny.model.encode(tiny.processor(obs["images"], obs["instruction"])),
                               torch.from_numpy(robot.normalize_state(obs["state"]))[None],
                               torch.from_numpy(robot.action_mask).expand(1, T, D), p)
            expected = robot.denormalize_actions(tiny.model.denoise(ctx, noise, None, prefix_t)[0].numpy())
        if pre is not None:
            expected[:p] = pre
        np.testing.assert_array_equal(tiny.sample(**obs, prefix=pre, seed=seed), expected)


def test_zero_weights_equal_unguided_sampling(tiny):
    obs, T = random_observation(tiny), tiny.config.chunk_len
    free = tiny.sample(**obs, seed=1)
    guided = tiny.sample(**obs, prefix=_target(T), prefix_weights=np.zeros(T), seed=1)
    np.testing.assert_array_equal(guided, free)


def test_full_weights_pull_the_chunk_onto_the_target(tiny):
    obs, T = random_observation(tiny), tiny.config.chunk_len
    target = _target(T)
    for seed in (0, 1):
        free = tiny.sample(**obs, seed=seed)
        guided = tiny.sample(**obs, prefix=target, prefix_weights=np.ones(T), seed=seed)
        free_err, guided_err = _row_error(free, target), _row_error(guided, target)
        assert guided_err.mean() * 3 < free_err.mean()  # measured: ~0.01 vs ~0.85
        assert guided_err[:3].max() < 0.1  # the first rows track the target ...
        assert not np.array_equal(guided[:3], target[:3])  # ... as generated, not overwritten


def test_decaying_weights_let_the_error_grow_along_the_overlap(tiny):
    obs, T = random_observation(tiny), tiny.config.chunk_len
    target, weights = _target(T), rtc_prefix_weights(T, 2)
    assert weights[0] == 1 and weights[-1] < 0.05
    for seed in (0, 1):
        err = _row_error(tiny.sample(**obs, prefix=target, prefix_weights=weights, seed=seed), target)
        head, middle, tail = err[:2].mean(), err[3:6].mean(), err[-3:].mean()
        assert head < 0.05 and head < middle < tail  # measured: ~0.01, ~0.1-0.3, ~0.6-0.9


def test_partial_prefix_guides_only_its_rows(tiny):
    obs, T = random_observation(tiny), tiny.config.chunk_len
    target = _target(T)
    free = tiny.sample(**obs, seed=2)
    guided = tiny.sample(**obs, prefix=target[:4], prefix_weights=np.ones(4), seed=2)
    err, free_err = _row_error(guided, target), _row_error(free, target)
    assert err[:4].max() < 0.1 and err[:4].mean() * 3 < free_err[:4].mean()
    assert guided.shape == free.shape and np.isfinite(guided).all()


@pytest.mark.parametrize("prefix_rows,weights,match", [
    (3, np.ones(2), r"prefix_weights: expected shape \(3,\)"),
    (3, np.ones((3, 1)), r"prefix_weights: expected shape \(3,\)"),
    (3, [1.0, np.nan, 0.0], "prefix_weights: contains NaN"),
    (3, [1.0, 0.5, -0.1], r"prefix_weights: values must lie in \[0, 1\]"),
    (3, [1.0, 1.5, 0.0], r"prefix_weights: values must lie in \[0, 1\]"),
    (3, ["a", "b", "c"], "prefix_weights: expected numbers"),
    (0, np.ones(3), "prefix_weights: given without a prefix"),
])
def test_bad_prefix_weights_name_the_field(tiny, prefix_rows, weights, match):
    obs = random_observation(tiny)
    prefix = _target(tiny.config.chunk_len)[:prefix_rows] if prefix_rows else None
    with pytest.raises(ValueError, match=match):
        tiny.sample(**obs, prefix=prefix, prefix_weights=weights)


# ---------------------------------------------------------------- executor and server
class ImageEnv:
    """A still world with the tiny preset's cameras; records every command."""

    def __init__(self, policy):
        self.obs = random_observation(policy, seed=5)
        self.acts = []

    def observe(self):
        return {"images": self.obs["images"], "state": self.obs["state"], "prompt": self.obs["instruction"]}

    def act(self, action):
        self.acts.append(np.array(action))


def test_rtc_executor_with_the_tiny_policy(tiny):
    T, d = tiny.config.chunk_len, 2
    calls = []

    def policy(obs, prefix, prefix_weights=None):
        calls.append((None if prefix is None else len(prefix), prefix_weights))
        return tiny.sample(images=obs["images"], instruction=obs["prompt"], state=obs["state"], prefix=prefix,
                           prefix_weights=prefix_weights, seed=len(calls))

    env = ImageEnv(tiny)
    ex = RTCExecutor(env, policy, SimClock(1 / HZ, d / HZ), k=3)
    trace = ex.run(25)
    assert np.isfinite(trace.actions).all() and len(env.acts) == 25
    ok = [r for r in trace.inferences if not r.warmup]
    assert [r.status for r in ok] == ["ok"] * 3
    # all k = 3 remaining actions go in as the soft prefix; the switch is at new[Δt_inf] = new[2]
    assert [(r.start_tick, r.prefix_len, r.switch_index) for r in ok] == [(7, 3, 2), (14, 3, 2), (21, 3, 2)]
    assert trace.table()[:13] == [(0, i) for i in range(9)] + [(1, 2), (1, 3), (1, 4), (1, 5)]
    assert trace.metrics()["holds"] == 0
    # before any delay is measured every weight is 1; afterwards the first Δt_inf are 1 and the rest decay
    np.testing.assert_array_equal(calls[1][1], np.ones(3))
    assert calls[2][1][:2].tolist() == [1.0, 1.0] and 0 < calls[2][1][2] < 1


def _server_meta(tiny):
    return {**tiny.metadata(), "max_prefix": 2}


def test_server_accepts_prefix_weights_beside_action_prefix(tiny):
    meta, T = _server_meta(tiny), tiny.config.chunk_len
    o = random_observation(tiny)
    base = {"images": o["images"], "state": o["state"], "prompt": "x"}
    long_prefix = _target(T)
    got = validate_observation({**base, "action_prefix": long_prefix, "prefix_weights": np.ones(T, np.float32)}, meta)
    assert got.prefix.shape == (T, 32) and got.prefix_weights.shape == (T,)
    assert validate_observation({**base, "action_prefix": long_prefix[:2]}, meta).prefix_weights is None
    bad = [
        ({"action_prefix": long_prefix}, "action_prefix"),  # trained prefix: capped at max_prefix
        ({"prefix_weights": np.ones(2, np.float32)}, "prefix_weights"),  # no prefix
        ({"action_prefix": long_prefix, "prefix_weights": np.ones(3, np.float32)}, "prefix_weights"),
        ({"action_prefix": long_prefix, "prefix_weights": np.full(T, 2.0, np.float32)}, "prefix_weights"),
        ({"action_prefix": long_prefix, "prefix_weights": np.full(T, np.nan, np.float32)}, "prefix_weights"),
    ]
    for extra, field in bad:
        with pytest.raises(RequestError) as info:
            validate_observation({**base, **extra}, meta)
        assert info.value.field == field
