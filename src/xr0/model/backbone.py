"""The VLM: stock transformers Qwen3-VL, run once per observation into a `VLMCache` of per-layer K/V."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.cache_utils import DynamicCache
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionPatchEmbed

from .action_expert import VLMCache


def build_vlm(vlm_config: dict) -> Qwen3VLForConditionalGeneration:
    """A Qwen3-VL built from its config (random weights; no download). Attention runs through torch SDPA."""
    cfg = Qwen3VLConfig(**vlm_config)
    cfg._attn_implementation = "sdpa"
    cfg.text_config._attn_implementation = "sdpa"
    cfg.vision_config._attn_implementation = "sdpa"
    vlm = Qwen3VLForConditionalGeneration(cfg)
    vlm.model.visual.patch_embed.__class__ = MatmulPatchEmbed  # a class, so deep copies keep their own weights
    return vlm


class MatmulPatchEmbed(Qwen3VLVisionPatchEmbed):
    """Qwen3-VL's patch embedding (a Conv3d whose stride equals its kernel, over pixel rows that are already one
    patch each) run as the single matmul it is: same weights and names, and faster on the CPU (docs/benchmarks.md)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight
        return F.linear(hidden_states.to(w.dtype).reshape(-1, w[0].numel()), w.reshape(w.shape[0], -1),
                        self.proj.bias)


class EncodeCache(DynamicCache):
    """The K/V of one VLM pass. A layer's update replaces what it holds instead of appending, so the replay of a
    checkpointed layer in backward (activation checkpointing) recomputes the same K/V instead of doubling them; a
    single pass is unchanged (each layer writes once)."""

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        if layer_idx < len(self.layers) and self.layers[layer_idx].is_initialized:
            self.layers[layer_idx].is_initialized = False  # start the layer over: lazy init, then the same concat
        return super().update(key_states, value_states, layer_idx, *args, **kwargs)


def set_activation_checkpointing(vlm: Qwen3VLForConditionalGeneration, on: bool) -> None:
    """transformers' own switch (non-reentrant torch.utils.checkpoint on every text layer and vision block). The
    text layers keep writing their K/V into the cache under it (`_can_checkpoint_with_cache`: EncodeCache makes the
    replay harmless), because the expert reads them."""
    if on:
        vlm.activation_checkpointing_enable({"use_reentrant": False})
    else:
        vlm.activation_checkpointing_disable()
    for layer in vlm.model.language_model.layers:
        layer._can_checkpoint_with_cache = on


def vlm_position_ids(vlm: Qwen3VLForConditionalGeneration, batch: dict) -> torch.Tensor:
    """The 3-axis M-RoPE position ids (3, B, L), computed explicitly (never via the model's stored rope_deltas)."""
    pos, _ = vlm.model.get_rope_index(batch["input_ids"], batch["mm_token_type_ids"],
                                      image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])
    return pos


def encode(vlm: Qwen3VLForConditionalGeneration, batch: dict, num_layers: int,
           inputs_embeds: torch.Tensor | None = None) -> tuple[VLMCache, torch.Tensor]:
    """Run the VLM once over prompts + images and keep the K/V of its last `num_layers` layers.

    batch: input_ids, attention_mask, mm_token_type_ids (B, L); pixel_values (N, C*2*16*16); image_grid_thw (n_img, 3).
    inputs_embeds (optional) replaces the token embeddings (stage 1 splices in state/choice tokens).
    Returns (VLMCache, last hidden states (B, L, H_vlm)). The K/V are post-RoPE and post k-norm, as cached by Qwen3-VL.
    """
    position_ids = vlm_position_ids(vlm, batch)
    cache = EncodeCache(config=vlm.config.text_config)
    out = vlm.model(
        input_ids=None if inputs_embeds is not None else batch["input_ids"],
        inputs_embeds=inputs_embeds,
        attention_mask=batch["attention_mask"],
        pixel_values=batch["pixel_values"],
        image_grid_thw=batch["image_grid_thw"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        position_ids=position_ids,
        past_key_values=cache,
        use_cache=True,
    )
    layers = out.past_key_values.layers
    first = len(layers) - num_layers
    keys = [layers[i].keys for i in range(first, len(layers))]
    values = [layers[i].values for i in range(first, len(layers))]
    pad_mask = batch["attention_mask"].bool()
    return VLMCache(keys, values, position_ids, pad_mask), out.last_hidden_state
