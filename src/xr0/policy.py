"""XR0Policy = Processor + XR0Model: what users call. Observations in physical units -> action chunks, checkpoint
folders in and out, and the training batches of dataset samples.

The model (xr0.model.vla) sees only tensors in normalised units; here images are checked and resized, instructions
tokenised, state and actions (de)normalised per robot type (RobotSpec), and checkpoints read and written.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import official
from .checkpoints import (CONFIG, WEIGHTS, atomic_write, file_sha256, policy_config_file, resolve_checkpoint,
                          verify_manifest)
from .config import MAX_STEPS, PolicyConfig, get_preset
from .model.vla import XR0Model, check_noise
from .model.weights import EMBED, load_strict, seeded_embedding, state_to_save
from .processing import Processor, RobotSpec, checks, stats_hash
from .processing.images import ImageSpec
from .processing.tokenizer import folder_tokenizer

NORMS = "normalization.safetensors"
TOKENIZER = "tokenizer.json"  # written only for a policy that carries its folder's own tokenizer
FORMAT = "xr0"


class XR0Policy:
    """The VLA as users run it: `model` (XR0Model, tensors), `robots` (one RobotSpec per robot type: statistics,
    chunk length, cameras, image settings), `processor`, and a checkpoint folder's own `tokenizer` if it has one."""

    def __init__(self, model: XR0Model, robots: dict[str, RobotSpec] | None = None, tokenizer=None):
        c = model.config
        self.model = model
        self.robots = robots or {"default": RobotSpec.identity(c.chunk_len, c.action_dim, c.state_dim,
                                                               c.action_dim, c.state_dim)}
        self.tokenizer = tokenizer  # a checkpoint folder's own tokenizer; None: the built-in Qwen3-VL one
        self._processor: Processor | None = None

    @property
    def robots(self) -> dict[str, RobotSpec]:
        """Robot type -> RobotSpec (statistics, chunk length, dims, cameras, image settings)."""
        return self._robots

    @robots.setter
    def robots(self, robots: dict[str, RobotSpec]) -> None:
        """Robot types without cameras / image settings of their own (checkpoints saved before xr0 stored them)
        get the config's: its cameras at its fixed image size."""
        c = self.config
        self._robots = {name: spec.with_setup(c.cameras, ImageSpec.fixed(c.image_size))
                        for name, spec in robots.items()}

    @property
    def config(self) -> PolicyConfig:
        return self.model.config

    @property
    def processor(self) -> Processor:
        if self._processor is None:
            self._processor = Processor(self.config, self.tokenizer)
        return self._processor

    # ------------------------------------------------------------------ construction / checkpoints
    @classmethod
    def from_preset(cls, name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                    seed: int = 0, robots: dict[str, RobotSpec] | None = None, **overrides) -> "XR0Policy":
        """Random weights for a named preset. device="meta" builds the layout without allocating memory."""
        cfg = get_preset(name)
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise ValueError(f"unknown config field {k!r}")
            setattr(cfg, k, v)
        torch.manual_seed(seed)
        with torch.device(device):
            model = XR0Model(cfg)
        if dtype is not None:
            model.to(dtype)
        return cls(model.eval(), robots)

    @classmethod
    def from_state(cls, config: PolicyConfig, robots: dict[str, RobotSpec], state: dict[str, torch.Tensor],
                   device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                   tokenizer=None) -> "XR0Policy":
        """The model of `config` built on the meta device and loaded strictly from `state`, in `dtype`, eval mode."""
        with torch.device("meta"):
            model = XR0Model(config)
        load_strict(model, state, device=device)
        if dtype is not None:
            model.to(dtype)
        return cls(model.eval(), robots, tokenizer)

    @classmethod
    def from_pretrained(cls, path: str | pathlib.Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, **settings) -> "XR0Policy":
        """Load a folder written by save_pretrained, or an official release folder (safetensors only; strict:
        every tensor must match); `path` may also be "embedded", a training run or a Hugging Face repo id that is in
        the local cache (checkpoints.resolve_checkpoint). `settings` override the checkpoint's RUNTIME_FIELDS
        (config.py), e.g. local_window=4, rope_offset=10 to run a release folder as the April post-training code
        does; for an official folder also stats_file=."""
        path = resolve_checkpoint(path)
        tokenizer = folder_tokenizer(path)
        if official.is_official(path / CONFIG):
            return cls.from_state(*official.read_release(path, **settings), device, dtype, tokenizer)
        cfg_file = policy_config_file(path)
        try:
            meta = json.loads(cfg_file.read_text())
            config = PolicyConfig.from_dict(meta["policy"])
            config.validate()
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{cfg_file} is not a valid xr0 config: {e}") from e
        config.override(**settings)
        verify_manifest(path, meta.get("sha256", {}))  # checkpoints saved before the manifest have none
        robots = checkpoint_robots(path / NORMS, meta.get("robots", {}))
        state = _load_safetensors(path / WEIGHTS)
        if EMBED not in state and "embedding_sha256" in meta:
            stored_dtype = next(iter(state.values())).dtype  # e.g. a bf16 export stays bf16 throughout
            state[EMBED] = seeded_embedding(config, expect_sha256=meta["embedding_sha256"]).to(stored_dtype)
        return cls.from_state(config, robots, state, device, dtype, tokenizer)

    def save_pretrained(self, path: str | pathlib.Path, dtype: torch.dtype | None = None,
                        store_embedding: bool = True, config_name: str = CONFIG) -> None:
        """Write model.safetensors (tied lm_head omitted), normalization.safetensors, then config.json with the
        SHA-256 of both (`sha256`; from_pretrained verifies it).

        store_embedding=False omits the token embedding when it still equals its seeded initial value.
        config_name: checkpoints.LEROBOT_XR0_CONFIG where config.json is LeRobot's (the LeRobot plugin).
        """
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state, extra = state_to_save(self.model, dtype, store_embedding)
        atomic_write(path / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
        norms = {f"{name}.{key}": torch.from_numpy(arr) for name, spec in self.robots.items()
                 for key, arr in spec.arrays().items()}
        atomic_write(path / NORMS, lambda tmp: save_file(norms, tmp, metadata={"format": FORMAT}))
        files = [WEIGHTS, NORMS]
        if self.tokenizer is not None:  # a folder's own tokenizer travels with the checkpoint
            atomic_write(path / TOKENIZER, lambda tmp: self.tokenizer.backend_tokenizer.save(tmp))
            files.append(TOKENIZER)
        meta = {"format": FORMAT, "policy": self.config.to_dict(),
                "robots": {n: s.setup() for n, s in self.robots.items()},
                "norm_stats_hash": stats_hash(self.robots), **extra,
                "sha256": {name: file_sha256(path / name) for name in files}}
        atomic_write(path / config_name, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(meta, indent=2)))

    def to(self, *args, **kwargs) -> "XR0Policy":
        """Move or cast the model (torch.nn.Module.to); returns the policy."""
        self.model.to(*args, **kwargs)
        return self

    def set_runtime(self, **settings) -> "XR0Policy":
        """Override RUNTIME_FIELDS (config.py) of a built policy (XR0Model.set_runtime); returns the policy."""
        self.model.set_runtime(**settings)
        return self

    def robot(self, robot_type: str | None = None) -> RobotSpec:
        if robot_type is None:
            if len(self.robots) != 1:
                raise ValueError(f"robot_type is required: this checkpoint has {sorted(self.robots)}")
            return next(iter(self.robots.values()))
        if robot_type not in self.robots:
            raise ValueError(f"unknown robot_type {robot_type!r}; this checkpoint has {sorted(self.robots)}")
        return self.robots[robot_type]

    # ------------------------------------------------------------------ inference
    def sample(self, images, instruction: str, state, prefix=None, steps: int | None = None, seed: int = 0,
               robot_type: str | None = None, prefix_weights=None, noise: torch.Tensor | None = None) -> np.ndarray:
        """One action chunk (T, action_dim) in physical units, from camera images, an instruction and the state.

        images: dict camera -> (H, W, 3) uint8 (or a list in the robot type's camera order), any size: each is
        resized as the robot type's ImageSpec says. state: (state_dim,). robot_type: required when the checkpoint
        has several; T is that robot type's chunk length.
        prefix: optional (p, action_dim) committed actions (async execution), p <= config.max_prefix (the longest
        clean prefix the checkpoint was trained with; 0 for release folders); they come back unchanged in rows :p.
        prefix_weights: optional (p,) in [0, 1]. Then the prefix is not the trained clean prefix but a soft target
        for inference-time RTC guidance (Black et al. 2025; model/rtc.py): row i is pulled toward prefix[i] with
        weight prefix_weights[i], rows :p come back as generated (not overwritten), and p may exceed max_prefix.
        noise: optional x_0 (T, D) or (1, T, D); by default flow.initial_noise(seed), the official runtime's draw.
        Decoded by the robot type's rule (RobotSpec.decode: the release processor's decode_action for release
        folders, the April server's masked decode for xr0's and April checkpoints).
        """
        robot = self.robot(robot_type)
        T, D = robot.chunk_len, self.config.action_dim
        state = checks.vector(state, "state", robot.state_dim)
        if prefix_weights is not None and prefix is None:
            raise checks.FieldError("prefix_weights", "given without a prefix (the target the weights apply to)")
        if prefix is not None:  # a guided (RTC) target may cover the chunk; a clean prefix only what was trained
            trained = self.config.max_prefix
            hint = "" if prefix_weights is not None else (
                f" (the longest clean prefix this checkpoint was trained with is {trained}: pass prefix_weights "
                f"for inference-time RTC guidance, runtime.RTCExecutor)")
            prefix = checks.prefix(prefix, "prefix", robot.action_dim, T if prefix_weights is not None else trained,
                                   hint)
        weights = None
        if prefix_weights is not None and prefix is not None:
            weights = checks.prefix_weights(prefix_weights, "prefix_weights", prefix.shape[0])
        if steps is not None:
            steps = checks.integer(steps, "steps", 1, MAX_STEPS)
        batch = self.processor(images, instruction, robot)
        state_t = torch.from_numpy(robot.normalize_state(state))[None]
        mask = torch.from_numpy(robot.action_mask).expand(1, T, D)
        x0 = check_noise(noise, (1, T, D), self.model.device, self.model.dtype, int(seed))
        prefix_t = None if prefix is None else torch.from_numpy(robot.normalize_actions(prefix))[None]
        guide = None if weights is None else _guide_weights(weights, mask)
        self.model.mark_stage("preprocess")
        x = self.model.sample_normalized(batch, state_t, mask, x0, prefix_t, steps, guide)
        out = robot.denormalize_actions(x[0].float().cpu().numpy())
        if prefix is not None and weights is None:
            out[: prefix.shape[0]] = prefix
        self.model.mark_stage("postprocess")
        return out

    def sample_batch(self, observations: list[dict], seeds: list[int] | None = None, steps: int | None = None,
                     robot_type: str | None = None, noise: torch.Tensor | None = None,
                     vlm: dict[str, torch.Tensor] | None = None) -> np.ndarray:
        """Chunks (B, T, action_dim) of several observations in one batched pass (no prefix): each {"images",
        "instruction", "state"} as sample() takes them, seeded by `seeds` (default 0 each); `noise` an optional
        (B, T, D) x_0; `vlm`: their VLM inputs when already made (`processor.collate` of `processor.encode`, e.g. by
        the LeRobot plugin's processor step), then the observations need no images. The same chunks as sample() one
        at a time, up to float rounding."""
        if not observations:
            raise ValueError("sample_batch needs at least one observation")
        robot = self.robot(robot_type)
        B, T, D = len(observations), robot.chunk_len, self.config.action_dim
        seeds = [0] * B if seeds is None else [int(v) for v in seeds]
        if len(seeds) != B:
            raise ValueError(f"{len(seeds)} seeds for {B} observations")
        if steps is not None:
            steps = checks.integer(steps, "steps", 1, MAX_STEPS)
        batch = vlm if vlm is not None else self.processor.batch(observations, robot)
        states = np.stack([robot.normalize_state(checks.vector(o["state"], "state", robot.state_dim))
                           for o in observations])
        dev, dt = self.model.device, self.model.dtype
        x0 = torch.cat([check_noise(None if noise is None else noise[i], (1, T, D), dev, dt, seeds[i])
                        for i in range(B)])
        mask = torch.from_numpy(robot.action_mask).expand(B, T, D)
        x = self.model.sample_normalized(batch, torch.from_numpy(states), mask, x0, None, steps)
        return robot.denormalize_actions(x.float().cpu().numpy())

    def metadata(self, robot_type: str | None = None) -> dict:
        """What a client needs to talk to this policy (sent by the server on connect)."""
        robot = self.robot(robot_type)
        c = self.config
        size = robot.image.size
        return {"cameras": list(robot.cameras), "image_size": None if size is None else list(size),
                "state_dim": robot.state_dim, "action_dim": robot.action_dim, "chunk_len": robot.chunk_len,
                "delta_dims": list(robot.delta_dims), "control_hz": c.control_hz, "max_prefix": c.max_prefix, "robot_types": sorted(self.robots), "preset": c.name,
                "norm_stats_hash": stats_hash(self.robots)}

    # ------------------------------------------------------------------ training
    def make_batch(self, samples: list[dict], robot_type: str | None = None,
                   vlm: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Dataset samples ({images, instruction, state, actions (T, action_dim), action_valid (T,)}) -> tensors;
        `vlm`: their VLM inputs when already made (then the samples need no images)."""
        return batch_from_samples(samples, self.config, self.processor, self.robot(robot_type), vlm)


# ---------------------------------------------------------------------- helpers
def chunk_lengths(path: str | pathlib.Path) -> dict[str, int]:
    """Robot type -> chunk length of a checkpoint (xr0's, a release folder, a run, "embedded"), read from its
    config and statistics without loading the weights (e.g. to size a dataset's action windows first)."""
    path = resolve_checkpoint(path)
    if official.is_official(path / CONFIG):
        return {n: r.chunk_len for n, r in official.release_robots(path).items()}
    meta = json.loads(policy_config_file(path).read_text())
    robots = checkpoint_robots(path / NORMS, meta.get("robots", {}))
    return {name: spec.chunk_len for name, spec in robots.items()}


def batch_from_samples(samples: list[dict], config: PolicyConfig, proc: Processor, robot: RobotSpec,
                       vlm: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """XR0Policy.make_batch without the model (what the trainer's data workers run: xr0.train.loader)."""
    T, D = robot.chunk_len, config.action_dim
    vlm = dict(vlm) if vlm is not None else proc.batch(samples, robot)
    state = np.stack([robot.normalize_state(checks.vector(s["state"], "state", robot.state_dim)) for s in samples])
    actions = [checks.numeric(s["actions"], "actions") for s in samples]
    bad = next((a.shape for a in actions if a.shape != (T, robot.action_dim)), None)
    if bad is not None:
        raise checks.FieldError("actions", f"expected shape (T={T}, {robot.action_dim}), got {bad}")
    actions = np.stack(actions)
    if all("env_state" in s for s in samples):  # training-only supervision (xr0.train.env_state)
        vlm["env_state"] = torch.from_numpy(np.stack([np.asarray(s["env_state"], np.float32) for s in samples]))
    valid = np.stack([np.asarray(s.get("action_valid", np.ones(T, bool)), bool) for s in samples])
    mask = robot.action_mask[None, None, :] * valid[:, :, None]
    vlm.update(state=torch.from_numpy(state), actions=torch.from_numpy(robot.normalize_actions(actions)),
               action_mask=torch.from_numpy(mask.astype(np.float32)).expand(len(samples), T, D).contiguous())
    return vlm


def _guide_weights(weights: np.ndarray, action_mask: torch.Tensor) -> torch.Tensor:
    """RTC soft-mask weights (1, T, D) float32 from the prefix's row weights (p,) and the (1, T, D) action mask:
    0 past row p and on unused action dims."""
    T, p = action_mask.shape[1], weights.shape[0]
    rows = torch.zeros(T)
    rows[:p] = torch.from_numpy(weights)
    return rows[None, :, None] * action_mask.float()


def _load_safetensors(file: pathlib.Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for truncated / corrupt headers
        raise ValueError(f"{file} is not a readable safetensors file: {e}") from e


def checkpoint_robots(file: pathlib.Path, setups: dict) -> dict[str, RobotSpec]:
    """The robot types of an xr0 checkpoint: arrays from `file`, the rest from config.json's `robots` entries
    (RobotSpec.setup; older checkpoints lack cameras / image, which the policy then takes from its config)."""
    arrays = _load_safetensors(file)
    robots = {}
    for name, d in setups.items():
        try:
            image = None if d.get("image") is None else ImageSpec.from_dict(d["image"])
            robots[name] = RobotSpec(**{k: arrays[f"{name}.{k}"].numpy() for k in
                                        ("action_mean", "action_std", "action_mask", "state_mean", "state_std")},
                                     action_dim=d["action_dim"], state_dim=d["state_dim"],
                                     cameras=tuple(d.get("cameras") or ()), image=image,
                                     decode=d.get("decode", "masked"), delta_dims=tuple(d.get("delta_dims", ())))
        except KeyError as e:
            raise ValueError(f"{file}: robot type {name!r} lacks {e}") from e
        except (TypeError, ValueError) as e:
            raise ValueError(f"{file.parent / CONFIG}: robot type {name!r}: {e}") from e
        if "chunk_len" in d and d["chunk_len"] != robots[name].chunk_len:
            raise ValueError(f"{file}: robot type {name!r} has {robots[name].chunk_len} statistics rows but "
                             f"config.json says chunk_len {d['chunk_len']}")
    if not robots:
        raise ValueError(f"{file}: no robot types listed in the config")
    return robots


