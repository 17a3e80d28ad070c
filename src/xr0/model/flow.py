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


def initial_noise(shape: tuple[int, ...], seed: int, device=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """x_0 of sampling as the official runtime draws it: `torch.manual_seed(seed)` then `randn_like` of a tensor of
    this shape in the model's dtype on its device. A private generator in the same state gives the same numbers and
    leaves the global one alone. CPU float32 draws of >= 16 numbers depend on the CPU's vector ISA in the last bits;
    CUDA generators give other numbers altogether."""
    gen = torch.Generator(device=device or "cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=gen, device=device, dtype=dtype)


def interpolate(actions: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (x_t, velocity target) for (B, T, D) actions/noise and (B,) times."""
    tt = t.view(-1, *([1] * (actions.dim() - 1))).to(actions.dtype)
    return tt * actions + (1 - tt) * noise, actions - noise


def euler_times(steps: int, batch: int = 1, device=None) -> torch.Tensor:
    """The fixed Euler grid t_k = k / steps as a (steps, batch) float32 table.

    Made once per chunk: everything that depends on t alone (the adaLN modulation) can then be precomputed, and the
    loop itself creates no tensors from host data (which a CUDA-graph capture forbids).
    """
    dt = 1.0 / steps
    times = torch.tensor([k * dt for k in range(steps)], dtype=torch.float32, device=device)
    return times[:, None].expand(steps, batch)


def euler_sample(velocity: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], noise: torch.Tensor,
                 steps: int = 5, prefix: torch.Tensor | None = None, times: torch.Tensor | None = None) -> torch.Tensor:
    """Integrate dx/dt = v(x, t) from t = 0 (noise) to t = 1 with `steps` Euler steps.

    velocity(x, t, k) gets the (B,) times of step k and k itself, so a caller can index tables it built per chunk.
    times: euler_times(steps, B) if not given. A clean prefix (B, p, D) occupies the first p slots and stays fixed:
    `velocity` must return zero there.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = noise.clone()
    if prefix is not None:
        x[:, : prefix.shape[1]] = prefix.to(x.dtype)
    if times is None:
        times = euler_times(steps, x.shape[0], x.device)
    dt = 1.0 / steps
    for k in range(steps):
        x = x + dt * velocity(x, times[k], k)
    return x
