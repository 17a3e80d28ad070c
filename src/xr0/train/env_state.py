"""Training-only supervision from the simulator: predict the environment state (object and goal positions) from
the VLM's image tokens and from the action expert (`xr0 train --env-state-loss W`).

The policy never sees the environment state: it acts from images, its own state and the instruction. A policy
trained from random weights on a few hundred demonstrations learns slowly, from the action loss alone, where a
small target is in the image; this head asks the image tokens' values, and the expert's sink token that reads
them, to encode the recorded object and goal positions (`supervision.environment_state` in xr0's datasets; LeRobot's `observation.environment_state` in older ones), a dense and direct
signal for the same skill. The head is saved next to the training checkpoint (`env_state_head.safetensors`) for resuming, never in the policy's weights,
so exported checkpoints keep the official layout.
"""

from __future__ import annotations

import pathlib

import numpy as np
import torch
from torch import nn

from ..model.headfile import load_head, save_head
from ..processing.images import tokens_per_image

FILE = "env_state_head.safetensors"
FORMAT = "xr0-env-state-head"


def image_values(values: torch.Tensor, mm_token_type_ids: torch.Tensor) -> torch.Tensor:
    """One layer's values (B, kv_heads, L, Dh) at the image tokens (mm_token_type_ids != 0): (B, N, kv_heads * Dh),
    what the head's image readout reads."""
    images = mm_token_type_ids.to(values.device).bool()
    return values.transpose(1, 2).flatten(2)[images].unflatten(0, (images.shape[0], -1))


class EnvStateHead(nn.Module):
    """Two readouts of the environment state (B, De), each trained to predict it:

    - `vlm`: the image tokens' values in the VLM's last layer (B, N, C), which the expert's last layer attends to:
      per-token LayerNorm + projection to `width`, then one linear map of all tokens (it knows which token is where);
    - `expert`: the DiT's last hidden state at the sink token (B', H): a two-layer MLP. The sink sees only the
      VLM's K/V (not the robot state, not the noisy actions) and every action token attends to it, so the expert
      itself learns to gather the object and goal positions where its actions can read them.

    Targets are normalised by the dataset's mean/std, kept as buffers.
    """

    FILE = FILE

    def __init__(self, value_size: int, num_tokens: int, expert_size: int, env_state_dim: int, width: int = 32):
        super().__init__()
        if min(value_size, num_tokens, expert_size, env_state_dim, width) < 1:
            raise ValueError(f"invalid env-state head: values {value_size}, tokens {num_tokens}, expert "
                             f"{expert_size}, env_state_dim {env_state_dim}, width {width}")
        self.dims = {"value_size": value_size, "num_tokens": num_tokens, "expert_size": expert_size,
                     "env_state_dim": env_state_dim, "width": width}
        self.vlm = nn.Sequential(nn.LayerNorm(value_size), nn.Linear(value_size, width), nn.GELU(), nn.Flatten(1),
                                 nn.Linear(num_tokens * width, env_state_dim))
        self.expert = nn.Sequential(nn.Linear(expert_size, expert_size), nn.GELU(),
                                    nn.Linear(expert_size, env_state_dim))
        self.register_buffer("mean", torch.zeros(env_state_dim))
        self.register_buffer("std", torch.ones(env_state_dim))

    @classmethod
    def for_model(cls, model, dataset, max_samples: int = 20_000) -> "EnvStateHead":
        """Sized for `model` (XR0Model) and `dataset`'s environment state, normalised by its statistics."""
        dim = int(getattr(dataset, "env_state_dim", 0) or 0)
        if not dim:
            raise ValueError("--env-state-loss needs a dataset with supervision.environment_state "
                             "(`xr0 data metaworld` records it)")
        text, cfg = model.config.text, model.config
        head = cls(text["num_key_value_heads"] * text["head_dim"], tokens_per_image(cfg.image_size) * len(cfg.cameras),
                   cfg.expert.hidden_size, dim)
        n = len(dataset)
        picks = np.linspace(0, n - 1, min(n, max_samples)).astype(int)
        values = np.stack([dataset.env_state(int(i)) for i in picks])
        head.mean.copy_(torch.from_numpy(values.mean(0)))
        head.std.copy_(torch.from_numpy(np.where(values.std(0) > 1e-6, values.std(0), 1.0)))
        return head.to(model.device)

    def forward(self, tokens: torch.Tensor, sink_hidden: torch.Tensor) -> dict[str, torch.Tensor]:
        """Image-token values (B, N, C) and the expert's sink hidden (B', H) -> normalised predictions."""
        if tokens.shape[1] != self.dims["num_tokens"]:
            raise ValueError(f"env-state head expects {self.dims['num_tokens']} image tokens, got {tokens.shape[1]}")
        return {"vlm": self.vlm(tokens.float()), "expert": self.expert(sink_hidden.float())}

    def read_images(self, tokens: torch.Tensor) -> torch.Tensor:
        """The image-token readout in the environment state's own units (B, De)."""
        return self.vlm(tokens.float()) * self.std + self.mean

    def loss(self, tokens: torch.Tensor, sink_hidden: torch.Tensor, env_state: torch.Tensor,
             repeat: int = 1) -> dict[str, torch.Tensor]:
        """MSE per readout in normalised units (1.0 = predicting the mean). The expert ran `repeat` noise draws
        per sample (B' = B * repeat, sample-major)."""
        target = (env_state.to(self.mean.device).float() - self.mean) / self.std
        pred = self(tokens, sink_hidden)
        return {"vlm": (pred["vlm"] - target).pow(2).mean(),
                "expert": (pred["expert"] - target.repeat_interleave(repeat, dim=0)).pow(2).mean()}

    def objective(self, weight: float):
        """The auxiliary term of XR0Model.loss (LossOptions.auxiliary): `weight` x the mean of both readouts' MSE,
        each logged (env_state_vlm, env_state_expert) with their mean (env_state)."""

        def term(features) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            if "env_state" not in features.batch:
                raise ValueError("the env-state loss needs samples with env_state (supervision.environment_state)")
            tokens = image_values(features.last_values, features.batch["mm_token_type_ids"])
            terms = self.loss(tokens, features.sink_hidden, features.batch["env_state"], features.repeat)
            logged = {f"env_state_{k}": v for k, v in terms.items()}
            logged["env_state"] = sum(terms.values()) / len(terms)
            return weight * logged["env_state"], logged

        return term

    def save(self, folder: str | pathlib.Path, state_dict: dict | None = None) -> pathlib.Path:
        sd = self.state_dict() if state_dict is None else state_dict
        return save_head(pathlib.Path(folder) / FILE, {k: v.detach().contiguous().cpu() for k, v in sd.items()},
                         FORMAT, self.dims)

    @classmethod
    def load(cls, path: str | pathlib.Path) -> "EnvStateHead":
        file, config, state = load_head(path, FILE, FORMAT, "env-state head")
        try:
            head = cls(**config)
            head.load_state_dict(state, strict=True)
        except (TypeError, ValueError, RuntimeError) as e:  # bad config, missing or mis-shaped tensors
            raise ValueError(f"{file}: env-state head does not match its config: {e}") from e
        return head
