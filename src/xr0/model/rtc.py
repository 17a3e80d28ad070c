"""Inference-time real-time chunking (Black et al. 2025): guided Euler sampling toward a soft target.

For checkpoints not trained with a clean prefix. The old chunk's remaining actions are a target Y with
per-element weights W in [0, 1]; every Euler step adds pseudo-inverse (ΠGDM-style) guidance to the velocity:

    x1_hat = x_t + (1 - t) v(x_t, t)                    one-step estimate of the clean chunk
    g      = (W * (Y - x1_hat))^T d x1_hat / d x_t      a vector-Jacobian product through the denoiser
    v'     = v + min(beta, (1 - t) / (t r_t^2)) g,       r_t^2 = (1 - t)^2 / (t^2 + (1 - t)^2)

Flow convention as in flow.py: t = 0 is noise, t = 1 is data. Weights W = 0 leave the step unguided.
"""

from __future__ import annotations

from typing import Callable

import torch

from .flow import euler_sample

BETA = 5.0  # guidance weight clip: keeps few-step sampling stable (the RTC paper's value)
T_EPS = 1e-4  # t is clamped to [T_EPS, 1 - T_EPS] so the weight formula never divides by zero


def guidance_weight(t: torch.Tensor, beta: float = BETA) -> torch.Tensor:
    """min(beta, (1 - t) / (t r_t^2)) per time in t (any shape), with r_t^2 = (1 - t)^2 / (t^2 + (1 - t)^2)."""
    t = t.float().clamp(T_EPS, 1 - T_EPS)
    r2 = (1 - t) ** 2 / (t**2 + (1 - t) ** 2)
    return ((1 - t) / (t * r2)).clamp_max(beta)


def guided_euler_sample(velocity: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor], noise: torch.Tensor,
                        target: torch.Tensor, weights: torch.Tensor, steps: int = 5, beta: float = BETA,
                        times: torch.Tensor | None = None) -> torch.Tensor:
    """flow.euler_sample of dx/dt = v + guidance from noise (B, T, D) at t = 0 to t = 1 (float32 throughout).

    velocity(x, t, k) is called with grad enabled on x (the caller's parameters may or may not require grad:
    only the gradient with respect to x is taken). target and weights are (B, T, D); weights hold the soft
    mask already padded with 0 past the overlap and on unused action dims. times: euler_times(steps, B).
    """
    target, weights = target.detach().float(), weights.detach().float()

    def guided(x: torch.Tensor, t: torch.Tensor, k: int) -> torch.Tensor:
        v, g = _velocity_and_guidance(velocity, x, t, k, target, weights)
        return v + guidance_weight(t, beta).view(-1, 1, 1) * g

    return euler_sample(guided, noise.detach().float(), steps, times=times)


def _velocity_and_guidance(velocity, x, t, k, target, weights) -> tuple[torch.Tensor, torch.Tensor]:
    """v(x, t) and the vector-Jacobian product (W * (Y - x1_hat))^T d x1_hat / d x, both detached."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = velocity(x, t, k).float()
        x1_hat = x + (1 - t.float()).view(-1, 1, 1) * v
        error = weights * (target - x1_hat)
        (g,) = torch.autograd.grad(x1_hat, x, grad_outputs=error.detach())
    return v.detach(), g
