"""Flow matching (spec §3): t = 0 is noise, t = 1 is data; x_t = t*a + (1-t)*eps, velocity target a - eps."""

from __future__ import annotations

from typing import Callable

import torch

T_MAX = 0.999
BETA_ALPHA, BETA_BETA = 1.5, 1.0


def sample_time(n: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """Training times t = 0.999 * (1 - u), u ~ Beta(1.5, 1): density highest at the noisy end (t -> 0).

    Beta(a, 1) has CDF u^a, so u = U^(1/a) with U uniform: exact and seedable with a torch.Generator.
    """
    uniform = torch.rand(n, generator=generator, device=device)
    u = uniform.pow(1.0 / BETA_ALPHA)
    return T_MAX * (1.0 - u)


def interpolate(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x_t, velocity target) for (B, T, D) actions/noise and (B,) times."""
    tt = t.view(-1, *([1] * (actions.dim() - 1))).to(actions.dtype)
    return tt * actions + (1 - tt) * noise, actions - noise


def euler_sample(velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor,
                 steps: int = 5, prefix: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t = 0 (noise) to t = 1 with `steps` Euler steps.

    A clean prefix (B, p, D) occupies the first p slots and stays fixed: `velocity` must return zero there.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = noise.clone()
    if prefix is not None:
        x[:, : prefix.shape[1]] = prefix.to(x.dtype)
    dt = 1.0 / steps
    for k in range(steps):
        t = torch.full((x.shape[0],), k * dt, dtype=torch.float32, device=x.device)
        x = x + dt * velocity(x, t)
    return x
