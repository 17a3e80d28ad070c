"""Observation -> model inputs: prompt + tokenizer, image patches, state/action normalisation (spec §6.7, §9.2)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import PolicyConfig
from .images import check_image, patchify, resize, tokens_per_image
from .normalize import RobotSpec, stats_hash
from .prompts import action_prompt
from .tokenizer import qwen_tokenizer

__all__ = ["Processor", "RobotSpec", "stats_hash", "qwen_tokenizer"]


class Processor:
    """Turns raw observations into the VLM batch. Knows the cameras and image size; holds no weights."""

    def __init__(self, config: PolicyConfig):
        self.config = config
        self.tokenizer = qwen_tokenizer()
        self.image_tokens = tokens_per_image(config.image_size)

    def images(self, images) -> np.ndarray:
        """A dict camera -> (H, W, 3) uint8 (or a list in camera order) -> (n_cams, H, W, 3) at the model's size."""
        cams = self.config.cameras
        if images is None:
            raise ValueError(f"no images given; expected cameras {list(cams)}")
        if isinstance(images, dict):
            unknown = sorted(set(images) - set(cams))
            if unknown:
                raise ValueError(f"unknown camera(s) {unknown}; expected {list(cams)}")
            missing = [c for c in cams if c not in images]
            if missing:
                raise ValueError(f"missing image(s) for camera(s) {missing}")
            images = [images[c] for c in cams]
        elif isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        if len(images) != len(cams):
            raise ValueError(f"got {len(images)} image(s) but the model expects {len(cams)}: {list(cams)}")
        return np.stack([resize(check_image(c, im), self.config.image_size) for c, im in zip(cams, images)])

    def prompt_ids(self, instruction: str) -> list[int]:
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError("instruction must be a non-empty string")
        text = action_prompt(instruction.strip(), self.config.cameras, self.image_tokens)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def collate(self, ids: list[list[int]], images: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """Right-padded token batch + all images' patches, in the layout Qwen3-VL's forward expects."""
        L = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), L), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), L), dtype=torch.long)
        for b, x in enumerate(ids):
            input_ids[b, : len(x)] = torch.tensor(x)
            attention_mask[b, : len(x)] = 1
        mm = (input_ids == self.config.vlm["image_token_id"]).int()
        pixel_values, grid = patchify(np.concatenate(images)) if images else (None, None)
        return dict(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=mm,
                    pixel_values=pixel_values, image_grid_thw=grid)

    def __call__(self, images, instruction: str) -> dict[str, torch.Tensor]:
        return self.collate([self.prompt_ids(instruction)], [self.images(images)])
