"""Camera images -> Qwen3-VL vision patches, in torch (no torchvision), laid out exactly as Qwen's image processor.

`ImageSpec` says how one robot type's images are sized before patching: a fixed (H, W) (xr0's own checkpoints, the
size they were trained at) or Qwen's `smart_resize` within a pixel budget (release folders: every camera keeps its
aspect ratio and roughly its resolution, as the release's slow `Qwen2VLImageProcessor` does). torch and PIL load on
first use, so the spec is importable by the torch-free server modules.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from . import checks

PATCH, TEMPORAL, MERGE = 16, 2, 2
FACTOR = PATCH * MERGE  # image sides are multiples of 32
MEAN, STD = 0.5, 0.5  # Qwen3-VL normalises every channel with mean 0.5, std 0.5
# The pixel budget transformers 4.57.1's slow Qwen2VLImageProcessor uses when a preprocessor_config.json gives no
# min_pixels / max_pixels: its __init__ replaces any `size` with these (docs/official.md).
RELEASE_MIN_PIXELS, RELEASE_MAX_PIXELS = 56 * 56, 28 * 28 * 1280
RESAMPLE = {"nearest": 0, "bilinear": 2, "bicubic": 3}  # PIL's filter numbers (preprocessor_config's `resample`)


def smart_resize(height: int, width: int, min_pixels: int, max_pixels: int, factor: int = FACTOR) -> tuple[int, int]:
    """Qwen2-VL's smart_resize: the (H, W) nearest to the image's that is a multiple of `factor` on both sides,
    keeps its aspect ratio and has between min_pixels and max_pixels pixels (Python's round: ties to even)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"image aspect ratio must be below 200, got {height}x{width}")
    h, w = round(height / factor) * factor, round(width / factor) * factor
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = max(factor, math.floor(height / beta / factor) * factor)
        w = max(factor, math.floor(width / beta / factor) * factor)
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h, w = math.ceil(height * beta / factor) * factor, math.ceil(width * beta / factor) * factor
    return h, w


@dataclass(frozen=True)
class ImageSpec:
    """How one robot type's camera images reach the vision tower.

    size: a fixed (H, W), multiples of 32, every image resized to it (xr0's own checkpoints); None: smart_resize
    within [min_pixels, max_pixels], keeping each camera's aspect ratio (release folders).
    resample: the PIL filter ("bilinear" for xr0's checkpoints, "bicubic" as the release processor).
    """

    size: tuple[int, int] | None = None
    min_pixels: int = RELEASE_MIN_PIXELS
    max_pixels: int = RELEASE_MAX_PIXELS
    resample: str = "bicubic"

    def __post_init__(self):
        if self.size is not None:
            size = tuple(int(v) for v in self.size)
            if len(size) != 2 or size[0] % FACTOR or size[1] % FACTOR or min(size) < FACTOR:
                raise ValueError(f"image size {self.size} must be (H, W), multiples of {FACTOR}")
            object.__setattr__(self, "size", size)
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(f"image pixel budget must satisfy 0 < min_pixels <= max_pixels, got "
                             f"{self.min_pixels}..{self.max_pixels}")
        if self.resample not in RESAMPLE:
            raise ValueError(f"image resample must be one of {sorted(RESAMPLE)}, got {self.resample!r}")

    @classmethod
    def fixed(cls, size: tuple[int, int]) -> "ImageSpec":
        """xr0's own checkpoints: every image resized (bilinear) to the trained size."""
        return cls(size=tuple(size), resample="bilinear")

    def target(self, height: int, width: int) -> tuple[int, int]:
        """The (H, W) an image of this size is resized to."""
        if self.size is not None:
            return self.size
        return smart_resize(height, width, self.min_pixels, self.max_pixels)

    def prepare(self, img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> the resized image the vision tower sees."""
        return resize(img, self.target(*img.shape[:2]), RESAMPLE[self.resample])

    def to_dict(self) -> dict:
        out = asdict(self)
        out["size"] = None if self.size is None else list(self.size)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ImageSpec":
        unknown = set(d) - {"size", "min_pixels", "max_pixels", "resample"}
        if unknown:
            raise ValueError(f"unknown image setting(s) {sorted(unknown)}")
        d = dict(d)
        if d.get("size") is not None:
            d["size"] = tuple(d["size"])
        return cls(**d)


def as_image(img, field: str) -> np.ndarray:
    """A PIL image or an (H, W, 3) uint8 array -> the array (checks.image; FieldError naming `field`)."""
    from PIL import Image

    if isinstance(img, Image.Image):
        img = np.asarray(img.convert("RGB"))
    return checks.image(img, field)


def resize(img: np.ndarray, size: tuple[int, int], resample: int = RESAMPLE["bilinear"]) -> np.ndarray:
    """(H, W, 3) uint8 -> size (H, W) with PIL's `resample` filter; unchanged when it already has that size."""
    from PIL import Image

    if img.shape[:2] == tuple(size):
        return img
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).resize((size[1], size[0]), resample))


def patchify(images) -> tuple["torch.Tensor", "torch.Tensor"]:  # noqa: F821
    """Images ((N, H, W, 3) uint8, or a list of (H_i, W_i, 3) of any sizes that are multiples of 32) ->
    pixel_values (sum of gh * gw, 3 * 2 * 16 * 16) float32 and image_grid_thw (N, 3), image after image.

    Patches are ordered by 2x2 merge window (row-major over windows, then within), channels-first, and each
    still image is repeated over Qwen's temporal patch of 2, as Qwen2VLImageProcessor does.
    """
    import torch

    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    values, grids = [], []
    for img in images:
        h, w, c = img.shape
        gh, gw = h // PATCH, w // PATCH
        x = torch.tensor(img, dtype=torch.float32).div_(255.0).sub_(MEAN).div_(STD)
        x = x.permute(2, 0, 1).reshape(c, gh // MERGE, MERGE, PATCH, gw // MERGE, MERGE, PATCH)
        x = x.permute(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, mh, mw, C, ph, pw)
        x = x.unsqueeze(5).expand(*x.shape[:5], TEMPORAL, PATCH, PATCH)
        values.append(x.reshape(gh * gw, c * TEMPORAL * PATCH * PATCH))
        grids.append([1, gh, gw])
    return torch.cat(values), torch.tensor(grids, dtype=torch.long)


def tokens_per_image(size: tuple[int, int]) -> int:
    """<|image_pad|> tokens of one image of this (H, W): its patch grid merged 2 x 2."""
    return (size[0] // PATCH) * (size[1] // PATCH) // (MERGE * MERGE)
