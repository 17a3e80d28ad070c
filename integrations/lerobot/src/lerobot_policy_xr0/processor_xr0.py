"""make_xr0_pre_post_processors: LeRobot's batching step, then xr0's own VLM inputs (XR0VLMInputsStep: each camera
image resized as the checkpoint's robot type says, the prompt tokenised, the patches laid out as Qwen3-VL takes
them), then the device step. The VLM inputs are made here, on the batch as the data loader delivers it (on the CPU,
before the device step), instead of inside the policy's forward. xr0 normalises state and actions itself
(per-timestep T x D statistics stored with the checkpoint), so no LeRobot normaliser runs and the postprocessor
returns the policy's actions in the dataset's units."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from lerobot.lerobot_types import EnvTransition, TransitionKey
from lerobot.processor import PolicyAction, PolicyProcessorPipeline
from lerobot.processor.factory import make_default_policy_processor_steps, make_policy_processor_pipelines
from lerobot.processor.pipeline import ProcessorStep, ProcessorStepRegistry

from xr0.config import PolicyConfig
from xr0.processing import Processor
from xr0.processing.images import ImageSpec

from .configuration_xr0 import XR0Config

VLM_PREFIX = "observation.xr0."  # the VLM inputs' keys in the batch: observation.xr0.input_ids, ...


def uint8_images(x: torch.Tensor) -> np.ndarray:
    """LeRobot images (B, C, H, W) float in [0, 1] (or uint8) -> (B, H, W, 3) uint8, what xr0's processor takes."""
    if x.ndim == 3:
        x = x[None]
    if x.dtype != torch.uint8:
        x = (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


@ProcessorStepRegistry.register(name="xr0_vlm_inputs")
@dataclass
class XR0VLMInputsStep(ProcessorStep):
    """Camera images and task strings -> xr0's VLM batch under VLM_PREFIX keys (input_ids, attention_mask,
    mm_token_type_ids, pixel_values, image_grid_thw). Everything it needs is in its config (saved with the
    processor): xr0's PolicyConfig, the robot type's cameras and image settings, the LeRobot key of each camera."""

    policy_config: dict = field(default_factory=dict)
    cameras: list = field(default_factory=list)  # xr0 camera names, in prompt order
    image: dict = field(default_factory=dict)  # ImageSpec.to_dict()
    camera_keys: dict = field(default_factory=dict)  # LeRobot image key -> xr0 camera

    def __post_init__(self):
        self._processor = Processor(PolicyConfig.from_dict(self.policy_config))
        self._robot = SimpleNamespace(cameras=tuple(self.cameras), image=ImageSpec.from_dict(self.image))

    def __call__(self, transition: EnvTransition) -> EnvTransition:
        obs = dict(transition.get(TransitionKey.OBSERVATION) or {})
        tasks = (transition.get(TransitionKey.COMPLEMENTARY_DATA) or {}).get("task")
        images = {cam: uint8_images(obs[key]) for key, cam in self.camera_keys.items()}
        n = len(next(iter(images.values())))
        tasks = [tasks] * n if isinstance(tasks, str) else list(tasks or [""] * n)
        observations = [{"images": {cam: img[i] for cam, img in images.items()}, "instruction": tasks[i]}
                        for i in range(n)]
        vlm = self._processor.batch(observations, self._robot)
        obs.update({VLM_PREFIX + k: v for k, v in vlm.items()})
        out = dict(transition)
        out[TransitionKey.OBSERVATION] = obs
        return out

    def get_config(self) -> dict[str, Any]:
        return {"policy_config": self.policy_config, "cameras": list(self.cameras), "image": dict(self.image),
                "camera_keys": dict(self.camera_keys)}

    def transform_features(self, features):
        return features  # adds model inputs, not dataset features


def vlm_inputs(batch: dict) -> dict[str, torch.Tensor] | None:
    """The VLM inputs XR0VLMInputsStep put in a batch (None: a batch made without it)."""
    if VLM_PREFIX + "input_ids" not in batch:
        return None
    return {k[len(VLM_PREFIX):]: v for k, v in batch.items() if k.startswith(VLM_PREFIX)}


def make_xr0_pre_post_processors(
    config: XR0Config, dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[PolicyProcessorPipeline[dict[str, Any], dict[str, Any]], PolicyProcessorPipeline[PolicyAction, PolicyAction]]:
    """`config.vlm_inputs` is what the policy recorded when it was built (make_policy runs first in LeRobot's
    scripts); without it (a config no policy was built from) the policy makes its VLM inputs itself."""
    s = make_default_policy_processor_steps(config, dataset_stats)
    steps = [s.rename_observations, s.add_batch_dim]
    if config.vlm_inputs:
        steps.append(XR0VLMInputsStep(**config.vlm_inputs))
    return make_policy_processor_pipelines(input_steps=[*steps, s.to_device], output_steps=[s.to_cpu])
