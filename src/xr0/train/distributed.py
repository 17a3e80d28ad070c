"""torchrun process groups, the loss as one module call, and FSDP2 sharding units."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..model.vla import XR0Model
from .recipes import Recipe


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: str = "auto") -> Dist:
    """Join the torchrun process group if there is one (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu") if device in ("auto", "cuda") else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cpu":
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        return Dist(dist.get_rank(), dist.get_world_size(), local, dev)
    return Dist(0, 1, 0, dev)


class LossModule(nn.Module):
    """The model (+ recipe heads) behind one forward(), so DDP/FSDP see the loss computation as a module call."""

    def __init__(self, model: XR0Model, recipe: Recipe, heads: nn.Module | None = None):
        super().__init__()
        self.model = model
        self.heads = heads
        self.recipe = recipe

    def forward(self, batch: dict, opts, vl_batch: dict | None = None) -> dict[str, torch.Tensor]:
        return self.recipe.loss(self.model, batch, opts, self.heads, vl_batch)


def shard(module: LossModule, param_dtype: torch.dtype | None = None) -> nn.Module:
    """FSDP2: one unit per VLM decoder layer, vision block and DiT layer; the root holds the rest.

    The expert reads each VLM layer's K/V straight from the cache, a side output FSDP's pre-backward hook does not
    see (the last VLM layers' hidden states are not even used), so the text layers stay unsharded from forward to
    backward (ZeRO-2-like for them, as the released DeepSpeed run) instead of being re-gathered in backward.
    DiT layers are sharded by attention and MLP only: their adaLN tables are read outside the layer's forward
    (ActionExpert.modulation_table), so they stay with the root unit, gathered for the whole step.

    `param_dtype` (bf16 under `--dtype bf16`): FSDP2's mixed-precision policy gathers parameters in that dtype for
    compute and reduces gradients in fp32; the sharded master weights and optimiser state stay fp32.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    fully_shard = functools.partial(fully_shard, mp_policy=mp)

    model = module.model
    for layer in model.vlm.model.language_model.layers:
        fully_shard(layer, reshard_after_forward=False)
    for unit in [*model.vlm.model.visual.blocks, *(m for layer in model.dit.layers for m in (layer.attn, layer.mlp))]:
        fully_shard(unit)
    fully_shard(module)
    return module
