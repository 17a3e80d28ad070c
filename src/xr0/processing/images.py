"""Camera images -> Qwen3-VL vision patches, in torch (no torchvision), laid out exactly as Qwen's image processor."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from . import checks

PATCH, TEMPORAL, MERGE = 16, 2, 2
MEAN, STD = 0.5, 0.5  # Qwen3-VL normalises every channel with mean 0.5, std 0.5


def as_image(img, field: str) -> np.ndarray:
    """A PIL image or an (H, W, 3) uint8 array -> the array (checks.image; FieldError naming `field`)."""
    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    return checks.image(img, field)


def resize(img: np.ndarray, size: tuple[int, int], resample=Image.BILINEAR) -> np.ndarray:
    """(H, W, 3) uint8 -> size (H, W) with PIL's `resample` filter; unchanged when it already has that size."""
    if img.shape[:2] == tuple(size):
        return img
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size[1], size[0]), resample))


def patchify(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, H, W, 3) uint8 -> pixel_values (N * gh * gw, 3 * 2 * 16 * 16) float32 and image_grid_thw (N, 3).

    Patches are ordered by 2x2 merge window (row-major over windows, then within), channels-first, and each
    still image is repeated over Qwen's temporal patch of 2, as Qwen2VLImageProcessor does.
    """
    n, h, w, c = images.shape
    gh, gw = h // PATCH, w // PATCH
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0).sub_(MEAN).div_(STD)
    x = x.permute(0, 3, 1, 2).reshape(n, c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
    x = x.permute(0, 2, 5, 3, 6, 1, 4, 7)  # (n, gh/m, gw/m, mh, mw, C, ph, pw)
    x = x.unsqueeze(6).expand(*x.shape[:6], TEMPORAL, PATCH, PATCH)
    pixel_values = x.reshape(n * gh * gw, c * TEMPORAL * PATCH * PATCH)
    grid = torch.tensor([[1, gh, gw]] * n, dtype=torch.long)
    return pixel_values, grid


def tokens_per_image(size: tuple[int, int]) -> int:
    return (size[0] // PATCH) * (size[1] // PATCH) // (MERGE * MERGE)
