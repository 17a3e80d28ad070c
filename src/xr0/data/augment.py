"""Training-time image augmentation of spec §6.7, in numpy/PIL (torchvision is unusable here).

Per sample: every view gets its own random 95% crop resized back to full size; then one set of
colour-jitter decisions is drawn and applied to all views alike, so the cameras stay photometrically
consistent. Each of brightness, contrast, saturation is applied with probability 0.5; hue is off.
As in the released code the brightness factor is 1 + U(−32/255, 32/255) (multiplicative), and
contrast/saturation factors are U(0.5, 1.5), with torchvision's formulas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

_GRAY = np.array([0.2989, 0.587, 0.114], dtype=np.float32)  # torchvision's rgb_to_grayscale weights


def _gray(img: np.ndarray) -> np.ndarray:
    return img @ _GRAY


@dataclass
class ImageAugment:
    """Call with a list or dict of uint8 (H, W, 3) views and a seeded `np.random.Generator`.

    `train=False` (evaluation) returns the views untouched and draws nothing from `rng`.
    """

    crop_ratio: float = 0.95
    brightness: float = 32.0 / 255.0
    contrast: tuple[float, float] = (0.5, 1.5)
    saturation: tuple[float, float] = (0.5, 1.5)
    p: float = 0.5
    train: bool = True

    def __call__(self, views, rng: np.random.Generator):
        if not self.train:
            return views
        names = list(views) if isinstance(views, dict) else None
        images = [views[k] for k in names] if names is not None else list(views)
        images = [self._crop(img, rng) for img in images]
        flags = rng.random(3) < self.p
        factors = (1.0 + rng.uniform(-self.brightness, self.brightness),
                   rng.uniform(*self.contrast), rng.uniform(*self.saturation))
        out = [self._jitter(img, flags, factors) for img in images]
        return dict(zip(names, out, strict=True)) if names is not None else out

    def _crop(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        h, w = img.shape[:2]
        ch, cw = int(h * self.crop_ratio), int(w * self.crop_ratio)
        top = int(rng.integers(0, h - ch + 1))
        left = int(rng.integers(0, w - cw + 1))
        crop = Image.fromarray(np.ascontiguousarray(img[top:top + ch, left:left + cw]))
        return np.asarray(crop.resize((w, h), Image.BILINEAR))

    @staticmethod
    def _jitter(img: np.ndarray, flags: np.ndarray, factors: tuple[float, float, float]) -> np.ndarray:
        if not flags.any():
            return img
        x = img.astype(np.float32) / 255.0
        b, c, s = factors
        if flags[0]:
            x = np.clip(x * b, 0.0, 1.0)
        if flags[1]:
            x = np.clip(c * x + (1.0 - c) * _gray(x).mean(), 0.0, 1.0)
        if flags[2]:
            x = np.clip(s * x + (1.0 - s) * _gray(x)[..., None], 0.0, 1.0)
        return np.round(x * 255.0).astype(np.uint8)
