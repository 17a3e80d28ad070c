"""Observation maps: openpi clients' observation dicts -> xr0 requests, so their client code runs unchanged.

`xr0 serve --obs-map openpi-libero|openpi-droid|openpi-aloha|FILE.json`. A map names, for the checkpoint's cameras
in order, the client's image keys; the keys whose values are concatenated into the state; the prompt key. A key is
a flat string ("observation/image", as openpi's LIBERO and DROID examples send) or a list, a path into nested maps
(["images", "cam_high"], as its ALOHA example sends). `channels_first` images (openpi's ALOHA: (3, H, W)) are
transposed. Every other key of the client's observation is refused by name (nothing is dropped silently), except
the map's `ignore` keys and xr0's own optional request fields (robot_type, seed, steps, action_prefix,
prefix_weights), which pass through. Errors name the client's own key.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..processing import checks

PASS_THROUGH = ("robot_type", "seed", "steps", "action_prefix", "prefix_weights")

# openpi's example clients (examples/libero, examples/droid, examples/aloha_real / aloha_sim of openpi).
BUILTIN = {
    "openpi-libero": {"images": ["observation/image", "observation/wrist_image"], "state": ["observation/state"],
                      "prompt": "prompt"},
    "openpi-droid": {"images": ["observation/exterior_image_1_left", "observation/wrist_image_left"],
                     "state": ["observation/joint_position", "observation/gripper_position"], "prompt": "prompt"},
    "openpi-aloha": {"images": [["images", "cam_high"], ["images", "cam_low"], ["images", "cam_left_wrist"],
                                ["images", "cam_right_wrist"]],
                     "state": ["state"], "prompt": "prompt", "channels_first": True},
}


def _name(key) -> str:
    return key if isinstance(key, str) else "/".join(map(str, key))


@dataclass(frozen=True)
class ObsMap:
    images: tuple  # one client key per checkpoint camera, in the checkpoint's camera order
    state: tuple  # client keys concatenated, in order, into the state vector
    prompt: str
    channels_first: bool = False
    ignore: tuple = ()
    name: str = "custom"

    @classmethod
    def load(cls, spec: str) -> "ObsMap":
        """A built-in name (BUILTIN) or a JSON file with the same fields."""
        if spec in BUILTIN:
            d, name = BUILTIN[spec], spec
        else:
            file = pathlib.Path(spec)
            if not file.is_file():
                raise ValueError(f"--obs-map {spec!r}: neither a built-in map ({sorted(BUILTIN)}) nor a JSON file")
            try:
                d = json.loads(file.read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"--obs-map {file}: not valid JSON: {e}") from e
            name = file.name
        if not isinstance(d, dict):
            raise ValueError(f"--obs-map {spec}: expected a JSON object")
        unknown = set(d) - {"images", "state", "prompt", "channels_first", "ignore"}
        if unknown:
            raise ValueError(f"--obs-map {spec}: unknown field(s) {sorted(unknown)}")
        for field in ("images", "state"):
            keys = d.get(field)
            if not isinstance(keys, list) or not keys or not all(
                    isinstance(k, str) or (isinstance(k, list) and k and all(isinstance(p, str) for p in k))
                    for k in keys):
                raise ValueError(f"--obs-map {spec}: {field!r} must be a non-empty list of keys (strings, or lists "
                                 f"of strings for nested maps)")
        if not isinstance(d.get("prompt"), str):
            raise ValueError(f"--obs-map {spec}: 'prompt' must name the prompt key")
        freeze = lambda keys: tuple(k if isinstance(k, str) else tuple(k) for k in keys)  # noqa: E731
        return cls(freeze(d["images"]), freeze(d["state"]), d["prompt"], bool(d.get("channels_first", False)),
                   freeze(d.get("ignore", [])), name)

    def check_cameras(self, cameras: list[str]) -> None:
        if len(self.images) != len(cameras):
            raise ValueError(f"--obs-map {self.name}: maps {len(self.images)} image keys "
                             f"({[_name(k) for k in self.images]}) but the checkpoint has {len(cameras)} cameras "
                             f"{cameras}; write a map file that names one key per camera")

    def apply(self, obs: Any, cameras: list[str]) -> dict:
        """The client's observation -> an xr0 request ({images, state, prompt, ...}); FieldError names its keys."""
        if not isinstance(obs, dict):
            raise checks.FieldError("request", f"expected a map (dict), got {type(obs).__name__}")
        used = {k[0] if isinstance(k, tuple) else k for k in (*self.images, *self.state, self.prompt)}
        for key in obs:
            if key not in used and key not in self.ignore and key not in PASS_THROUGH:
                name = key[:64] if isinstance(key, str) else repr(key)[:64]
                raise checks.FieldError(name, f"unknown field for --obs-map {self.name} (it reads "
                                              f"{sorted(_name(k) for k in (*self.images, *self.state, self.prompt))})")
        out = {k: obs[k] for k in PASS_THROUGH if k in obs}
        out["images"] = {cam: self._image(obs, key) for cam, key in zip(cameras, self.images)}
        parts = [checks.numeric(self._get(obs, key), _name(key)).reshape(-1) for key in self.state]
        out["state"] = np.concatenate(parts) if len(parts) > 1 else parts[0]
        out["prompt"] = self._get(obs, self.prompt)
        return out

    def client_field(self, field: str | None, cameras: list[str]) -> str | None:
        """xr0's name of a request field ("state", "images['Base View']", "prompt") -> the client's key(s)."""
        if field == "state":
            return "+".join(_name(k) for k in self.state)
        if field == "prompt":
            return self.prompt
        for cam, key in zip(cameras, self.images):
            if field == f"images[{cam!r}]":
                return _name(key)
        return field

    def _get(self, obs: dict, key) -> Any:
        node = obs
        for i, part in enumerate((key,) if isinstance(key, str) else key):
            if not isinstance(node, dict) or part not in node:
                raise checks.FieldError(_name(key), "missing required field")
            node = node[part]
        return node

    def _image(self, obs: dict, key) -> np.ndarray:
        img = self._get(obs, key)
        if self.channels_first and isinstance(img, np.ndarray) and img.ndim == 3 and img.shape[0] == 3:
            img = np.ascontiguousarray(img.transpose(1, 2, 0))
        return checks.image(img, _name(key))
