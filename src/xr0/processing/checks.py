"""The checks of user input, in one place: XR0Policy.sample, the Processor and the policy server all call these.

Numpy only (the server imports it without torch). A bad value raises FieldError, a ValueError whose `field` names
the input ("state", "action_prefix", "images['Base View']") and whose message says what is wrong.
"""

from __future__ import annotations

from typing import Any

import numpy as np

MIN_IMAGE_SIDE = 8


class FieldError(ValueError):
    """A bad input value: str() is "<field>: <what is wrong>"."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field, self.message = field, message


def numeric(value: Any, field: str) -> np.ndarray:
    """Numbers (an array, a list, a tensor) -> finite float32 ndarray; strings, bools, maps and ragged lists refused."""
    if isinstance(value, (str, bytes, dict)) or value is None:
        raise FieldError(field, f"expected numbers, got {type(value).__name__}")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError) as e:
        raise FieldError(field, f"not a rectangular array of numbers ({e})") from e
    if arr.dtype.kind not in "iuf":
        raise FieldError(field, f"expected numbers, got dtype {arr.dtype.str}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise FieldError(field, "contains NaN or inf (or values beyond float32 range)")
    return out


def vector(value: Any, field: str, dim: int) -> np.ndarray:
    """A finite float32 vector of length `dim`."""
    arr = numeric(value, field)
    if arr.shape != (dim,):
        raise FieldError(field, f"expected shape ({dim},), got {tuple(arr.shape)}")
    return arr


def prefix(value: Any, field: str, action_dim: int, max_len: int, hint: str = "") -> np.ndarray | None:
    """Committed actions as float32 (p, action_dim) with p <= max_len; None for p = 0. `hint` is added to the
    message of a prefix that is too long (e.g. where to turn instead)."""
    arr = numeric(value, field)
    if arr.ndim != 2 or arr.shape[1] != action_dim:
        raise FieldError(field, f"expected shape (p, {action_dim}), got {tuple(arr.shape)}")
    if arr.shape[0] > max_len:
        raise FieldError(field, f"too long: p={arr.shape[0]} > {max_len}{hint}")
    return arr if arr.shape[0] else None


def prefix_weights(value: Any, field: str, p: int) -> np.ndarray:
    """RTC soft-mask weights: float32 (p,) in [0, 1], one per prefix row."""
    w = numeric(value, field)
    if w.shape != (p,):
        raise FieldError(field, f"expected shape ({p},) like the prefix, got {tuple(w.shape)}")
    if w.size and (w.min() < 0 or w.max() > 1):
        raise FieldError(field, f"values must lie in [0, 1], got range [{w.min():g}, {w.max():g}]")
    return w


def image(value: Any, field: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """An (H, W, 3) uint8 array (of exactly `size` = (H, W) when given)."""
    if not isinstance(value, np.ndarray):
        raise FieldError(field, f"expected a numpy uint8 array (H, W, 3), got {type(value).__name__}")
    if value.dtype != np.uint8:
        raise FieldError(field, f"expected dtype uint8, got {value.dtype.str}")
    if value.ndim != 3 or value.shape[2] != 3:
        raise FieldError(field, f"expected shape (H, W, 3), got {tuple(value.shape)}")
    if size is not None and value.shape[:2] != tuple(size):
        raise FieldError(field, f"expected shape ({size[0]}, {size[1]}, 3) (metadata image_size), got "
                                f"{tuple(value.shape)}")
    if min(value.shape[:2]) < MIN_IMAGE_SIDE:
        raise FieldError(field, f"too small: {tuple(value.shape)} (at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE})")
    return value


def integer(value: Any, field: str, lo: int, hi: int) -> int:
    """An int in [lo, hi] (numpy integers accepted, bools refused)."""
    if isinstance(value, np.integer):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise FieldError(field, f"expected an int in [{lo}, {hi}], got {value!r:.40}")
    return value


def text(value: Any, field: str, max_chars: int | None = None) -> str:
    """A non-empty string (of at most max_chars characters)."""
    if not isinstance(value, str):
        raise FieldError(field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise FieldError(field, "empty")
    if max_chars is not None and len(value) > max_chars:
        raise FieldError(field, f"too long ({len(value)} chars > {max_chars})")
    return value
