"""XR0Policy for LeRobot: xr0's own policy (xr0.XR0Policy: model, processor, per-robot statistics) behind LeRobot's
PreTrainedPolicy. No second implementation: the loss is the xr0 recipe's, sampling is `xr0.XR0Policy.sample`.

- Batches arrive as LeRobot makes them (images float [0, 1] (B, C, H, W) under observation.images.*, the state,
  the action chunk with action_is_pad, the task strings) and are turned into xr0 samples; xr0 normalises state and
  actions itself with its per-timestep statistics, so the processors only batch and move tensors (processor_xr0).
- Folders are xr0 checkpoints: LeRobot's config.json beside xr0's model.safetensors, normalization.safetensors and
  xr0_config.json, so `xr0 eval` / `xr0 serve` load what lerobot-train saved. `from_pretrained` also takes an xr0
  checkpoint, an official release folder or a Hugging Face repo id in the local cache; to train from one of those,
  use --policy.init_from (lerobot-train would look for LeRobot processor files in --policy.pretrained_path).
- Real-time chunking: `predict_action_chunk(..., inference_delay=d, prev_chunk_left_over=L)` passes the d actions
  that run during inference as XR-0's trained clean prefix (the new chunk is timestep-aligned with the old one and
  starts with them; LeRobot's action queue drops them). Longer than the checkpoint's trained prefix (or a checkpoint
  trained without prefixes): inference-time RTC guidance toward all of L instead.
"""

from __future__ import annotations

import random
from collections import deque
from pathlib import Path

import numpy as np
import torch
from lerobot.configs import PreTrainedConfig
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.utils.constants import ACTION, OBS_IMAGES, OBS_STATE

import xr0
from xr0.checkpoints import LEROBOT_XR0_CONFIG, resolve_checkpoint
from xr0.data.lerobot_v3 import camera_key, match_cameras, view_title
from xr0.runtime import rtc_prefix_weights
from xr0.train.optim import param_groups
from xr0.train.recipes import get_recipe

from .configuration_xr0 import XR0Config
from .processor_xr0 import uint8_images, vlm_inputs

PAD = "action_is_pad"


class XR0Policy(PreTrainedPolicy):
    config_class = XR0Config
    name = "xr0"

    def __init__(self, config: XR0Config, dataset_stats=None, dataset_meta=None, inner: xr0.XR0Policy | None = None,
                 **kwargs):
        super().__init__(config)
        config.validate_features()
        keys = list(config.image_features)
        if inner is None and config.init_from:
            inner = xr0.XR0Policy.from_pretrained(resolve_checkpoint(config.init_from), dtype=torch.float32)
        elif inner is None:  # a fresh preset: cameras and control rate from the dataset
            inner = xr0.XR0Policy.from_preset(
                config.preset, seed=config.seed, chunk_len=config.chunk_len,
                cameras=tuple(_key_title(k) for k in keys),
                **({"control_hz": float(dataset_meta.fps)} if dataset_meta is not None else {}))
            if dataset_meta is not None:
                inner.robots = {}  # the statistics come from the dataset (_robot_for)
            else:  # no data (e.g. a folder made for lerobot-eval): identity statistics of the features' widths
                from xr0.processing import RobotSpec

                state = config.robot_state_feature
                inner.robots = {"default": RobotSpec.identity(
                    config.chunk_len, config.action_feature.shape[0], state.shape[0] if state else 1)}
        self.inner = inner
        self.model = inner.model  # the parameters LeRobot trains, moves and saves
        self.robot_type = config.robot_type = self._robot_for(dataset_meta)  # saved: a reload picks the same
        robot = inner.robot(self.robot_type)
        if robot.chunk_len != config.chunk_len:
            raise ValueError(f"robot type {self.robot_type!r} of the checkpoint has chunk length {robot.chunk_len}: "
                             f"pass --policy.chunk_len={robot.chunk_len} (the dataset's action chunks follow it)")
        # LeRobot image key -> xr0 camera: by the keys' view titles, else by position (xr0's one rule)
        self.cameras = match_cameras(keys, robot.cameras, title=_key_title, source="the image features")
        # what the processor step (processor_xr0.XR0VLMInputsStep) needs to make the VLM inputs without the model
        config.vlm_inputs = {"policy_config": inner.config.to_dict(), "cameras": list(robot.cameras),
                             "image": robot.image.to_dict(), "camera_keys": dict(self.cameras)}
        self.recipe = get_recipe(config.recipe, lambda_mask=config.lambda_mask, rope_offset=config.rope_offset)
        self._queue: deque[torch.Tensor] = deque()
        self._calls = 0

    # ------------------------------------------------------------------ statistics and inputs
    def _robot_for(self, dataset_meta) -> str | None:
        """The robot type whose statistics normalise: the config's, else the dataset's (computed from it, xr0's
        per-timestep statistics, when the checkpoint does not have them), else the checkpoint's only one."""
        name = self.config.robot_type
        if dataset_meta is not None:
            name = name or dataset_meta.robot_type or "default"
            if name not in self.inner.robots:
                from xr0.data.lerobot_v3 import LeRobotV3Dataset
                from xr0.train.inputs import robot_spec_from_data

                data = LeRobotV3Dataset(dataset_meta.root, self.config.chunk_len)
                spec = robot_spec_from_data(data, self.inner.config, chunk_len=self.config.chunk_len)
                self.inner.robots = {**self.inner.robots, name: spec}  # cameras / images: the config's
        if name is None:
            if len(self.inner.robots) != 1:
                raise ValueError(f"--policy.robot_type is needed: the checkpoint has {sorted(self.inner.robots)}")
            return next(iter(self.inner.robots))
        self.inner.robot(name)  # a clear error for an unknown name
        return name

    def _samples(self, batch: dict, with_actions: bool, images: bool = True) -> list[dict]:
        """The batch as xr0 samples (images: without them, for a batch whose VLM inputs the processor made)."""
        state = batch[OBS_STATE]
        n = state.shape[0]
        tasks = batch.get("task") or [""] * n
        if isinstance(tasks, str):
            tasks = [tasks] * n
        state = state.detach().float().cpu().numpy()
        samples = [{"instruction": tasks[i], "state": state[i]} for i in range(n)]
        if images:
            frames = {cam: uint8_images(batch[key]) for key, cam in self.cameras.items()}
            for i, s in enumerate(samples):
                s["images"] = {cam: img[i] for cam, img in frames.items()}
        if with_actions:
            actions = batch[ACTION].detach().float().cpu().numpy()
            valid = ~batch[PAD].cpu().numpy() if PAD in batch else np.ones(actions.shape[:2], bool)
            for s, a, v in zip(samples, actions, valid):
                s.update(actions=a, action_valid=v)
        return samples

    # ------------------------------------------------------------------ training
    def get_optim_params(self) -> list[dict]:
        """Applies the recipe (which parameters train, its ablation switches) and returns xr0's AdamW groups (no
        weight decay on biases, norms and adaLN)."""
        self.recipe.configure(self.model)
        return [{k: v for k, v in g.items() if k != "names"}
                for g in param_groups(list(self.model.named_parameters()), self.config.optimizer_weight_decay)]

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            self.recipe.set_mode(self.model)  # a frozen VLM stays in eval mode
        return self

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        """The recipe's flow-matching loss on the batch (xr0.train.recipes.Recipe.loss), and its scalar terms."""
        vlm = vlm_inputs(batch)  # made by the processor step (processor_xr0), else here
        xb = self.inner.make_batch(self._samples(batch, with_actions=True, images=vlm is None), self.robot_type, vlm)
        device = next(self.model.parameters()).device
        xb = {k: v.to(device) if torch.is_tensor(v) else v for k, v in xb.items()}
        seed = int(torch.randint(0, 2**62, (1,)))  # LeRobot seeds torch; the recipe's draws follow it
        opts = self.recipe.options(self.config.chunk_len, random.Random(seed), torch.Generator().manual_seed(seed))
        out = self.recipe.loss(self.model, xb, opts)
        logs = {k: float(v.detach()) for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1}
        return out["loss"], {**logs, "prefix_len": opts.prefix_len}

    # ------------------------------------------------------------------ inference
    def reset(self):
        self._queue.clear()
        self._calls = 0

    def supports_rtc(self) -> bool:
        return True

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict, noise: torch.Tensor | None = None, inference_delay: int | None = None,
                             prev_chunk_left_over: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """(B, T, action_dim) in the dataset's units, the batch in one pass (XR0Policy.sample_batch). With
        `inference_delay` and `prev_chunk_left_over` (LeRobot's RTC call), the new chunk continues the old one
        (module docstring), sample by sample. `noise`: optional (B, T, 32) x_0."""
        vlm = vlm_inputs(batch)
        if prev_chunk_left_over is None or not inference_delay:
            samples = self._samples(batch, with_actions=False, images=vlm is None)
            seeds = [self.config.seed + self._calls + i for i in range(len(samples))]
            self._calls += len(samples)
            chunks = self.inner.sample_batch(samples, seeds, self.config.denoise_steps, self.robot_type, noise, vlm)
            return torch.from_numpy(chunks).to(batch[OBS_STATE].device)
        samples = self._samples(batch, with_actions=False)
        chunks = []
        for i, s in enumerate(samples):
            prefix, weights = self._prefix(inference_delay, prev_chunk_left_over, i)
            chunk = self.inner.sample(s["images"], s["instruction"], s["state"], prefix=prefix,
                                      prefix_weights=weights, steps=self.config.denoise_steps,
                                      seed=self.config.seed + self._calls, robot_type=self.robot_type,
                                      noise=None if noise is None else noise[i])
            self._calls += 1
            chunks.append(torch.from_numpy(chunk))
        return torch.stack(chunks).to(batch[OBS_STATE].device)

    def _prefix(self, delay: int | None, left_over: torch.Tensor | None, i: int):
        if left_over is None or not delay:
            return None, None
        left = left_over[i] if left_over.ndim == 3 else left_over
        left = left.detach().float().cpu().numpy()[: self.config.chunk_len]
        d = min(int(delay), len(left))
        if d == 0:
            return None, None
        if d <= self.inner.config.max_prefix:  # XR-0's trained clean prefix
            return left[:d], None
        return left, rtc_prefix_weights(len(left), d)  # inference-time guidance

    @torch.no_grad()
    def select_action(self, batch: dict, noise: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """One action (B, action_dim): the first `n_action_steps` of each chunk, then a new chunk."""
        if not self._queue:
            chunk = self.predict_action_chunk(batch, noise=noise)[:, : self.config.actions_per_chunk]
            self._queue.extend(chunk.transpose(0, 1))
        return self._queue.popleft()

    # ------------------------------------------------------------------ folders
    def _save_pretrained(self, save_directory: Path, state_dict=None) -> None:
        self.config._save_pretrained(save_directory)  # LeRobot's config.json (policy type "xr0")
        self.inner.save_pretrained(save_directory, config_name=LEROBOT_XR0_CONFIG)

    @classmethod
    def from_pretrained(cls, pretrained_name_or_path, *, config: XR0Config | None = None, dataset_stats=None,
                        dataset_meta=None, **kwargs) -> "XR0Policy":
        """A folder this plugin saved, an xr0 checkpoint or run, an official release folder, "embedded", or a
        Hugging Face repo id in the local cache (never the network)."""
        path = resolve_checkpoint(pretrained_name_or_path)
        inner = xr0.XR0Policy.from_pretrained(path, dtype=torch.float32)
        if config is None:
            if (path / LEROBOT_XR0_CONFIG).is_file():
                config = PreTrainedConfig.from_pretrained(path)
            else:
                config = _config_for(inner)
        policy = cls(config, dataset_stats=dataset_stats, dataset_meta=dataset_meta, inner=inner)
        policy.to(config.device)
        policy.eval()
        return policy


def _key_title(key: str) -> str:
    """A LeRobot image key -> its xr0 view title (observation.images.base_view -> "Base View")."""
    return view_title(key.removeprefix(OBS_IMAGES + "."))


def _config_for(inner: xr0.XR0Policy) -> XR0Config:
    """An XR0Config describing a loaded xr0 checkpoint (its cameras, state and action sizes), for use without a
    LeRobot config (e.g. XR0Policy.from_pretrained("embedded"))."""
    name, robot = next(iter(inner.robots.items()))
    h, w = robot.image.size or inner.config.image_size  # a release folder's processor takes any size
    inputs = {f"{OBS_IMAGES}.{camera_key(cam)}": PolicyFeature(FeatureType.VISUAL, (3, h, w)) for cam in robot.cameras}
    inputs[OBS_STATE] = PolicyFeature(FeatureType.STATE, (robot.state_dim,))
    return XR0Config(chunk_len=robot.chunk_len, robot_type=name, input_features=inputs,
                     output_features={ACTION: PolicyFeature(FeatureType.ACTION, (robot.action_dim,))})

