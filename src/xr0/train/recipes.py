"""Named training recipes (spec §4-6): which parameters train, and which flow-matching options each batch uses.

A recipe is a typed config plus three hooks the trainer calls: `configure(model)` once (freezing, ablations),
`options(chunk_len, rng, generator, ...)` per batch (prefix length, prefix dropout, re-weighting), and `loss(...)`.
Every ingredient of the asynchronous recipe is a separate field, so an ablation is one CLI flag.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from ..config import MAX_PREFIX, ExpertConfig
from ..model import choice
from ..model.masks import sample_hidden_prefix
from ..model.loss import LossOptions
from ..model.vla import XR0Model
from .env_state import EnvStateHead

EMBEDDINGS = "vlm.model.language_model.embed_tokens.weight"  # the input token embeddings (tied to lm_head)
# `--freeze` parts: parameter-name prefixes (the whole name for the embeddings); "expert" is everything not "vlm."
FREEZE_PARTS = {"vision": "vlm.model.visual.", "vlm": "vlm.", "embeddings": EMBEDDINGS, "expert": None}


def freeze(model: XR0Model, parts) -> None:
    """requires_grad off for the named FREEZE_PARTS (on top of a recipe's own freezing)."""
    unknown = sorted(set(parts) - set(FREEZE_PARTS))
    if unknown:
        raise ValueError(f"--freeze: unknown part(s) {unknown}; choose from {sorted(FREEZE_PARTS)}")
    for name, p in model.named_parameters():
        for part in parts:
            prefix = FREEZE_PARTS[part]
            if (not name.startswith("vlm.")) if prefix is None else name.startswith(prefix):
                p.requires_grad_(False)


@dataclass
class Recipe:
    """One training recipe. Defaults are the released post-training config (spec §6.4-6.6)."""

    name: str
    train_vlm: bool = True  # False: VLM frozen (requires_grad off, eval mode, encoded under no_grad)
    train_expert: bool = True  # False: the DiT is not trained (stage 1 trains only the VLM and its heads)
    freeze_embeddings: bool = True  # keep the input token embeddings fixed (the released post-training does)
    async_prefix: bool = False  # training-time action prefix (spec §6.2)
    prefix_prob: float = 0.5  # per batch: p ~ U{1..min(max_prefix, T)} with this probability, else p = 0
    max_prefix: int = MAX_PREFIX
    prefix_dropout: float = 0.5  # hide each prefix token (except the last `keep_last`) from noisy queries
    keep_last: int = 2
    reweight: bool = False  # L1 re-weighting from a no-grad 5-step rollout (spec §6.3)
    freq_weight: float = 1.0  # c of the rFFT term; the released XR0.yaml sets enable_freq: true
    repeat: int = 4  # training_repeat: noise/time draws per VLM pass
    lambda_mask: bool = True  # Λ / local-window band (the model's w, or the architecture's 4); False: plain causal
    rope_offset: int = ExpertConfig.rope_offset  # the architecture's +10 on noisy action tokens; 0 disables it
    stage: int = 2  # 1 = choice-policy pre-training (xr0.model.choice), 2 = flow matching
    env_state_weight: float = 0.0  # > 0: training-only env-state supervision (xr0.train.env_state)

    def validate(self) -> None:
        if self.repeat < 1:
            raise ValueError(f"recipe {self.name}: repeat must be >= 1, got {self.repeat}")
        if self.max_prefix < 0:
            raise ValueError(f"recipe {self.name}: max_prefix must be >= 0, got {self.max_prefix}")
        if not 0.0 <= self.prefix_prob <= 1.0 or not 0.0 <= self.prefix_dropout <= 1.0:
            raise ValueError(f"recipe {self.name}: probabilities must lie in [0, 1]")
        if self.freq_weight < 0:
            raise ValueError(f"recipe {self.name}: freq_weight must be >= 0, got {self.freq_weight}")
        if self.env_state_weight < 0 or (self.env_state_weight and self.stage == 1):
            raise ValueError(f"recipe {self.name}: env_state_weight must be >= 0 and needs stage 2, "
                             f"got {self.env_state_weight} (stage {self.stage})")
        if self.rope_offset < 0:
            raise ValueError(f"recipe {self.name}: rope_offset must be >= 0, got {self.rope_offset}")

    # ------------------------------------------------------------------ once, before training
    def configure(self, model: XR0Model) -> None:
        """Apply the ablation switches to the model config (saved with the checkpoint) and set requires_grad.

        The switches are set, not kept: a release folder (which runs causal, without offset, docs/official.md)
        post-trains with the Λ band and the +10 offset, as the official post-training code does."""
        e = model.config.expert
        e.local_window = (e.local_window or ExpertConfig.local_window) if self.lambda_mask else None
        e.rope_offset = self.rope_offset
        # A checkpoint records the longest prefix it was trained with: 0 refuses the async executor (xr0 eval).
        model.config.max_prefix = min(self.max_prefix, model.config.chunk_len) if self.async_prefix else 0
        for name, p in model.named_parameters():
            in_vlm = name.startswith("vlm.")
            frozen = ((in_vlm and not self.train_vlm) or (not in_vlm and not self.train_expert)
                      or (self.freeze_embeddings and name == EMBEDDINGS))
            p.requires_grad_(not frozen)

    def set_mode(self, model: XR0Model) -> None:
        """Training mode, except a frozen VLM stays in eval mode."""
        model.train()
        if not self.train_vlm:
            model.vlm.eval()

    # ------------------------------------------------------------------ per batch
    def options(self, chunk_len: int, rng: random.Random, generator: torch.Generator,
                dropout_generator: torch.Generator | None = None) -> LossOptions:
        """The batch's LossOptions. `rng` gives the one Python draw of the prefix length, `dropout_generator`
        (default: `generator`) the prefix dropout, `generator` the flow times and noise."""
        p, hidden = 0, None
        top = min(self.max_prefix, chunk_len)
        # The official draws: random.random() < 0.5 -> p = random.randint(1, min(6, T)).
        if self.async_prefix and top >= 1 and rng.random() < self.prefix_prob:
            p = rng.randint(1, top)
            if self.prefix_dropout > 0:
                hidden = sample_hidden_prefix(p, self.prefix_dropout, keep_last=self.keep_last,
                                              generator=dropout_generator or generator)
        return LossOptions(prefix_len=p, hidden_prefix=hidden, repeat=self.repeat, reweight=self.reweight,
                           freq_weight=self.freq_weight, generator=generator)

    def loss(self, model: XR0Model, batch: dict, opts: LossOptions, heads: torch.nn.Module | None = None,
             vl_batch: dict | None = None) -> dict[str, torch.Tensor]:
        """The recipe's objective on a batch of XR0Policy.make_batch (+ a Processor.vl_batch in stage 1)."""
        if self.stage == 1:
            return choice.stage1_loss(model, heads, batch, vl_batch)
        if heads is not None:
            opts = dataclasses.replace(opts, auxiliary=heads.objective(self.env_state_weight))
        return model.loss(batch, opts)

    def build_heads(self, model: XR0Model, dataset=None) -> torch.nn.Module | None:
        """Extra trainable modules of the recipe, saved next to the policy: the stage-1 choice heads, or the
        env-state head (sized and normalised from `dataset`)."""
        if self.stage == 1:
            return choice.ChoiceHeads.for_model(model)
        if self.env_state_weight:
            return EnvStateHead.for_model(model, dataset)
        return None


RECIPES: dict[str, Recipe] = {
    # Stage-1 VLM pre-training with choice policies + VL co-training (spec §4): xr0.model.choice.
    "stage1": Recipe("stage1", train_vlm=True, train_expert=False, freeze_embeddings=False, stage=1),
    # Stage-2 pre-training (spec §5): frozen VLM, the DiT learns flow matching from its K/V.
    "stage2": Recipe("stage2", train_vlm=False, freeze_embeddings=True),
    # Synchronous post-training (spec §6.1): everything but the token embeddings, no prefix.
    "post-sync": Recipe("post-sync"),
    # Asynchronous post-training (spec §6.1-6.3): clean prefix + dropout, RoPE offset, Λ mask, L1 re-weighting.
    "post-async": Recipe("post-async", async_prefix=True, reweight=True),
}


def get_recipe(name: str, **overrides) -> Recipe:
    """A fresh copy of a named recipe with field overrides (None values are ignored)."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {sorted(RECIPES)}")
    fields = {f.name for f in dataclasses.fields(Recipe)}
    bad = sorted(set(overrides) - fields)
    if bad:
        raise ValueError(f"unknown recipe field(s) {bad}")
    recipe = dataclasses.replace(RECIPES[name], **{k: v for k, v in overrides.items() if v is not None})
    recipe.validate()
    return recipe
