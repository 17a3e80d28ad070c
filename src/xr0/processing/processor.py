"""Observation -> model inputs: the prompt and its tokens, image patches, VL batches (spec §6.7, §9.2)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import IGNORE, PolicyConfig
from . import checks
from .checks import FieldError
from .images import as_image, patchify, resize, tokens_per_image
from .prompts import VL_END, action_prompt, vl_prompt
from .tokenizer import qwen_tokenizer


class Processor:
    """Turns raw observations into the VLM batch. Knows the cameras and image size; holds no weights."""

    def __init__(self, config: PolicyConfig):
        self.config = config
        self.tokenizer = qwen_tokenizer()
        self.image_tokens = tokens_per_image(config.image_size)

    def images(self, images) -> np.ndarray:
        """A dict camera -> (H, W, 3) uint8 (or a list in camera order) -> (n_cams, H, W, 3) at the model's size."""
        cams = list(self.config.cameras)
        if images is None:
            raise FieldError("images", f"none given; expected cameras {cams}")
        if isinstance(images, dict):
            unknown = sorted(map(str, set(images) - set(cams)))
            if unknown:
                raise FieldError(f"images[{unknown[0][:64]!r}]", f"unknown camera (expected one of {cams})")
            missing = [c for c in cams if c not in images]
            if missing:
                raise FieldError(f"images[{missing[0]!r}]", "missing camera")
            images = [images[c] for c in cams]
        elif isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        if len(images) != len(cams):
            raise FieldError("images", f"got {len(images)} image(s) but the model expects {len(cams)}: {cams}")
        return np.stack([resize(as_image(im, f"images[{c!r}]"), self.config.image_size) for c, im in zip(cams, images)])

    def prompt_ids(self, instruction: str) -> list[int]:
        prompt = action_prompt(checks.text(instruction, "instruction").strip(), self.config.cameras, self.image_tokens)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

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

    # ---- vision-language co-training (stage 1) and greedy answers (xr0.model.choice)
    def vl_prompt_ids(self, question: str, images: list, where: str = "VL sample") -> tuple[list[int], np.ndarray | None]:
        """The VL question prompt's token ids and its images (n, H, W, 3) at the model's size (None: no image)."""
        question = checks.text(question, f"{where} question")
        ims = [resize(as_image(im, f"{where} image {k}"), self.config.image_size) for k, im in enumerate(images)]
        prompt = vl_prompt(question.strip(), len(ims), self.image_tokens)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"], (np.stack(ims) if ims else None)

    def vl_batch(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        """VL samples {"images": [uint8 (H, W, 3)], "question", "answer"} -> VLM batch + `labels` (B, L).

        Text = vl_prompt(question) + answer + "<|im_end|>" + newline. Labels are -100 everywhere except the answer tokens
        and the closing <|im_end|> (so a trained model also learns to stop). Images are resized to the model's size.
        """
        if not samples:
            raise ValueError("vl_batch needs at least one sample")
        tok = self.tokenizer
        end_id = tok.convert_tokens_to_ids(VL_END)
        newline = tok("\n", add_special_tokens=False)["input_ids"]
        ids, labels, images = [], [], []
        for i, s in enumerate(samples):
            a = checks.text(s.get("answer"), f"VL sample {i} answer")
            p, ims = self.vl_prompt_ids(s.get("question"), s.get("images", []), f"VL sample {i}")
            ans = tok(a.strip(), add_special_tokens=False)["input_ids"] + [end_id]
            ids.append(p + ans + newline)
            labels.append([IGNORE] * len(p) + ans + [IGNORE] * len(newline))
            if ims is not None:
                images.append(ims)
        batch = self.collate(ids, images)
        lab = torch.full(batch["input_ids"].shape, IGNORE, dtype=torch.long)
        for b, x in enumerate(labels):
            lab[b, : len(x)] = torch.tensor(x)
        batch["labels"] = lab
        return batch
