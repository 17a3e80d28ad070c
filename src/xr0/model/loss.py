"""The flow-matching objective: its switches (LossOptions) and the official `compute_loss` (flow_loss)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass
class LossOptions:
    """Switches of the flow-matching objective (spec §6.3-6.4); the defaults are synchronous post-training."""

    prefix_len: int = 0
    hidden_prefix: torch.Tensor | None = None  # prefix dropout draw (bool (p,)), shared by the batch
    repeat: int = 1  # training_repeat: noise/time draws per VLM pass
    reweight: bool = False  # L1 re-weighting from a no-grad rollout (async samples with p > 0)
    reweight_steps: int = 5
    freq_weight: float = 0.0  # c of the rFFT term
    generator: torch.Generator | None = None
    # The loss's own draws, when handed in (B * repeat,) times and (B * repeat, T, D) noise; else drawn from
    # `generator`. Reproducing a run of the official code needs its draws: its Beta sampler is another stream.
    time: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    # Training-only: an extra objective on the pass's features, (features) -> (weighted term added to the loss,
    # values to log), e.g. xr0.train.env_state's readout of object and goal positions.
    auxiliary: Callable[[LossFeatures], tuple[torch.Tensor, dict[str, torch.Tensor]]] | None = None


@dataclass
class LossFeatures:
    """What an auxiliary objective may read from one loss pass."""

    batch: dict  # the training batch as given
    last_values: torch.Tensor  # (B, kv_heads, L, Dh): the VLM's last layer values, what the expert's last layer reads
    sink_hidden: torch.Tensor  # (B * repeat, H): the DiT's last hidden state at the sink token
    repeat: int  # noise/time draws per VLM pass (sample-major)


def flow_loss(pred: torch.Tensor, target: torch.Tensor, active: torch.Tensor, weight: torch.Tensor,
              freq_weight: float) -> dict[str, torch.Tensor]:
    """The official `compute_loss` on (B, T - p, D) suffix rows: 0.5 * weighted MSE + c * weighted rFFT-L1.

    The weight is normalised by its mean over the active entries (the action mask), then every entry is clamped to
    [0.5, 5]. The MSE averages the active entries; the rFFT term takes pred and target unmasked (inactive dims
    enter it too, as the official code) and weights each sample by its mean weight over all entries.
    """
    pred, target, weight = pred.float(), target.float(), weight.float()
    if not active.any():
        zero = (pred.reshape(-1)[0] - target.reshape(-1)[0]) * 0.0
        return {"loss": zero, "mse": zero, "freq": zero}
    with torch.no_grad():
        weight = weight.clone()
        weight[active] = weight[active] / weight[active].mean()
        weight = weight.clamp(0.5, 5.0)
    mse = ((pred - target).pow(2) * weight)[active].mean()
    out = {"mse": mse, "loss": 0.5 * mse}
    if freq_weight:
        spectral = (torch.fft.rfft(pred, dim=1) - torch.fft.rfft(target, dim=1)).abs()
        out["freq"] = (spectral * weight.mean(dim=(1, 2))[:, None, None]).mean()
        out["loss"] = out["loss"] + freq_weight * out["freq"]
    return out
