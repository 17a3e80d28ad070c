"""What the policy server accepts and announces: a request validated into an Observation (or a RequestError naming
the field, which the server sends as a JSON text frame), and the metadata map sent on connect (xr0.runtime.server
describes the protocol)."""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np

from xr0.config import MAX_STEPS
from xr0.processing import checks

logger = logging.getLogger(__name__)

REQUIRED_METADATA = ("cameras", "image_size", "state_dim", "action_dim", "chunk_len", "control_hz", "norm_stats_hash")
REQUEST_FIELDS = ("images", "state", "prompt", "robot_type", "action_prefix", "prefix_weights", "steps", "seed")


class RequestError(Exception):
    """A request the server refuses; becomes ``{"error": {...}}`` on the wire, never a crash."""

    def __init__(self, type_: str, message: str, field: str | None = None):
        super().__init__(message)
        self.type = type_
        self.message = message
        self.field = field

    def to_reply(self) -> dict:
        err = {"type": self.type, "message": self.message}
        if self.field is not None:
            err["field"] = self.field
        return {"error": err}


@dataclasses.dataclass
class Observation:
    """A validated request, ready for ``policy.sample``."""

    images: dict[str, np.ndarray]
    prompt: str
    state: np.ndarray
    prefix: np.ndarray | None
    steps: int | None
    seed: int | None
    prefix_weights: np.ndarray | None = None  # (p,) RTC soft-mask weights for the prefix
    robot_type: str | None = None  # None: the policy's only one (a policy without robot types)


# ----------------------------------------------------------------------------------------- validation


def _bad(field: str, message: str) -> RequestError:
    return RequestError("invalid_request", f"{field}: {message}", field)


def validate_observation(obs: Any, meta: dict, *, max_prompt_chars: int = 2048, strict_image_size: bool = True) -> Observation:
    """Check a decoded request against the policy metadata (xr0.processing.checks, the checks XR0Policy.sample
    runs too): the requested robot type's entry of meta["robots"] when it has one; raise ``RequestError`` naming
    the field."""
    try:
        return _observation(obs, meta, max_prompt_chars, strict_image_size)
    except checks.FieldError as e:
        raise RequestError("invalid_request", str(e), e.field) from e


def request_robot(obs: dict, meta: dict) -> tuple[str | None, dict]:
    """(robot type, its metadata) of a request: its `robot_type` field, else the served default; (None, meta) for
    a policy without robot types."""
    robots = meta.get("robots") or {}
    robot_type = obs.get("robot_type")
    if robot_type is not None:
        if not isinstance(robot_type, str) or robot_type not in robots:
            raise _bad("robot_type", f"unknown robot type {str(robot_type)[:64]!r} (this checkpoint has "
                                     f"{sorted(robots)})")
    elif robots:
        robot_type = meta["robot_type"]
    return robot_type, (meta if robot_type is None else robots[robot_type])


def _observation(obs: Any, meta: dict, max_prompt_chars: int, strict_image_size: bool) -> Observation:
    if not isinstance(obs, dict):
        raise RequestError("invalid_request", f"request must be a msgpack map (dict), got {type(obs).__name__}")
    for key in obs:
        if key not in REQUEST_FIELDS:
            name = key[:64] if isinstance(key, str) and key.strip() else repr(key)[:64]  # '' or ' ' named too
            raise _bad(name, f"unknown field (allowed: {', '.join(REQUEST_FIELDS)})")
    for key in ("images", "state", "prompt"):
        if key not in obs:
            raise _bad(key, "missing required field")
    robot_type, meta = request_robot(obs, meta)

    images = obs["images"]
    if not isinstance(images, dict):
        raise _bad("images", f"expected a map camera name -> HxWx3 uint8 array, got {type(images).__name__}")
    cameras = list(meta["cameras"])
    for name in images:
        if name not in cameras:
            raise _bad(f"images[{str(name)[:64]!r}]", f"unknown camera (expected one of {cameras})")
    size = tuple(int(v) for v in meta["image_size"]) if strict_image_size and meta["image_size"] else None
    out_images = {}
    for name in cameras:
        if name not in images:
            raise _bad(f"images[{name!r}]", "missing camera")
        out_images[name] = checks.image(images[name], f"images[{name!r}]", size)

    prompt = checks.text(obs["prompt"], "prompt", max_prompt_chars)
    state = checks.vector(obs["state"], "state", int(meta["state_dim"]))
    prefix, weights = obs.get("action_prefix"), obs.get("prefix_weights")
    if weights is not None and prefix is None:
        raise _bad("prefix_weights", "given without action_prefix")
    if prefix is not None:
        # A guided (RTC) prefix may cover the whole chunk; the trained clean prefix only max_prefix actions.
        max_p = int(meta["chunk_len"] if weights is not None else meta.get("max_prefix", meta["chunk_len"]))
        hint = "" if weights is not None else (
            f" (the longest clean prefix this checkpoint was trained with is {max_p}"
            + (", i.e. it was not trained with action prefixes" if max_p == 0 else "")
            + ": send prefix_weights for RTC guidance)")
        prefix = checks.prefix(prefix, "action_prefix", int(meta["action_dim"]), max_p, hint)
        weights = None if weights is None or prefix is None else checks.prefix_weights(weights, "prefix_weights",
                                                                                      prefix.shape[0])
    steps = checks.integer(obs["steps"], "steps", 1, MAX_STEPS) if obs.get("steps") is not None else None
    seed = checks.integer(obs["seed"], "seed", 0, 2**63 - 1) if obs.get("seed") is not None else None
    return Observation(out_images, prompt, state, prefix, steps, seed, weights, robot_type)


def _clean_metadata(meta: Any) -> dict:
    """policy.metadata() -> plain msgpack-able dict; fail at startup, not on the first client."""
    if not isinstance(meta, dict):
        raise TypeError(f"policy.metadata() must return a dict, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_METADATA if k not in meta]
    if missing:
        raise ValueError(f"policy.metadata() lacks required key(s) {missing}")

    def plain(v: Any) -> Any:
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        return v

    out = plain(dict(meta))
    if out["image_size"] is not None and len(out["image_size"]) != 2:
        raise ValueError(f"metadata image_size must be [H, W] or null, got {out['image_size']}")
    return out


def policy_metadata(policy: Any, robot_type: str | None) -> dict:
    """The served metadata: the default robot type's fields at the top level, and under `robots` every robot
    type's (a policy without `robots`, e.g. a test double, has only the top level)."""
    names = list(getattr(policy, "robots", None) or [])
    if not names:
        return _clean_metadata(policy.metadata())
    if robot_type is None:
        robot_type = names[0]
        if len(names) > 1:
            logger.info("serving robot types %s; requests without robot_type use %r (--robot-type)", names, robot_type)
    if robot_type not in names:
        raise ValueError(f"--robot-type {robot_type!r}: this checkpoint has {names}")
    robots = {name: _clean_metadata(policy.metadata(name)) for name in names}
    return {**robots[robot_type], "robot_type": robot_type, "robots": robots}
