"""The training loop shared by every recipe, and its checkpoints (the parts live beside it: config, inputs, optim,
distributed, state).

Reproducibility is by construction, not by saving generator objects: every random draw of step s is made from
streams seeded by (seed, s, rank, micro-batch) and every sample's augmentation by (seed, sample position), so a
run resumed from a checkpoint replays exactly the losses of an uninterrupted run. Checkpoints hold no pickle:
weights, optimiser moments and RNG states are safetensors / JSON.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import random
import shutil
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..checkpoints import (CKPT_DIR, LATEST, STATE_JSON, STATE_TENSORS, STEP_FMT, atomic_write, find_latest,
                           resolve_checkpoint)
from ..config import PolicyConfig, get_preset
from ..data.lerobot_v3 import view_title
from ..policy import XR0Policy
from ..processing.images import ImageSpec
from ..processing.normalize import STAT_FIELDS, RobotSpec
from .config import TrainConfig
from .distributed import LossModule, init_distributed, shard
from .inputs import EpochSampler, camera_map, dataset_cameras, open_dataset, robot_spec_from_data, start_oversampled
from .loader import BatchJob, MicroBatches
from .optim import lr_at, param_groups, resolve_dtype
from .lora import ADAPTERS, DEFAULT_TARGETS, adapter_state, add_lora, load_adapters, lora_modules
from .recipes import freeze, get_recipe
from .state import flatten_optimizer, fsync_tree, rng_state, set_rng_state, unflatten_optimizer

METRICS = "metrics.jsonl"


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
class RobotPlan:
    """The trained robot type as the run starts: the policy config, the checkpoint's entry for it (None: a new one),
    its chunk length, image settings and (once the data are open) cameras; `given`: an in-memory policy."""

    config: PolicyConfig
    known: RobotSpec | None
    chunk_len: int
    image: ImageSpec
    given: bool
    cameras: tuple = ()


@dataclass
class TrainResult:
    losses: dict[int, float]  # step (1-based) -> logged loss
    out: Path
    last_checkpoint: Path | None
    skipped: list
    steps_done: int


class Trainer:
    """Build everything from a TrainConfig (optionally with an in-memory dataset, or a fresh run's in-memory policy,
    e.g. one built directly in bf16) and `run()`."""

    _loader: MicroBatches | None = None  # the data workers while run() runs with --num-workers N

    def __init__(self, cfg: TrainConfig, dataset=None, policy: XR0Policy | None = None):
        cfg.validate()
        self.cfg = cfg
        self.dist = init_distributed(cfg.device)
        self.out = Path(cfg.out)
        self.recipe = get_recipe(cfg.recipe, **cfg.recipe_overrides)
        self._seed_everything(cfg.seed)
        self.resume_from = self._resume_point()
        self.source = self.resume_from or (resolve_checkpoint(cfg.init) if cfg.init else None)
        policy, plan = self._start(policy)
        self._open_data(dataset, plan)
        self.policy = self._robot_types(policy, plan)
        self._prepare_model()
        self._extras()
        self._wrap_and_optimise()
        self.step = 0
        self.data_position = 0
        if self.resume_from is not None:
            self._load_trainer_state(self.resume_from)

    # ------------------------------------------------------------------ construction steps
    def _resume_point(self) -> Path | None:
        """The checkpoint a --resume continues from (None: a fresh start); a fresh run into a used --out is refused."""
        cfg = self.cfg
        if not cfg.resume and find_latest(self.out) is not None:
            raise FileExistsError(f"{self.out / CKPT_DIR} already holds checkpoints: pass --resume to continue "
                                  "that run, or choose another --out")
        resume_from = find_latest(self.out) if cfg.resume else None
        if cfg.resume and resume_from is None and self.dist.main:
            print(f"xr0 train: --resume: no complete checkpoint under {self.out / CKPT_DIR}; starting fresh",
                  file=sys.stderr)
        return resume_from

    def _start(self, policy: XR0Policy | None) -> tuple[XR0Policy | None, RobotPlan]:
        """The starting policy (the --init / --resume checkpoint, an in-memory one, or None for a preset built once
        the data are open) and what the trained robot type will be. A checkpoint fixes the architecture and, for
        its robot types, their chunk length, cameras and image settings; a new robot type (or a preset) gets
        --chunk-len / --image-size and the dataset's cameras."""
        cfg, source = self.cfg, self.source
        if policy is not None and source is not None:
            raise ValueError("train config: an in-memory policy starts a fresh run (no --init or --resume)")
        given = policy is not None
        if source is not None:
            policy = XR0Policy.from_pretrained(source)
        if policy is None and not cfg.preset:
            raise ValueError("train config: give --preset NAME (a fresh run: tiny | small | xr0-4b) or --init "
                             "CHECKPOINT (a fine-tune)")
        config = policy.config if policy is not None else get_preset(cfg.preset)
        known = policy.robots.get(cfg.robot_type) if source is not None else None
        if known is not None:
            for flag, value, have in (("--chunk-len", cfg.chunk_len, known.chunk_len),
                                      ("--image-size", cfg.image_size, known.image.size)):
                if value is not None and tuple(np.atleast_1d(value)) != tuple(np.atleast_1d(have)):
                    raise ValueError(f"{flag} {value}: robot type {cfg.robot_type!r} of {source} has {have}; its "
                                     f"chunk length and image settings come with its weights (train a new robot "
                                     f"type with --robot-type NAME to choose them)")
            chunk_len, image = known.chunk_len, known.image
        else:
            chunk_len = cfg.chunk_len or config.chunk_len
            if cfg.image_size:
                image = ImageSpec.fixed(cfg.image_size)
            elif source is not None:  # a new robot type sees images as the checkpoint's first one does
                image = next(iter(policy.robots.values())).image
            else:
                image = ImageSpec.fixed(config.image_size)
        if policy is None:
            config.chunk_len, config.image_size = chunk_len, image.size
        return policy, RobotPlan(config, known, chunk_len, image, given)

    def _open_data(self, dataset, plan: RobotPlan) -> None:
        """The dataset (at the robot type's chunk length), its camera map onto the robot type's cameras, the
        sampler; plan.cameras gets the cameras."""
        cfg = self.cfg
        if dataset is None:
            if not cfg.data:
                raise ValueError("train config: data is required (--data PATH)")
            dataset = open_dataset(cfg.data, plan.chunk_len, cfg.cameras, cfg.skip_bad)
        self.dataset = dataset
        data_cams = list(cfg.cameras) if cfg.cameras else dataset_cameras(dataset)
        if plan.known is not None:
            plan.cameras = plan.known.cameras
        elif self.source is None and plan.given:
            plan.cameras = plan.config.cameras
        else:
            plan.cameras = tuple(view_title(c) for c in data_cams)
        if self.source is None and not plan.given:
            plan.config.cameras = plan.cameras
        self.cam_map = camera_map(data_cams, plan.cameras, explicit=bool(cfg.cameras))
        self.sampler = EpochSampler(len(dataset), cfg.seed,
                                    start_oversampled(dataset, cfg.start_frames, cfg.start_repeat))

    def _robot_types(self, policy: XR0Policy | None, plan: RobotPlan) -> XR0Policy:
        """A preset's policy built; the trained robot type's statistics from the data (unless --keep-stats or a
        resume), beside the checkpoint's other robot types; the run says which."""
        cfg, source, resume_from = self.cfg, self.source, self.resume_from
        if policy is None:
            # The dataset's frame rate is the robot's control rate (the executors and the server report it).
            config = plan.config
            fps = getattr(self.dataset, "fps", None) or config.control_hz
            policy = XR0Policy.from_preset(cfg.preset, seed=cfg.seed, cameras=config.cameras,
                                           chunk_len=config.chunk_len, image_size=config.image_size,
                                           control_hz=float(fps))
        if resume_from is None and cfg.keep_stats and plan.known is None:
            raise ValueError(f"--keep-stats: {source or 'a fresh run'} has no statistics of robot type "
                             f"{cfg.robot_type!r} to keep" + (f" (it has {sorted(policy.robots)})" if source else ""))
        if resume_from is None and not cfg.keep_stats:
            spec = self._data_statistics(self.dataset, policy.config, plan.chunk_len)
            robots = {} if source is None else dict(policy.robots)
            if plan.known is not None:  # the data's statistics; what the robot type runs with comes with the weights
                spec = dataclasses.replace(plan.known, **{f: getattr(spec, f) for f in STAT_FIELDS})
            else:
                spec = dataclasses.replace(spec, cameras=plan.cameras, image=plan.image)
            robots[cfg.robot_type] = spec
            policy.robots = robots
        if self.dist.main and resume_from is None:
            if cfg.keep_stats:
                told = f"kept from {source} (--keep-stats)"
            elif plan.known is not None:
                told = f"from the data, replacing {source}'s (--keep-stats keeps those)"
            else:
                told = "from the data" + (f"; a new robot type beside {sorted(set(policy.robots) - {cfg.robot_type})}"
                                          if source is not None else "")
            robot = policy.robot(cfg.robot_type)
            print(f"xr0 train: robot type {cfg.robot_type!r} (T = {robot.chunk_len}, cameras {list(robot.cameras)}): "
                  f"statistics {told}", file=sys.stderr)
        policy.robot(cfg.robot_type)  # clear error if a resumed checkpoint lacks this robot type
        return policy

    def _prepare_model(self) -> None:
        """The recipe's freezing, --freeze / --lora-rank / --grad-checkpointing, fp32 master weights, the frozen
        weights held in the autocast dtype (their loaded values kept for saving), on the device."""
        cfg, model = self.cfg, self.policy.model
        self.recipe.configure(model)
        self._finetuning(model)
        for p in model.parameters():  # master weights are fp32 (a policy may come in another dtype)
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
        self.amp_dtype = resolve_dtype(cfg.dtype, self.dist.device)
        # Memory modes: frozen weights are held in the autocast dtype, which every matmul casts them to anyway
        # (cast before the move, so a 4B model never sits on the GPU in fp32).
        self.frozen_cast = bool(cfg.lora_rank or cfg.freeze) and self.amp_dtype is not None and not cfg.fsdp
        self._loaded: dict[str, torch.Tensor] = {}  # frozen weights as loaded, where the cast changed them (CPU)
        if self.frozen_cast:
            for name, p in model.named_parameters():
                if not p.requires_grad and p.dtype != self.amp_dtype:
                    self._loaded[name] = p.data.cpu()
                    p.data = p.data.to(self.amp_dtype)
        self.policy.to(self.dist.device)

    def _extras(self) -> None:
        """The recipe's extra heads (stage 1's choice heads, the env-state head) and stage 1's VL data."""
        cfg, source = self.cfg, self.source
        self.heads = self.recipe.build_heads(self.policy.model, self.dataset)
        if self.heads is not None:
            if source is not None and (source / self.heads.FILE).is_file():
                self.heads.load_state_dict(type(self.heads).load(source).state_dict())
            self.heads.to(self.dist.device)
        self.vl = None
        if cfg.vl_data:
            from ..data.vl import VLDataset
            self.vl = VLDataset(cfg.vl_data, skip_bad=cfg.skip_bad)
            self.vl_sampler = EpochSampler(len(self.vl), cfg.seed + 1)

    def _wrap_and_optimise(self) -> None:
        """The loss module, wrapped for FSDP2 or DDP when distributed, and AdamW over its parameter groups."""
        cfg = self.cfg
        core = LossModule(self.policy.model, self.recipe, self.heads)
        self.core = core
        if cfg.fsdp:
            if self.dist.world == 1 and not dist.is_initialized():
                raise ValueError("--fsdp needs a process group: launch with torchrun")
            self.model = shard(core, self.amp_dtype)
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

    # ------------------------------------------------------------------ helpers
    def _data_statistics(self, dataset, config, chunk_len: int):
        """robot_spec_from_data, computed by rank 0 only and sent to the others (tensors, no pickle)."""
        cfg = self.cfg
        distributed = self.dist.world > 1 and dist.is_initialized()
        spec = None
        if self.dist.main or not distributed:
            spec = robot_spec_from_data(dataset, config, cfg.stats_samples, cfg.raw_state, chunk_len)
        if not distributed:
            return spec
        T, D, Ds = chunk_len, config.action_dim, config.state_dim
        sizes = [T * D, T * D, D, Ds, Ds, 2]
        flat = torch.zeros(sum(sizes), dtype=torch.float64)
        if spec is not None:
            flat = torch.from_numpy(np.concatenate([np.ravel(a).astype(np.float64) for a in (
                spec.action_mean, spec.action_std, spec.action_mask, spec.state_mean, spec.state_std,
                [spec.action_dim, spec.state_dim])]))
        device = self.dist.device if self.dist.device.type == "cuda" else torch.device("cpu")
        flat = flat.to(device)
        dist.broadcast(flat, src=0)
        parts = torch.split(flat.cpu(), sizes)
        arrays = [p.numpy().astype(np.float32) for p in parts[:5]]
        return RobotSpec(arrays[0].reshape(T, D), arrays[1].reshape(T, D), arrays[2], arrays[3], arrays[4],
                         int(parts[5][0]), int(parts[5][1]))

    def _finetuning(self, model) -> None:
        """--freeze, --lora-rank (a resumed LoRA run gets its frozen base back from where the run started and its
        adapters from the checkpoint) and --grad-checkpointing."""
        cfg = self.cfg
        freeze(model, cfg.freeze)
        if cfg.lora_rank:
            add_lora(model, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets or DEFAULT_TARGETS, seed=cfg.seed)
            for name, p in model.named_parameters():  # the VLM trains through its adapters only
                if name.startswith("vlm.") and not name.endswith((".lora_A", ".lora_B")):
                    p.requires_grad_(False)
            if self.resume_from is not None:
                self._restore_lora(model)
        if cfg.grad_checkpointing:
            model.set_activation_checkpointing(True)

    def _restore_lora(self, model) -> None:
        """The checkpoint's weights are merged (W + BA): the adapted linears get W back from the run's start (its
        --init, or the preset's seeded initialisation), the adapters come from the checkpoint."""
        ckpt = self.resume_from
        if not (ckpt / ADAPTERS).is_file():
            raise ValueError(f"{ckpt} has no {ADAPTERS}: it is not from a LoRA run (drop --lora-rank to resume it)")
        init = json.loads((ckpt / STATE_JSON).read_text()).get("config", {}).get("init")
        base = XR0Policy.from_pretrained(init) if init else XR0Policy.from_preset(self.cfg.preset, seed=self.cfg.seed)
        weights = base.model.state_dict()
        with torch.no_grad():
            for name, m in lora_modules(model).items():
                m.weight.copy_(weights[f"{name}.weight"])
        load_adapters(model, load_file(str(ckpt / ADAPTERS)))

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

    @functools.cached_property
    def batch_job(self) -> BatchJob:
        """Sample positions -> a training batch: the one recipe the in-process path and the data workers share."""
        cfg = self.cfg
        return BatchJob(self.dataset, self.sampler, self.policy.config, self.policy.processor,
                        self.policy.robot(cfg.robot_type), dict(self.cam_map), cfg.seed, cfg.augment, cfg.state_dropout)

    def _samples(self, positions) -> list[dict]:
        return self.batch_job.samples(positions)

    @contextlib.contextmanager
    def _data_workers(self, end: int):
        """--num-workers N: the micro-batches of steps [self.step, end) made ahead in N processes (xr0.train.loader)
        for the block; without workers, train_step makes each one in process when it needs it."""
        cfg, d = self.cfg, self.dist
        if not cfg.num_workers or self.step >= end:
            yield
            return
        with MicroBatches(self.batch_job, start_position=self.data_position, steps=end - self.step,
                          batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, world=d.world, rank=d.rank,
                          overfit=cfg.overfit_batch, num_workers=cfg.num_workers, prefetch=cfg.prefetch,
                          pin_memory=d.device.type == "cuda", seed=cfg.seed, first_step=self.step) as loader:
            self._loader = loader
            try:
                yield
            finally:
                self._loader = None

    def _vl_batch(self, step: int, micro: int) -> dict | None:
        if self.vl is None:
            return None
        # VL : robot = 1 : 6 (spec §4) exactly over the run: micro-batch g gets floor((g+1)B/6) - floor(gB/6).
        g = (step * self.cfg.grad_accum + micro) * self.dist.world + self.dist.rank
        first, end = g * self.cfg.batch_size // 6, (g + 1) * self.cfg.batch_size // 6
        samples = [self.vl[self.vl_sampler[j]] for j in range(first, end)]
        return self.policy.processor.vl_batch(samples) if samples else None

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
            if self._loader is not None:  # --num-workers: made ahead, in this order, by the data workers
                batch = self._loader.next(first)
            else:
                batch = self.batch_job.collate(self.batch_job.samples(range(first, first + cfg.batch_size)))
            rng, shared, own = self._streams(self.step, m)
            opts = self.recipe.options(self.policy.robot(self.cfg.robot_type).chunk_len, rng, own, shared)
            prefix.append(opts.prefix_len)
            with self._no_sync(last):
                with self._autocast():
                    out = self.model(batch, opts, self._vl_batch(self.step, m))
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
        self.recipe.set_mode(self.policy.model)
        if self.heads is not None:
            self.heads.train()
        global_bs = cfg.batch_size * cfg.grad_accum * d.world
        end = cfg.steps if cfg.stop_after is None else min(cfg.steps, cfg.stop_after)
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not (d.main and cfg.progress), dynamic_ncols=True,
                   desc=f"xr0 train {self.recipe.name}")
        losses: dict[int, float] = {}
        last_ckpt = self.resume_from
        preempted = False
        with _sigterm_flag() as sigterm, self._data_workers(end):  # workers stop with the loop (SIGTERM included)
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
            if self.cfg.lora_rank:
                save_file(adapter_state(self.policy.model), str(tmp / ADAPTERS))
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
            fsync_tree(tmp)
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

    @contextlib.contextmanager
    def weights_as_loaded(self):
        """The frozen weights that training holds in a lower precision, put back as they were loaded while the
        block runs (what a checkpoint saves; LoRA then merges its update into them in fp32)."""
        params = dict(self.policy.model.named_parameters())
        held = {name: params[name].data for name in self._loaded}
        try:
            for name, value in self._loaded.items():
                params[name].data = value
            yield
        finally:
            for name, value in held.items():
                params[name].data = value

    def _write_policy(self, folder: Path, model_sd: dict | None) -> None:
        if model_sd is None:  # (LoRA: the model's state dict holds the merged weights)
            with self.weights_as_loaded():
                self.policy.save_pretrained(folder, dtype=torch.float32 if self.frozen_cast else None)
            return
        # FSDP: materialise a CPU copy from the gathered full state dict, then use the normal writer.
        state = {k[len("model."):]: v for k, v in model_sd.items() if k.startswith("model.")}
        XR0Policy.from_state(self.policy.config, self.policy.robots, state,
                             tokenizer=self.policy.tokenizer).save_pretrained(folder)

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
