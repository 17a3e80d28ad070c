"""The training loop shared by every recipe: data, AdamW + warm-up/cosine, bf16 autocast, DDP/FSDP2, checkpoints.

Reproducibility is by construction, not by saving generator objects: every random draw of step s is made from
streams seeded by (seed, s, rank, micro-batch) and every sample's augmentation by (seed, sample position), so a
run resumed from a checkpoint replays exactly the losses of an uninterrupted run. Checkpoints hold no pickle:
weights, optimiser moments and RNG states are safetensors / JSON.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import math
import os
import random
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn

from ..checkpoints import (CKPT_DIR, LATEST, STATE_JSON, STATE_TENSORS, STEP_FMT, atomic_write, find_latest,
                           resolve_checkpoint)
from ..config import PolicyConfig, get_preset
from ..model.policy import XR0Policy
from ..processing import RobotSpec
from .recipes import Recipe, get_recipe

NO_DECAY = ("bias", "norm", "ln", "rotary_emb", "adaln")  # released no-weight-decay name patterns (spec §6.6)
METRICS = "metrics.jsonl"


@dataclass
class TrainConfig:
    """Every knob of `xr0 train`; defaults are the released post-training run (spec §6.6) on the chosen preset."""

    preset: str = "tiny"
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
    init: str | None = None  # start from this checkpoint's weights (fresh optimiser, step 0)
    fsdp: bool = False
    skip_bad: bool = False
    augment: bool = True
    state_dropout: float = 0.0  # chance that a sample's state is replaced by the mean state (0 once normalised)
    start_frames: int = 0  # the first N frames of every episode are drawn `start_repeat` times per epoch (0: off)
    start_repeat: int = 3
    raw_state: bool = False  # feed the state unnormalised, as the released pipeline does
    stats_samples: int | None = None  # cap on samples read for normalisation statistics
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
                  (0.0 <= self.state_dropout <= 1.0, f"state_dropout must be in [0, 1], got {self.state_dropout}"),
                  (self.start_frames >= 0, f"start_frames must be >= 0, got {self.start_frames}"),
                  (self.start_repeat >= 1, f"start_repeat must be >= 1, got {self.start_repeat}"),
                  (self.dtype in ("auto", "bf16", "fp32"), f"dtype must be auto, bf16 or fp32, got {self.dtype!r}"),
                  (self.tracker in ("none", "auto", "wandb", "trackio"), f"unknown tracker {self.tracker!r}"),
                  (not (self.resume and self.init), "use either resume or init, not both")]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"train config: {msg}")


# ---------------------------------------------------------------------- schedule and optimiser
def lr_at(step: int, peak: float, warmup: int, total: int, floor: float = 5e-7) -> float:
    """LR of optimiser step `step` (0-based): linear floor -> peak over `warmup`, cosine peak -> floor at `total`."""
    floor = min(floor, peak)
    if step < warmup:
        return floor + (peak - floor) * step / warmup
    if total <= warmup:
        return peak
    progress = min(1.0, (step - warmup) / (total - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """Two AdamW groups: decay, and no decay for names containing bias/norm/ln/rotary_emb/adaln."""
    decay, no_decay = [], []
    for name, p in named:
        if p.requires_grad:
            (no_decay if any(k in name for k in NO_DECAY) else decay).append((name, p))
    return [{"params": [p for _, p in decay], "names": [n for n, _ in decay], "weight_decay": weight_decay},
            {"params": [p for _, p in no_decay], "names": [n for n, _ in no_decay], "weight_decay": 0.0}]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = plain fp32). "auto" avoids bf16 on CPUs that only emulate it (~5x slower there)."""
    if name == "fp32":
        return None
    if name == "bf16" or device.type == "cuda":
        return torch.bfloat16
    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return torch.bfloat16 if native else None


# ---------------------------------------------------------------------- distributed
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def init_distributed(device: str = "auto") -> Dist:
    """Join the torchrun process group if there is one (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device.startswith("cuda")
    dev = torch.device(f"cuda:{local}" if use_cuda else "cpu") if device in ("auto", "cuda") else torch.device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1:
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        if dev.type == "cpu":
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
        return Dist(dist.get_rank(), dist.get_world_size(), local, dev)
    return Dist(0, 1, 0, dev)


class LossModule(nn.Module):
    """Policy (+ recipe heads) behind one forward(), so DDP/FSDP see the loss computation as a module call."""

    def __init__(self, policy: XR0Policy, recipe: Recipe, heads: nn.Module | None = None):
        super().__init__()
        self.policy = policy
        self.heads = heads
        self.recipe = recipe

    def forward(self, batch: dict, opts, vl_samples=None) -> dict[str, torch.Tensor]:
        return self.recipe.loss(self.policy, batch, opts, self.heads, vl_samples)


def _shard(module: LossModule) -> nn.Module:
    """FSDP2: one unit per VLM decoder layer, vision block and DiT layer; the root holds the rest.

    The expert reads each VLM layer's K/V straight from the cache, a side output FSDP's pre-backward hook does not
    see (the last VLM layers' hidden states are not even used), so the text layers stay unsharded from forward to
    backward (ZeRO-2-like for them, as the released DeepSpeed run) instead of being re-gathered in backward.
    DiT layers are sharded by attention and MLP only: their adaLN tables are read outside the layer's forward
    (ActionExpert.modulation_table), so they stay with the root unit, gathered for the whole step.
    """
    from torch.distributed.fsdp import fully_shard

    pol = module.policy
    for layer in pol.vlm.model.language_model.layers:
        fully_shard(layer, reshard_after_forward=False)
    for unit in [*pol.vlm.model.visual.blocks, *(m for layer in pol.dit.layers for m in (layer.attn, layer.mlp))]:
        fully_shard(unit)
    fully_shard(module)
    return module


# ---------------------------------------------------------------------- data
class EpochSampler:
    """Global sample position k -> dataset index: a fresh seeded permutation per epoch (pure, so resumable).

    `index` (optional): the dataset indices one epoch draws, repeats allowed (default: each of the n samples once);
    n is then the epoch's length.
    """

    def __init__(self, n: int, seed: int, index: np.ndarray | None = None):
        self.index = None if index is None else np.asarray(index, dtype=np.int64)
        n = int(n) if self.index is None else len(self.index)
        if n <= 0:
            raise ValueError("the dataset has no samples (every episode skipped or empty)")
        self.n, self.seed = n, int(seed)
        self._cache: tuple[int, np.ndarray] | None = None

    def __getitem__(self, k: int) -> int:
        epoch, pos = divmod(int(k), self.n)
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, np.random.default_rng([self.seed, 0x5A4D, epoch]).permutation(self.n))
        i = int(self._cache[1][pos])
        return i if self.index is None else int(self.index[i])


def start_oversampled(dataset, start_frames: int, repeat: int) -> np.ndarray | None:
    """Epoch index that draws the first `start_frames` frames of every episode `repeat` times and the rest once:
    all samples in order, then the start frames again (repeat - 1) times. None when off.

    Where the target's position decides the motion, the first frames of an episode are the few samples that
    show it (later, the arm's own position already says where it is heading); see docs/metaworld.md.
    """
    if start_frames <= 0 or repeat <= 1:
        return None
    if not hasattr(dataset, "frame_indices"):
        raise ValueError(f"--start-frames needs a dataset that knows each sample's frame index "
                         f"({type(dataset).__name__} does not)")
    frames = np.asarray(dataset.frame_indices())
    start = np.nonzero(frames < start_frames)[0]
    return np.concatenate([np.arange(len(frames))] + [start] * (repeat - 1))


def open_dataset(path: str | Path, chunk_len: int, cameras=None, skip_bad: bool = False):
    """A LeRobotDataset v3 folder (has meta/info.json) or official JSON episodes (a folder or one .json)."""
    root = Path(path)
    if (root / "meta" / "info.json").is_file():
        from ..data.lerobot_v3 import LeRobotV3Dataset
        return LeRobotV3Dataset(root, chunk_len, cameras=list(cameras) if cameras else None, skip_bad=skip_bad)
    if root.is_dir() or (root.is_file() and root.suffix == ".json"):
        from ..data.official_json import OfficialJsonDataset
        return OfficialJsonDataset([root] if root.is_file() else root, chunk_len,
                                   cameras=list(cameras) if cameras else None, skip_bad=skip_bad)
    raise FileNotFoundError(f"--data {root}: not found (expected a LeRobot v3 folder with meta/info.json, "
                            "or a folder of official JSON episodes)")


def dataset_cameras(ds) -> list[str]:
    cams = getattr(ds, "cameras", None)
    return list(cams) if cams else list(ds[0]["images"])


def view_title(camera: str) -> str:
    """Official-format camera names -> the view titles of the released prompt ("ego" -> "Ego View")."""
    from ..data.official_json import VIEW_TITLES

    return VIEW_TITLES.get(camera, camera)


def camera_map(data_cams: list[str], model_cams: tuple[str, ...], explicit: bool) -> dict[str, str]:
    """Dataset camera -> model camera: by name (or view title) if they match, else by position."""
    titled = [view_title(c) for c in data_cams]
    if set(titled) == set(model_cams):
        return dict(zip(data_cams, titled))
    if len(data_cams) == len(model_cams):
        if not explicit:
            print(f"xr0 train: mapping dataset cameras {data_cams} onto model cameras {list(model_cams)} by position "
                  "(pass --cameras to choose the order)", file=sys.stderr)
        return dict(zip(data_cams, model_cams))
    raise ValueError(f"the dataset has cameras {data_cams} but the model expects {len(model_cams)}: "
                     f"{list(model_cams)}; choose {len(model_cams)} with --cameras")


def robot_spec_from_data(ds, config: PolicyConfig, max_samples: int | None = None,
                         raw_state: bool = False) -> RobotSpec:
    """Per-timestep action and state statistics (xr0.data.stats, one streaming pass) -> a padded RobotSpec."""
    from ..data.stats import compute_stats

    stats = compute_stats(ds, max_samples=max_samples)
    T, D, Ds = config.chunk_len, config.action_dim, config.state_dim
    da, ds_dim = stats.action_mean.shape[1], stats.state_mean.shape[0]
    if stats.action_mean.shape[0] != T:
        raise ValueError(f"dataset chunks have {stats.action_mean.shape[0]} steps, the model's chunk_len is {T}")
    if da > D:
        raise ValueError(f"dataset action_dim {da} exceeds the model's padded action_dim {D}")
    if ds_dim > Ds:
        raise ValueError(f"dataset state_dim {ds_dim} exceeds the model's padded state_dim {Ds}")
    fix_std = lambda s: np.where(s > 1e-6, s, 1.0)  # noqa: E731  constant dims: keep them finite at inference
    a_mean, a_std = np.zeros((T, D), np.float32), np.ones((T, D), np.float32)
    a_mean[:, :da], a_std[:, :da] = stats.action_mean, fix_std(stats.action_std)
    mask = np.zeros(D, np.float32)
    if getattr(ds, "action_dim", None) is None and da == 32:  # the official 32-D layout: reserved dims stay off
        from ..data.official_json import ACTIVE_DIMS
        mask[:] = ACTIVE_DIMS
    else:
        mask[:da] = 1
    s_mean, s_std = np.zeros(Ds, np.float32), np.ones(Ds, np.float32)
    if not raw_state:
        s_mean[:ds_dim], s_std[:ds_dim] = stats.state_mean, fix_std(stats.state_std)
    return RobotSpec(a_mean, a_std, mask, s_mean, s_std, action_dim=da, state_dim=ds_dim)


# ---------------------------------------------------------------------- checkpoints
def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8).clone()


def rng_state() -> dict:
    """Global RNG states as JSON (no pickle). Training draws come from derived streams; these are for completeness."""
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": [py[0], list(py[1]), py[2]],
           "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
           "torch": _b64(torch.get_rng_state())}
    if torch.cuda.is_available():
        out["cuda"] = [_b64(s) for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(state: dict) -> None:
    v, keys, gauss = state["python"]
    random.setstate((v, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["cuda"]])


def flatten_optimizer(sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """{"state": {fqn: {k: tensor}}, "param_groups": [...]} -> safetensors tensors + JSON meta."""
    tensors, scalars = {}, {}
    for fqn, entry in sd["state"].items():
        for k, v in entry.items():
            if torch.is_tensor(v):
                tensors[f"state/{fqn}/{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{fqn}/{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict] = {}
    for key, t in tensors.items():
        if key.startswith("state/"):
            fqn, k = key[len("state/"):].rsplit("/", 1)
            state.setdefault(fqn, {})[k] = t.clone()  # own, aligned memory (not a view of the file buffer)
    for key, v in meta.get("scalars", {}).items():
        fqn, k = key.rsplit("/", 1)
        state.setdefault(fqn, {})[k] = v
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def _fsync_tree(root: Path) -> None:
    for p in root.iterdir():
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


@contextlib.contextmanager
def _sigterm_flag():
    """A threading.Event set by SIGTERM while the block runs (the previous handler is restored after it). Off the
    main thread, where Python cannot install handlers, the event is never set."""
    import signal
    import threading

    event = threading.Event()
    try:
        previous = signal.signal(signal.SIGTERM, lambda signum, frame: event.set())
    except ValueError:
        yield event
        return
    try:
        yield event
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---------------------------------------------------------------------- the trainer
@dataclass
class TrainResult:
    losses: dict[int, float]  # step (1-based) -> logged loss
    out: Path
    last_checkpoint: Path | None
    skipped: list
    steps_done: int


class Trainer:
    """Build everything from a TrainConfig (optionally with an in-memory dataset) and `run()`."""

    def __init__(self, cfg: TrainConfig, dataset=None):
        cfg.validate()
        self.cfg = cfg
        self.dist = init_distributed(cfg.device)
        self.out = Path(cfg.out)
        self.recipe = get_recipe(cfg.recipe, **cfg.recipe_overrides)
        self._seed_everything(cfg.seed)
        if not cfg.resume and find_latest(self.out) is not None:
            raise FileExistsError(f"{self.out / CKPT_DIR} already holds checkpoints: pass --resume to continue "
                                  "that run, or choose another --out")

        resume_from = find_latest(self.out) if cfg.resume else None
        if cfg.resume and resume_from is None and self.dist.main:
            print(f"xr0 train: --resume: no complete checkpoint under {self.out / CKPT_DIR}; starting fresh",
                  file=sys.stderr)
        self.resume_from = resume_from
        source = resume_from or (resolve_checkpoint(cfg.init) if cfg.init else None)
        # A checkpoint fixes the architecture, cameras and chunk length; a preset gets the dataset's cameras.
        policy = XR0Policy.from_pretrained(source) if source is not None else None
        config = policy.config if policy is not None else get_preset(cfg.preset)
        if policy is None and cfg.chunk_len:
            config.chunk_len = cfg.chunk_len
        if policy is None and cfg.image_size:
            config.image_size = tuple(cfg.image_size)

        # ---- data
        if dataset is None:
            if not cfg.data:
                raise ValueError("train config: data is required (--data PATH)")
            dataset = open_dataset(cfg.data, config.chunk_len, cfg.cameras, cfg.skip_bad)
        self.dataset = dataset
        data_cams = list(cfg.cameras) if cfg.cameras else dataset_cameras(dataset)
        if source is None:
            config.cameras = tuple(view_title(c) for c in data_cams)
        self.cam_map = camera_map(data_cams, config.cameras, explicit=bool(cfg.cameras))
        self.sampler = EpochSampler(len(dataset), cfg.seed,
                                    start_oversampled(dataset, cfg.start_frames, cfg.start_repeat))

        # ---- policy and normalisation
        if policy is None:
            # The dataset's frame rate is the robot's control rate (the executors and the server report it).
            fps = getattr(dataset, "fps", None) or config.control_hz
            policy = XR0Policy.from_preset(cfg.preset, seed=cfg.seed, cameras=config.cameras,
                                           chunk_len=config.chunk_len, image_size=config.image_size,
                                           control_hz=float(fps))
        if resume_from is None and (source is None or cfg.robot_type not in policy.robots):
            spec = robot_spec_from_data(dataset, policy.config, cfg.stats_samples, cfg.raw_state)
            robots = {} if source is None else dict(policy.robots)
            robots[cfg.robot_type] = spec
            policy.robots = robots
        policy.robot(cfg.robot_type)  # clear error if a resumed checkpoint lacks this robot type
        self.recipe.configure(policy)
        policy.to(self.dist.device)
        self.policy = policy
        self.heads = self.recipe.build_heads(policy, dataset)
        if self.heads is not None:
            if source is not None and (source / self.heads.FILE).is_file():
                self.heads.load_state_dict(type(self.heads).load(source).state_dict())
            self.heads.to(self.dist.device)
        self.vl = None
        if cfg.vl_data:
            from ..data.vl import VLDataset
            self.vl = VLDataset(cfg.vl_data, skip_bad=cfg.skip_bad)
            self.vl_sampler = EpochSampler(len(self.vl), cfg.seed + 1)

        # ---- wrapping and optimiser
        core = LossModule(policy, self.recipe, self.heads)
        self.core = core
        if cfg.fsdp:
            if self.dist.world == 1 and not dist.is_initialized():
                raise ValueError("--fsdp needs a process group: launch with torchrun")
            self.model = _shard(core)
        elif self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP
            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            # find_unused_parameters: the VLM's last layer MLP/o_proj and final norm feed no K/V the expert reads.
            try:
                self.model = DDP(core, device_ids=ids, find_unused_parameters=True, forward_sync_buffers=False)
            except TypeError:  # torch without forward_sync_buffers
                self.model = DDP(core, device_ids=ids, find_unused_parameters=True, broadcast_buffers=False)
        else:
            self.model = core
        named = [(n, p) for n, p in core.named_parameters()]
        self.groups = param_groups(named, cfg.weight_decay)
        self.params = [p for g in self.groups for p in g["params"]]
        if not self.params:
            raise ValueError(f"recipe {self.recipe.name}: no trainable parameters")
        self.optimizer = torch.optim.AdamW(self.groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                           weight_decay=cfg.weight_decay)
        self.amp_dtype = resolve_dtype(cfg.dtype, self.dist.device)
        self.step = 0
        self.data_position = 0
        if resume_from is not None:
            self._load_trainer_state(resume_from)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _seed_everything(seed: int) -> None:
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)

    def _streams(self, step: int, micro: int) -> tuple[random.Random, torch.Generator, torch.Generator]:
        """The batch's random streams: (Python RNG for the prefix length, torch generator for the prefix dropout),
        both shared by all ranks, and this rank's torch generator for t and noise.

        The prefix draw is shared across ranks (one global batch = one prefix, spec §6.5) also because it changes
        how many expert forwards run (re-weighting rollout): under FSDP every rank must run the same collectives.
        """
        a, b = np.random.SeedSequence([self.cfg.seed, step, micro]).generate_state(2, np.uint64)
        s = 0 if self.cfg.overfit_batch else step  # overfit: the same t and noise every step, prefixes still vary
        (c,) = np.random.SeedSequence([self.cfg.seed, s, micro, 1 + self.dist.rank]).generate_state(1, np.uint64)
        gen = lambda x: torch.Generator().manual_seed(int(x) & (2**63 - 1))  # noqa: E731
        return random.Random(int(a)), gen(b), gen(c)

    def _samples(self, positions: list[int]) -> list[dict]:
        from ..data.augment import ImageAugment

        aug = ImageAugment(train=self.cfg.augment)
        robot = self.policy.robot(self.cfg.robot_type)
        out = []
        for pos in positions:
            s = self.dataset[self.sampler[pos]]
            images = {self.cam_map[k]: v for k, v in s["images"].items() if k in self.cam_map}
            images = aug(images, np.random.default_rng([self.cfg.seed, 0xA06, pos]))
            s = {**s, "images": images}
            p = self.cfg.state_dropout  # a hidden state says nothing: the actions must come from the images
            if p and np.random.default_rng([self.cfg.seed, 0x57A7E, pos]).random() < p:
                s["state"] = robot.state_mean[:robot.state_dim].copy()
            out.append(s)
        return out

    def _vl_samples(self, step: int, micro: int) -> list[dict] | None:
        if self.vl is None:
            return None
        # VL : robot = 1 : 6 (spec §4) exactly over the run: micro-batch g gets floor((g+1)B/6) - floor(gB/6).
        g = (step * self.cfg.grad_accum + micro) * self.dist.world + self.dist.rank
        first, end = g * self.cfg.batch_size // 6, (g + 1) * self.cfg.batch_size // 6
        return [self.vl[self.vl_sampler[j]] for j in range(first, end)] or None

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.dist.device.type, dtype=self.amp_dtype)

    def _no_sync(self, last: bool):
        if last or self.dist.world == 1:
            return contextlib.nullcontext()
        if self.cfg.fsdp:
            self.model.set_requires_gradient_sync(False)
            return contextlib.nullcontext()
        return self.model.no_sync()

    # ------------------------------------------------------------------ one step
    def train_step(self) -> dict:
        cfg, d = self.cfg, self.dist
        lr = lr_at(self.step, cfg.lr, cfg.warmup, cfg.steps, cfg.min_lr)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        base = 0 if cfg.overfit_batch else self.data_position
        sums: dict[str, float] = {}  # every scalar the recipe's loss returns (loss, mse, freq, ...)
        prefix = []
        for m in range(cfg.grad_accum):
            last = m == cfg.grad_accum - 1
            if cfg.fsdp and last and d.world > 1:
                self.model.set_requires_gradient_sync(True)
            first = base + (m * d.world + d.rank) * cfg.batch_size
            samples = self._samples(list(range(first, first + cfg.batch_size)))
            batch = self.policy.make_batch(samples, cfg.robot_type)
            rng, shared, own = self._streams(self.step, m)
            opts = self.recipe.options(self.policy.config.chunk_len, rng, own, shared)
            prefix.append(opts.prefix_len)
            with self._no_sync(last):
                with self._autocast():
                    out = self.model(batch, opts, self._vl_samples(self.step, m))
                (out["loss"] / cfg.grad_accum).backward()
            for k, v in out.items():
                if torch.is_tensor(v) and v.numel() == 1:
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
        norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.data_position += cfg.batch_size * cfg.grad_accum * d.world
        return {"losses": sums, "lr": lr, "grad_norm": float(norm), "prefix_len": prefix}

    def _reduce(self, values: dict) -> dict:
        """Average the loss terms over ranks (for logging; every rank holds the same keys)."""
        if self.dist.world == 1:
            return values
        keys = sorted(values["losses"])
        t = torch.tensor([values["losses"][k] for k in keys], dtype=torch.float64, device=self.dist.device)
        dist.all_reduce(t)
        t /= self.dist.world
        return {**values, "losses": dict(zip(keys, t.tolist()))}

    # ------------------------------------------------------------------ the loop
    def run(self) -> TrainResult:
        cfg, d = self.cfg, self.dist
        from tqdm import tqdm

        if d.main:
            self.out.mkdir(parents=True, exist_ok=True)
            self._prepare_metrics()
        tracker = self._tracker() if d.main else None
        self.recipe.set_mode(self.policy)
        if self.heads is not None:
            self.heads.train()
        global_bs = cfg.batch_size * cfg.grad_accum * d.world
        end = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (d.main and cfg.progress), dynamic_ncols=True,
                   desc=f"xr0 train {self.recipe.name}")
        losses: dict[int, float] = {}
        last_ckpt = self.resume_from
        preempted = False
        with _sigterm_flag() as sigterm:
            while self.step < end and not preempted:
                t0 = time.perf_counter()
                values = self.train_step()
                dt = time.perf_counter() - t0
                log_now = self.step % cfg.log_every == 0 or self.step == end
                if log_now:
                    values = self._reduce(values)
                if d.main:
                    sps = global_bs / max(dt, 1e-9)
                    bar.update(1)
                    bar.set_postfix(loss=f"{values['losses']['loss']:.4f}", samples_s=f"{sps:.1f}")
                    if log_now:
                        row = {"step": self.step, **values["losses"], "lr": values["lr"],
                               "grad_norm": values["grad_norm"], "prefix_len": values["prefix_len"],
                               "samples_per_s": sps, "epoch": self.data_position / self.sampler.n, "time": time.time()}
                        losses[self.step] = values["losses"]["loss"]
                        with open(self.out / METRICS, "a") as f:
                            f.write(json.dumps(row) + "\n")
                        if tracker is not None:
                            tracker.log(row, step=self.step)
                preempted = self._agree(sigterm.is_set())  # SLURM / Kubernetes: SIGTERM, then SIGKILL later
                if self.step % cfg.save_every == 0 or self.step == cfg.steps or preempted:
                    last_ckpt = self.save_checkpoint()
        bar.close()
        skipped = list(getattr(self.dataset, "skipped", []))
        if d.main:
            if tracker is not None:
                tracker.finish()
            msg = f"xr0 train: {self.step}/{cfg.steps} steps"
            if preempted:
                msg = (f"xr0 train: SIGTERM: stopped at step {self.step}/{cfg.steps} with a checkpoint in "
                       f"{last_ckpt}; continue with --resume")
            if losses:
                msg += f", last loss {losses[max(losses)]:.4f}"
            if cfg.skip_bad or skipped:
                msg += f"; skipped {len(skipped)} bad episode(s)"
                msg += "".join(f"\n  episode {s.episode} ({s.file}): {s.reason}" for s in skipped)
            print(msg, file=sys.stderr)
        return TrainResult(losses, self.out, last_ckpt, skipped, self.step)

    def _agree(self, flag: bool) -> bool:
        """True on every rank if it is true on any (one rank's SIGTERM stops them all at the same step)."""
        if self.dist.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.dist.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def _prepare_metrics(self) -> None:
        """On resume, drop metric rows past the checkpoint (written by the interrupted run)."""
        path = self.out / METRICS
        if not path.is_file():
            return
        if self.resume_from is None and not self.cfg.resume:
            path.unlink()
            return
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= self.step:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue
        text = "".join(line + "\n" for line in keep)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    def _tracker(self):
        names = ["wandb", "trackio"] if self.cfg.tracker == "auto" else [] if self.cfg.tracker == "none" else [
            self.cfg.tracker]
        for name in names:
            try:
                module = __import__(name)
            except ImportError:
                if self.cfg.tracker != "auto":
                    print(f"xr0 train: --tracker {name}: not installed; logging to {METRICS} only", file=sys.stderr)
                continue
            module.init(project="xr0", config=dataclasses.asdict(self.cfg))
            return module
        return None

    # ------------------------------------------------------------------ checkpoints
    def _gather(self) -> tuple[dict | None, dict]:
        """Full model state (FSDP: gathered to rank 0) and the optimiser state keyed by parameter name."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, \
            get_optimizer_state_dict

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_sd = None
        if self.cfg.fsdp:
            model_sd = get_model_state_dict(self.core, options=opts)
        optim_sd = get_optimizer_state_dict(self.core, self.optimizer, options=opts)
        return model_sd, optim_sd

    def save_checkpoint(self) -> Path:
        """Write into a temp folder, rename it to step_XXXXXX, then repoint `latest` (a crash never leaves a
        half checkpoint where `latest` or a step_* name points)."""
        model_sd, optim_sd = self._gather()
        root = self.out / CKPT_DIR
        final = root / STEP_FMT.format(self.step)
        if self.dist.main:
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
            tmp.mkdir()
            self._write_policy(tmp, model_sd)
            if self.heads is not None:
                heads = {k[len("heads."):]: v for k, v in (model_sd or {}).items() if k.startswith("heads.")} \
                    if model_sd is not None else self.heads.state_dict()
                self.heads.save(tmp, heads)
            tensors, meta = flatten_optimizer(optim_sd)
            save_file(tensors, str(tmp / STATE_TENSORS))
            state = {"format": "xr0-trainer", "step": self.step, "data_position": self.data_position,
                     "dataset_len": self.sampler.n, "world_size": self.dist.world, "recipe": self.recipe.name,
                     "scheduler": {"kind": "warmup_cosine", "peak_lr": self.cfg.lr, "floor_lr": self.cfg.min_lr,
                                   "warmup": self.cfg.warmup, "total": self.cfg.steps,
                                   "last_lr": self.optimizer.param_groups[0]["lr"]},
                     "optimizer": meta, "rng": rng_state(),
                     "config": json.loads(json.dumps(dataclasses.asdict(self.cfg), default=str)),
                     "recipe_config": dataclasses.asdict(self.recipe)}
            (tmp / STATE_JSON).write_text(json.dumps(state))
            _fsync_tree(tmp)
            old = None
            if final.exists():  # same step saved before (a resumed run): swap, never delete first
                old = root / f".old-{final.name}-{uuid.uuid4().hex[:8]}"
                os.replace(final, old)
            os.replace(tmp, final)
            atomic_write(root / LATEST, lambda tmp: Path(tmp).write_text(final.name + "\n"))
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
            self._prune(root)
        self.dist.barrier()
        return final

    def _write_policy(self, folder: Path, model_sd: dict | None) -> None:
        if model_sd is None:
            self.policy.save_pretrained(folder)
            return
        # FSDP: materialise a CPU copy from the gathered full state dict, then use the normal writer.
        with torch.device("meta"):
            shadow = XR0Policy(self.policy.config, self.policy.robots)
        shadow.load_weights({k[len("policy."):]: v for k, v in model_sd.items() if k.startswith("policy.")})
        shadow.save_pretrained(folder)

    def _prune(self, root: Path) -> None:
        k = self.cfg.keep_checkpoints
        if not k:
            return
        steps = sorted(p for p in root.glob("step_*") if p.is_dir())
        for p in steps[:-k]:
            shutil.rmtree(p, ignore_errors=True)

    def _load_trainer_state(self, ckpt: Path) -> None:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        try:
            state = json.loads((ckpt / STATE_JSON).read_text())
            tensors = load_file(str(ckpt / STATE_TENSORS))
        except Exception as e:
            raise ValueError(f"{ckpt}: unreadable trainer state: {e}") from e
        if state.get("format") != "xr0-trainer":
            raise ValueError(f"{ckpt / STATE_JSON}: not an xr0 trainer state")
        if state.get("recipe") != self.recipe.name:
            print(f"xr0 train: resuming a {state.get('recipe')} checkpoint with recipe {self.recipe.name}",
                  file=sys.stderr)
        if state.get("dataset_len") != self.sampler.n:
            print(f"xr0 train: the dataset has {self.sampler.n} samples, the checkpoint saw {state.get('dataset_len')}"
                  "; the sample order will differ from the interrupted run", file=sys.stderr)
        optim_sd = unflatten_optimizer(tensors, state["optimizer"])
        # strict=False: parameters that never received a gradient (e.g. the VLM's last MLP) have no state.
        set_optimizer_state_dict(self.core, self.optimizer, optim_sd,
                                 options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=False,
                                                          strict=False))
        self.step = int(state["step"])
        self.data_position = int(state["data_position"])
        set_rng_state(state["rng"])
