"""Micro-batches for the trainer's steps, made ahead in worker processes (`xr0 train --num-workers N`).

One job: hand `Trainer.train_step` its micro-batches in exactly the order it consumes them. Micro-batch m of the
k-th step from here covers the global sample positions `base + (m * world + rank) * batch_size ...`, where base is
the run's `data_position` + k * (global batch), or 0 every step under `--overfit-batch`. A worker reads the samples,
decodes, augments, drops the state and runs `batch_from_samples` (XR0Policy.make_batch: tokenise, patchify,
normalise); the main process only trains.

Determinism: what a sample becomes depends only on its global position (the epoch order, the augmentation and the
state-dropout draws are seeded by it), never on which process made it, so the batches, and with them the losses,
are bit-identical to `--num-workers 0` (the in-process path, which does not use this module). Worker processes get
the dataset, sampler, processor, robot statistics, camera map and a few settings, not the model; they run one torch
thread, seed Python/NumPy/torch from (seed, rank, worker) for anything that is not position-seeded, and ignore
SIGTERM (the main process finishes its step, checkpoints and closes them; a worker whose parent dies exits).
"""

from __future__ import annotations

import multiprocessing
import random
import signal
import sys
import traceback
from dataclasses import dataclass

import numpy as np
import torch

from ..config import PolicyConfig
from ..policy import batch_from_samples
from ..processing import Processor, RobotSpec
from .inputs import EpochSampler


def read_samples(dataset, sampler: EpochSampler, positions, cam_map: dict[str, str], robot: RobotSpec, seed: int,
                 augment: bool, state_dropout: float) -> list[dict]:
    """The training samples at global positions `positions`: the epoch order's dataset sample, its cameras renamed
    to the model's, augmented and (with probability `state_dropout`) its state hidden, each seeded by the position."""
    from ..data.augment import ImageAugment

    aug = ImageAugment(train=augment)
    out = []
    for pos in positions:
        s = dataset[sampler[pos]]
        images = {cam_map[k]: v for k, v in s["images"].items() if k in cam_map}
        images = aug(images, np.random.default_rng([seed, 0xA06, pos]))
        s = {**s, "images": images}
        p = state_dropout  # a hidden state says nothing: the actions must come from the images
        if p and np.random.default_rng([seed, 0x57A7E, pos]).random() < p:
            s["state"] = robot.state_mean[:robot.state_dim].copy()
        out.append(s)
    return out


@dataclass
class BatchJob:
    """Everything a worker needs to turn sample positions into a training batch (no model)."""

    dataset: object
    sampler: EpochSampler
    config: PolicyConfig
    processor: Processor
    robot: RobotSpec
    cam_map: dict
    seed: int
    augment: bool
    state_dropout: float

    def samples(self, positions) -> list[dict]:
        return read_samples(self.dataset, self.sampler, positions, self.cam_map, self.robot, self.seed, self.augment,
                            self.state_dropout)

    def collate(self, samples: list[dict]) -> dict[str, torch.Tensor]:
        return batch_from_samples(samples, self.config, self.processor, self.robot)


def micro_batch_starts(start_position: int, steps: int, batch_size: int, grad_accum: int, world: int = 1,
                       rank: int = 0, overfit: bool = False) -> list[int]:
    """First global sample position of each micro-batch this rank trains on over `steps` steps, in order."""
    global_batch = batch_size * grad_accum * world
    out = []
    for k in range(steps):
        base = 0 if overfit else start_position + k * global_batch
        out += [base + (m * world + rank) * batch_size for m in range(grad_accum)]
    return out


class _Tasks(torch.utils.data.Dataset):
    """Runs in a worker: task (step, micro-batch, first position) -> {"first", "batch", "skipped"} or
    {"first", "error"}.

    Episodes the reader skips while serving the batch (`dataset.skipped`, readers built with skip_bad) travel back
    with it: the worker's copy of the dataset is not the one the trainer reports from. Exceptions come back as
    text (an exception object need not survive pickling), naming the sample or the batch's episodes.
    """

    def __init__(self, job: BatchJob, batch_size: int):
        self.job, self.batch_size = job, batch_size

    def __getitem__(self, task: tuple[int, int, int]) -> dict:
        step, micro, first = task
        skipped = getattr(self.job.dataset, "skipped", None)
        seen = len(skipped) if skipped is not None else 0
        where = ""
        try:
            samples = []
            for pos in range(first, first + self.batch_size):
                where = f"sample position {pos} (dataset index {self.job.sampler[pos]})"
                samples += self.job.samples([pos])
            where = "batch of " + ", ".join(f"episode {s.get('episode')} frame {s.get('frame')}" for s in samples)
            batch = self.job.collate(samples)
        except Exception as e:  # noqa: BLE001  re-raised in the main process by MicroBatches.next
            info = torch.utils.data.get_worker_info()
            return {"first": first, "error": {
                "type": type(e).__name__, "module": type(e).__module__, "message": str(e),
                "value_error": isinstance(e, ValueError), "traceback": traceback.format_exc(),
                "where": f"data worker {info.id if info is not None else '?'}, step {step}, micro-batch {micro}: "
                         f"{where}"}}
        return {"first": first, "batch": batch, "skipped": list(skipped[seen:]) if skipped is not None else []}


class _WorkerInit:
    """A worker's start: one torch thread, its own seeds (seed, rank, worker), SIGTERM left to the main process."""

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank = seed, rank

    def __call__(self, worker_id: int) -> None:
        try:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        except (ValueError, OSError):  # not the main thread / no such signal: nothing to ignore
            pass
        torch.set_num_threads(1)
        a, b, c = np.random.SeedSequence([self.seed, 0x10AD, self.rank, worker_id]).generate_state(3, np.uint64)
        random.seed(int(a))
        np.random.seed(int(b) % 2**32)
        torch.manual_seed(int(c) & (2**63 - 1))


def _as_is(item):
    return item


def _context():
    """fork where the platform has it (nothing to pickle, the dataset's pages are shared), else the default."""
    return multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None


def _worker_error(err: dict) -> Exception:
    """The worker's exception, re-created in the main process: same class where it can be built from a message
    (DataError), else ValueError for bad data and RuntimeError (with the worker's traceback) for bugs."""
    text = f"{err['message']} [{err['where']}]"
    cls = getattr(sys.modules.get(err["module"]), err["type"], None)
    exc = None
    if isinstance(cls, type) and issubclass(cls, Exception):
        try:
            exc = cls(text)
        except Exception:  # noqa: BLE001  a constructor that takes other arguments
            exc = None
        if exc is not None and str(exc) != text:
            exc = None
    if exc is None and not err["value_error"]:  # a bug: its traceback belongs in the message
        return RuntimeError(f"{err['type']}: {text}\nworker traceback:\n{err['traceback']}")
    exc = exc if exc is not None else ValueError(text)
    exc.add_note(f"raised in an xr0 train data worker:\n{err['traceback']}")
    return exc


class MicroBatches:
    """The micro-batches of `steps` steps from `start_position`, made by `num_workers` processes, `prefetch` ahead
    per worker (torch.utils.data.DataLoader, in order), pinned when `pin_memory` (a CUDA device).

    `first_step` (the trainer's step count) only labels errors. `next(first)` returns the next micro-batch and
    checks it starts at `first` (the trainer's own arithmetic); `close()` stops the workers (also when the run
    ends early: SIGTERM, an error). Skipped episodes reported by a worker are added to `job.dataset.skipped`
    here, once each.
    """

    def __init__(self, job: BatchJob, *, start_position: int, steps: int, batch_size: int, grad_accum: int,
                 world: int = 1, rank: int = 0, overfit: bool = False, num_workers: int = 2, prefetch: int = 2,
                 pin_memory: bool = False, seed: int = 0, first_step: int = 0):
        if num_workers < 1:
            raise ValueError(f"MicroBatches needs num_workers >= 1, got {num_workers}")
        self.job = job
        self.starts = micro_batch_starts(start_position, steps, batch_size, grad_accum, world, rank, overfit)
        self._served = 0
        tasks = [(first_step + i // grad_accum + 1, i % grad_accum, s) for i, s in enumerate(self.starts)]  # 1-based
        loader = torch.utils.data.DataLoader(
            _Tasks(job, batch_size), batch_size=None, sampler=tasks, collate_fn=_as_is,
            num_workers=num_workers, prefetch_factor=prefetch, pin_memory=pin_memory,
            worker_init_fn=_WorkerInit(seed, rank), multiprocessing_context=_context(),
            generator=torch.Generator().manual_seed(seed))  # its base-seed draw must not touch the global RNG
        self._it = iter(loader)

    def next(self, first: int) -> dict[str, torch.Tensor]:
        if self._it is None:
            raise RuntimeError("MicroBatches: closed")
        if self._served >= len(self.starts):
            raise RuntimeError(f"MicroBatches: all {len(self.starts)} planned micro-batches were served")
        try:
            item = next(self._it)
        except RuntimeError as e:
            if "DataLoader worker" not in str(e):
                raise
            raise RuntimeError(f"xr0 train: a data worker died ({e}); each worker holds its own decoded-video cache "
                               "(docs/training.md, Data): if memory ran out, use fewer --num-workers") from e
        self._served += 1
        if "error" in item:
            raise _worker_error(item["error"])
        if item["first"] != first:
            raise RuntimeError(f"MicroBatches: the trainer asked for the micro-batch at sample {first}, the loader "
                               f"made the one at {item['first']} (out of step)")
        skipped = getattr(self.job.dataset, "skipped", None)
        for s in item["skipped"] if skipped is not None else ():
            if s not in skipped:  # every worker has its own copy of the reader: the same episode may come twice
                skipped.append(s)
        return item["batch"]

    def close(self) -> None:
        it, self._it = self._it, None
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()

    def __enter__(self) -> "MicroBatches":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
