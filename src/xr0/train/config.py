"""`TrainConfig`: every knob of `xr0 train`, checked in one place."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class TrainConfig:
    """Every knob of `xr0 train`; defaults are the released post-training run (spec §6.6) on the chosen preset."""

    preset: str | None = None  # a fresh run's model preset; exactly one of preset and init (or an in-memory policy)
    recipe: str = "post-sync"
    data: str | None = None  # LeRobot v3 folder (meta/info.json) or a folder of official JSON episodes
    robot_type: str = "default"
    cameras: tuple[str, ...] | None = None  # dataset cameras to use, in the model's camera order
    chunk_len: int | None = None  # fresh runs: action chunk length T (default: the preset's)
    image_size: tuple[int, int] | None = None  # fresh runs: (H, W) the images are resized to (default: the preset's)
    out: str = "runs/xr0"
    steps: int = 30_000
    batch_size: int = 16  # per process and micro-batch
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 5e-7  # warm-up start and cosine floor
    warmup: int = 2000
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = 1.0
    dtype: str = "auto"  # autocast: bf16 | fp32 | auto (bf16 on CUDA and bf16-capable CPUs); weights stay fp32
    seed: int = 42
    save_every: int = 5000
    keep_checkpoints: int | None = None  # keep only the newest K step_* folders
    log_every: int = 10
    resume: bool = False
    init: str | None = None  # start from this checkpoint's weights (fresh optimiser, step 0); with resume: where a
    # run with no checkpoint yet starts (one command for the first start and every requeue)
    fsdp: bool = False
    grad_checkpointing: bool = False  # recompute VLM layers, vision blocks and DiT layers in backward
    freeze: tuple[str, ...] = ()  # parts kept fixed on top of the recipe's: FREEZE_PARTS (recipes.py)
    lora_rank: int = 0  # > 0: LoRA adapters of this rank on the VLM text layers (xr0.train.lora); the VLM is frozen
    lora_alpha: float | None = None  # adapter scaling alpha / rank (default alpha = rank)
    lora_targets: tuple[str, ...] | None = None  # linear names to adapt (default: lora.DEFAULT_TARGETS)
    skip_bad: bool = False
    augment: bool = True
    state_dropout: float = 0.0  # chance that a sample's state is replaced by the mean state (0 once normalised)
    start_frames: int = 0  # the first N frames of every episode are drawn `start_repeat` times per epoch (0: off)
    start_repeat: int = 3
    raw_state: bool = False  # feed the state unnormalised, as the released pipeline does
    stats_samples: int | None = None  # cap on samples read for normalisation statistics
    keep_stats: bool = False  # --init: keep the checkpoint's statistics of --robot-type instead of the data's
    num_workers: int = 0  # data worker processes (xr0.train.loader); 0: samples are made in the training process
    prefetch: int = 2  # micro-batches each data worker prepares ahead (with num_workers > 0)
    overfit_batch: bool = False  # reuse the first batch and its t/noise every step (a sanity check of the loss)
    stop_after: int | None = None  # end after this many steps without changing the schedule (tests)
    device: str = "auto"
    progress: bool = True
    tracker: str = "none"  # none | auto | wandb | trackio
    vl_data: str | None = None  # stage 1: VL JSONL co-training data
    recipe_overrides: dict = field(default_factory=dict)

    def validate(self) -> None:
        checks = [(self.steps >= 1, "steps must be >= 1"), (self.batch_size >= 1, "batch_size must be >= 1"),
                  (self.grad_accum >= 1, "grad_accum must be >= 1"), (self.lr > 0, "lr must be > 0"),
                  (self.warmup >= 0, "warmup must be >= 0"), (self.save_every >= 1, "save_every must be >= 1"),
                  (self.log_every >= 1, "log_every must be >= 1"),
                  (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
                  (self.prefetch >= 1, f"prefetch must be >= 1, got {self.prefetch}"),
                  (0.0 <= self.state_dropout <= 1.0, f"state_dropout must be in [0, 1], got {self.state_dropout}"),
                  (self.start_frames >= 0, f"start_frames must be >= 0, got {self.start_frames}"),
                  (self.start_repeat >= 1, f"start_repeat must be >= 1, got {self.start_repeat}"),
                  (self.dtype in ("auto", "bf16", "fp32"), f"dtype must be auto, bf16 or fp32, got {self.dtype!r}"),
                  (self.tracker in ("none", "auto", "wandb", "trackio"), f"unknown tracker {self.tracker!r}"),
                  (self.lora_rank >= 0, f"lora_rank must be >= 0, got {self.lora_rank}"),
                  (not (self.lora_rank and self.fsdp), "LoRA runs use DDP (--fsdp shards full fine-tuning; the "
                                                       "adapters are small)"),
                  (not (self.preset and self.init), f"--preset {self.preset} and --init {self.init} both given: an "
                                                    f"--init run takes its architecture from the checkpoint")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"train config: {msg}")
