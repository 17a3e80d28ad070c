"""LoRA for fine-tuning: low-rank adapters on chosen linears of the VLM, merged whenever the weights are saved.

Our own ~80 lines rather than `peft`: peft wraps each linear in a new module (`base_layer`, `lora_A.default`), which
renames every adapted tensor, while xr0 checkpoints must keep the official tensor names and load strictly in every
command. Here an adapted linear stays an `nn.Linear` under its own name (its class is swapped for `LoRALinear`,
which adds `lora_A`, `lora_B`), and its `state_dict` entry `weight` is the merged W + (alpha / r) · B A in fp32, so
every writer of the model (`XR0Policy.save_pretrained`, FSDP's state dict) writes the official layout with no
adapters. The merge is never rounded back to the weight's dtype: in bf16 that would drop most small updates (the
trainer also puts the weights back as they were loaded before it saves: Trainer.weights_as_loaded).
The forward never builds the merged matrix: y = x Wᵀ + (alpha / r) · (x Aᵀ) Bᵀ keeps only x, A, B and x Aᵀ for
backward. B starts at zero, so step 0 computes exactly what the base model computes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SCOPE = "vlm.model.language_model.layers."  # adapters go on the VLM's text layers
ADAPTERS = "lora.safetensors"  # a training checkpoint's adapters (trainer only; the policy files hold merged weights)


class LoRALinear(nn.Linear):
    """An nn.Linear with a rank-r update; made by `add_lora` from an existing linear (same weight object)."""

    lora_A: nn.Parameter
    lora_B: nn.Parameter
    scaling: float

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scaling

    def delta(self) -> torch.Tensor:
        return (self.lora_B.float() @ self.lora_A.float()) * self.scaling

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        # the merged weight under the linear's own name, in fp32, adapters left out (`adapter_state` saves them)
        merged = self.weight.float() + self.delta().to(self.weight.device)
        destination[prefix + "weight"] = merged if keep_vars else merged.detach()
        if self.bias is not None:
            destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()


def add_lora(model: nn.Module, rank: int, alpha: float | None = None, targets=DEFAULT_TARGETS,
             seed: int = 0) -> list[str]:
    """Adapters of rank `rank` on every nn.Linear under SCOPE whose last name is in `targets`; returns their
    names. A ~ Kaiming-uniform (seeded by `seed`), B = 0; scaling alpha / rank (alpha defaults to rank)."""
    if rank < 1:
        raise ValueError(f"lora rank must be >= 1, got {rank}")
    targets = tuple(targets)
    gen = torch.Generator().manual_seed(seed)
    names = []
    for name, module in model.named_modules():
        if not (name.startswith(SCOPE) and name.rsplit(".", 1)[-1] in targets and type(module) is nn.Linear):
            continue
        w = module.weight
        a = torch.empty(rank, module.in_features)
        nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
        module.__class__ = LoRALinear
        module.lora_A = nn.Parameter(a.to(w.device, torch.float32))
        module.lora_B = nn.Parameter(torch.zeros(module.out_features, rank, device=w.device))
        module.scaling = (alpha or rank) / rank
        names.append(name)
    if not names:
        raise ValueError(f"lora: no linear named {list(targets)} under {SCOPE!r}")
    return names


def lora_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters alone (`<linear>.lora_A`, `<linear>.lora_B`), CPU fp32, for a training checkpoint."""
    return {f"{n}.{k}": getattr(m, k).detach().float().cpu().contiguous()
            for n, m in lora_modules(model).items() for k in ("lora_A", "lora_B")}


def load_adapters(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Strictly: every adapter of `model` from `state` and nothing else."""
    mods = lora_modules(model)
    expected = {f"{n}.{k}" for n in mods for k in ("lora_A", "lora_B")}
    if set(state) != expected:
        raise ValueError(f"lora adapters do not match the model: missing {sorted(expected - set(state))[:5]}, "
                         f"unexpected {sorted(set(state) - expected)[:5]}")
    with torch.no_grad():
        for key, value in state.items():
            name, k = key.rsplit(".", 1)
            getattr(mods[name], k).copy_(value)
