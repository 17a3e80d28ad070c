"""Observation -> model inputs: the prompt and its tokens, image patches, VL batches (spec §6.7, §9.2)."""

from __future__ import annotations

import numpy as np
import torch

from ..config import IGNORE, PolicyConfig
from . import checks
from .checks import FieldError
from .images import ImageSpec, as_image, patchify, tokens_per_image
from .normalize import RobotSpec
from .prompts import VL_END, action_prompt, vl_prompt
from .tokenizer import qwen_tokenizer


class Processor:
    """Turns raw observations into the VLM batch, for one robot type at a time (its cameras and image settings:
    anything with `cameras` and `image`, e.g. a RobotSpec; without one: the config's cameras at its fixed image
    size). Holds the tokenizer, no weights."""

    def __init__(self, config: PolicyConfig, tokenizer=None):
        self.config = config
        self.tokenizer = tokenizer or qwen_tokenizer()
        self.default_image = ImageSpec.fixed(config.image_size)

    @property
    def image_tokens(self) -> int:
        """<|image_pad|> tokens per view at the config's fixed image size."""
        return tokens_per_image(self.config.image_size)

    def _setup(self, robot: RobotSpec | None) -> tuple[list[str], ImageSpec]:
        if robot is None:
            return list(self.config.cameras), self.default_image
        return list(robot.cameras or self.config.cameras), robot.image or self.default_image

    def images(self, images, robot: RobotSpec | None = None) -> list[np.ndarray]:
        """A dict camera -> (H, W, 3) uint8 (or a list in camera order) -> one resized image per camera, in the
        robot type's camera order (ImageSpec.prepare: its fixed size, or smart_resize keeping each aspect ratio)."""
        cams, spec = self._setup(robot)
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
        out = []
        for c, im in zip(cams, images):
            try:
                out.append(spec.prepare(as_image(im, f"images[{c!r}]")))
            except ValueError as e:
                if isinstance(e, FieldError):
                    raise
                raise FieldError(f"images[{c!r}]", str(e)) from e
        return out

    def prompt_ids(self, instruction: str, robot: RobotSpec | None = None,
                   image_tokens: list[int] | None = None) -> list[int]:
        """The action prompt's token ids; image_tokens: <|image_pad|> tokens per view (default: the fixed size's)."""
        cams, spec = self._setup(robot)
        if image_tokens is None:
            if spec.size is None:
                raise ValueError("this robot type's images have no fixed size: pass image_tokens (per view)")
            image_tokens = [tokens_per_image(spec.size)] * len(cams)
        prompt = action_prompt(checks.text(instruction, "instruction").strip(), cams, image_tokens)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    def encode(self, images, instruction: str, robot: RobotSpec | None = None) -> tuple[list[int], list[np.ndarray]]:
        """(token ids, resized images) of one observation: the prompt holds as many image tokens as each image's
        patch grid gives."""
        ims = self.images(images, robot)
        return self.prompt_ids(instruction, robot, [tokens_per_image(im.shape[:2]) for im in ims]), ims

    def collate(self, ids: list[list[int]], images: list) -> dict[str, torch.Tensor]:
        """Right-padded token batch + all images' patches (per sample: a list of images or an (n, H, W, 3) array),
        in the layout Qwen3-VL's forward expects."""
        L = max(len(x) for x in ids)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(ids), L), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(ids), L), dtype=torch.long)
        for b, x in enumerate(ids):
            input_ids[b, : len(x)] = torch.tensor(x)
            attention_mask[b, : len(x)] = 1
        mm = (input_ids == self.config.vlm["image_token_id"]).int()
        flat = [im for sample in images for im in sample]
        pixel_values, grid = patchify(flat) if flat else (None, None)
        return dict(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=mm,
                    pixel_values=pixel_values, image_grid_thw=grid)

    def __call__(self, images, instruction: str, robot: RobotSpec | None = None) -> dict[str, torch.Tensor]:
        ids, ims = self.encode(images, instruction, robot)
        return self.collate([ids], [ims])

    def batch(self, observations: list[dict], robot: RobotSpec | None = None) -> dict[str, torch.Tensor]:
        """The VLM batch of several observations ({"images", "instruction", ...}), right-padded."""
        encoded = [self.encode(o["images"], o["instruction"], robot) for o in observations]
        return self.collate([ids for ids, _ in encoded], [ims for _, ims in encoded])

    # ---- vision-language co-training (stage 1) and greedy answers (xr0.model.choice)
    def vl_prompt_ids(self, question: str, images: list, where: str = "VL sample") -> tuple[list[int], np.ndarray | None]:
        """The VL question prompt's token ids and its images (n, H, W, 3) at the model's size (None: no image)."""
        question = checks.text(question, f"{where} question")
        ims = [self.default_image.prepare(as_image(im, f"{where} image {k}")) for k, im in enumerate(images)]
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
