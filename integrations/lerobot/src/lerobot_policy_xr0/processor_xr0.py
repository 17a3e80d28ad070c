"""make_xr0_pre_post_processors: LeRobot's batching and device steps only. xr0 normalises state and actions itself
(per-timestep T x D statistics stored with the checkpoint) and pads to its 32-dim layout inside the policy, so no
LeRobot normaliser runs and the postprocessor returns the policy's actions in the dataset's units."""

from __future__ import annotations

from typing import Any

import torch
from lerobot.processor import PolicyAction, PolicyProcessorPipeline
from lerobot.processor.factory import make_default_policy_processor_steps, make_policy_processor_pipelines

from .configuration_xr0 import XR0Config


def make_xr0_pre_post_processors(
    config: XR0Config, dataset_stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[PolicyProcessorPipeline[dict[str, Any], dict[str, Any]], PolicyProcessorPipeline[PolicyAction, PolicyAction]]:
    s = make_default_policy_processor_steps(config, dataset_stats)
    return make_policy_processor_pipelines(input_steps=[s.rename_observations, s.add_batch_dim, s.to_device],
                                           output_steps=[s.to_cpu])
