"""Fixtures shared by the test modules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xr0 import XR0Policy


@pytest.fixture(scope="module")
def tiny() -> XR0Policy:
    """The tiny preset with seed-0 weights, one per test module."""
    return XR0Policy.from_preset("tiny", seed=0)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core machine are overhead-bound: a second OpenMP thread only waits (up to 10x
    slower under oversubscription). Modules opt in with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def random_observation(policy: XR0Policy, seed: int = 0, state_dim: int = 32) -> dict:
    """Random camera images at the policy's size, a fixed instruction and a random state (sample()'s kwargs)."""
    rng = np.random.default_rng(seed)
    h, w = policy.config.image_size
    images = {cam: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for cam in policy.config.cameras}
    return dict(images=images, instruction="put the red block in the bowl",
                state=rng.normal(size=state_dim).astype(np.float32))
