"""XR0Config: `--policy.type=xr0`. The fields choose an xr0 model (a preset, or a checkpoint through
--policy.pretrained_path), xr0's training recipe and how chunks are executed; optimiser and schedule default to
xr0's own (xr0.train.config.TrainConfig), so LeRobot trains with the numbers `xr0 train` uses."""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs import NormalizationMode, PreTrainedConfig
from lerobot.optim import AdamWConfig, CosineDecayWithWarmupSchedulerConfig
from lerobot.utils.constants import ACTION, OBS_STATE
from xr0.train.config import TrainConfig

_XR0 = TrainConfig()  # xr0's optimiser and schedule defaults, defined once there


@PreTrainedConfig.register_subclass("xr0")
@dataclass
class XR0Config(PreTrainedConfig):
    """XR-0 in LeRobot.

    preset: xr0 preset of a fresh model ("tiny", "small", "xr0-4b"; `xr0 inspect --preset NAME`).
    init_from: instead, start from an xr0 checkpoint or run, an official release folder, "embedded" or a Hugging
        Face repo id in the local cache (--policy.pretrained_path is for folders this plugin saved: lerobot-train
        also loads LeRobot's processor files from there).
    chunk_len: T, actions per chunk (the dataset's action delta indices); None: the --policy.init_from checkpoint's
        (of robot_type, else its first robot type's), else the preset's; must equal a loaded checkpoint's.
    n_action_steps: actions `select_action` executes per chunk before inferring the next (synchronous use;
        lerobot-rollout's RTC mode uses XR-0's committed prefix instead, see modeling_xr0).
    recipe: xr0 training recipe ("post-async": clean action prefix, prefix dropout, Λ mask, L1 re-weighting, as
        released; "post-sync"; "stage2"); lambda_mask / rope_offset: its ablation switches (None = the recipe's: the
        architecture's Λ band and +10 offset, also for a release folder that runs without them).
    robot_type: which of a checkpoint's normalisation statistics to use (None: the dataset's robot_type when the
        checkpoint has it, else the only one). Statistics are xr0's per-timestep (T x D) ones, computed from the
        dataset by this plugin, so LeRobot's normaliser steps stay identity.
    denoise_steps: Euler steps at inference (None = the model's, 5). seed: noise of the first inference call
        (call n uses seed + n).
    vlm_inputs: filled in by the policy when it is built (xr0's config, the robot type's cameras and image
        settings, the camera keys), so the preprocessor makes the VLM inputs (processor_xr0.XR0VLMInputsStep).
    """

    preset: str = "tiny"
    init_from: str | None = None
    chunk_len: int | None = None
    n_action_steps: int | None = None  # None: chunk_len // 2
    recipe: str = "post-async"
    lambda_mask: bool = True
    rope_offset: int | None = None
    robot_type: str | None = None
    denoise_steps: int | None = None
    seed: int = 0
    vlm_inputs: dict | None = None  # set by the policy: what the processor step needs (processor_xr0)

    optimizer_lr: float = _XR0.lr
    optimizer_betas: tuple[float, float] = _XR0.betas
    optimizer_eps: float = _XR0.eps
    optimizer_weight_decay: float = _XR0.weight_decay
    optimizer_grad_clip_norm: float = _XR0.grad_clip
    scheduler_warmup_steps: int = _XR0.warmup
    scheduler_decay_steps: int = _XR0.steps
    scheduler_decay_lr: float = _XR0.min_lr

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {"VISUAL": NormalizationMode.IDENTITY, "STATE": NormalizationMode.IDENTITY,
                                 "ACTION": NormalizationMode.IDENTITY})

    def __post_init__(self):
        super().__post_init__()
        if self.chunk_len is None:
            from xr0.config import get_preset
            from xr0.policy import chunk_lengths

            if self.init_from:
                lengths = chunk_lengths(self.init_from)
                self.chunk_len = lengths.get(self.robot_type) or next(iter(lengths.values()))
            else:
                self.chunk_len = get_preset(self.preset).chunk_len
        if self.chunk_len < 1:
            raise ValueError(f"--policy.chunk_len must be >= 1, got {self.chunk_len}")
        if self.n_action_steps is not None and not 1 <= self.n_action_steps <= self.chunk_len:
            raise ValueError(f"--policy.n_action_steps must be in 1..chunk_len={self.chunk_len}, "
                             f"got {self.n_action_steps}")

    @property
    def actions_per_chunk(self) -> int:
        return self.n_action_steps or max(1, self.chunk_len // 2)

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_len))

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, betas=self.optimizer_betas, eps=self.optimizer_eps,
                           weight_decay=self.optimizer_weight_decay, grad_clip_norm=self.optimizer_grad_clip_norm)

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            num_warmup_steps=self.scheduler_warmup_steps, num_decay_steps=self.scheduler_decay_steps,
            peak_lr=self.optimizer_lr, decay_lr=self.scheduler_decay_lr)

    def validate_features(self) -> None:
        if not self.image_features:
            raise ValueError("xr0 needs at least one camera (an observation.images.* feature)")
        if self.input_features and OBS_STATE not in self.input_features:
            raise ValueError(f"xr0 needs the robot state ({OBS_STATE}); the inputs are {sorted(self.input_features)}")
        if self.output_features and ACTION not in self.output_features:
            raise ValueError(f"xr0 predicts {ACTION!r}; the outputs are {sorted(self.output_features)}")
