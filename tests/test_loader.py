"""`xr0 train --num-workers N` (xr0.train.loader): worker processes make the same micro-batches, in the same order,
as the in-process path (bit-exact batches and losses, across a resume), carry skipped episodes back to the main
process and surface a worker's error. Tiny preset, batch 2, a 2-episode LeRobot v3 dataset, a few steps."""

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest
import torch

from xr0.data import DataError, Skipped
from xr0.data.lerobot_v3 import LeRobotV3Dataset, LeRobotV3Writer
from xr0.train import TrainConfig, Trainer, find_latest
from xr0.train import cli as train_cli
from xr0.train.inputs import EpochSampler
from xr0.train.loader import micro_batch_starts

pytestmark = pytest.mark.usefixtures("one_thread")

T = 10  # the tiny preset's chunk length


def _write_dataset(root):
    with LeRobotV3Writer(root, 10, {"front": (32, 32)}, 8, 7, robot_type="toy") as w:
        for e, n in enumerate((16, 14)):
            rng = np.random.default_rng(e)
            images = {"front": rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)}
            w.add_episode(images, rng.normal(size=(n, 8)), rng.normal(size=(n, 7)), f"task {e}")
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _write_dataset(tmp_path_factory.mktemp("lerobot") / "toy")


def config(data, out, **kw):
    base = dict(preset="tiny", recipe="stage2", data=str(data), out=str(out), robot_type="toy", steps=4, batch_size=2, grad_accum=2,
                lr=1e-3, warmup=1, save_every=2, log_every=1, dtype="fp32", seed=0, progress=False,
                state_dropout=0.5)
    return TrainConfig(**{**base, **kw})


class Recorder:
    """Stands in for Trainer.model: keeps a copy of every micro-batch the model is given."""

    def __init__(self, module):
        self.module, self.batches = module, []

    def __call__(self, batch, opts, vl_batch=None):
        self.batches.append({k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()})
        return self.module(batch, opts, vl_batch)


def train(cfg, dataset=None):
    tr = Trainer(cfg, dataset)
    tr.model = rec = Recorder(tr.model)
    result = tr.run()
    return tr, rec.batches, result


def same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            assert (x[k] is None and y[k] is None) or torch.equal(x[k], y[k]), k


def losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def in_process(data, tmp_path_factory):
    """The reference: 4 steps of 2 micro-batches loaded in the training process (--num-workers 0)."""
    out = tmp_path_factory.mktemp("w0")
    tr, batches, result = train(config(data, out))
    assert tr._loader is None and len(batches) == 8
    return out, batches, result, {k: v.detach().clone() for k, v in tr.core.named_parameters()}, torch.get_rng_state()


def test_workers_give_the_in_process_batches_and_losses(data, tmp_path, in_process):
    ref_out, ref_batches, ref_result, ref_params, ref_rng = in_process
    tr, batches, result = train(config(data, tmp_path / "w2", num_workers=2, prefetch=3))
    assert torch.equal(torch.get_rng_state(), ref_rng)  # the loader draws nothing from the global RNG (checkpointed)
    same_batches(ref_batches, batches)
    assert result.losses == ref_result.losses and losses(tmp_path / "w2") == losses(ref_out)
    assert all(torch.equal(v, ref_params[k]) for k, v in tr.core.named_parameters())
    assert tr._loader is None  # closed with the loop
    assert not multiprocessing.active_children()  # the workers were joined


def test_resume_with_workers_replays_the_in_process_run(data, tmp_path, in_process):
    ref_out, ref_batches = in_process[:2]
    out = tmp_path / "run"
    _, first, result = train(config(data, out, num_workers=2, stop_after=2))
    assert result.steps_done == 2 and find_latest(out).name == "step_000002"
    tr, rest, _ = train(config(data, out, num_workers=2, resume=True))
    assert tr.step == 4 and tr.data_position == 4 * 2 * 2
    same_batches(ref_batches, first + rest)
    assert losses(out) == losses(ref_out)


def test_sigterm_to_every_process_checkpoints_and_resumes_identically(data, tmp_path, in_process):
    """SLURM signals every process of the job: the workers ignore SIGTERM, the trainer finishes step 2, saves it and
    closes them; --resume (with workers) then replays the in-process run."""
    import os
    import signal

    ref_out = in_process[0]
    out = tmp_path / "run"
    tr = Trainer(config(data, out, num_workers=2))
    step, workers, ignored = tr.train_step, [], []

    def step_then_sigterm():
        values = step()
        if tr.step == 2:
            workers.extend(multiprocessing.active_children())
            ignored.extend(ignores_sigterm(p.pid) for p in workers)
            for pid in [p.pid for p in workers] + [os.getpid()]:
                os.kill(pid, signal.SIGTERM)
        return values

    def ignores_sigterm(pid):  # Linux: the SigIgn mask of /proc/PID/status (fork also copies the trainer's handler)
        status = Path(f"/proc/{pid}/status")
        if not status.is_file():
            return True
        mask = next(line for line in status.read_text().splitlines() if line.startswith("SigIgn:")).split()[1]
        return bool(int(mask, 16) >> (signal.SIGTERM - 1) & 1)

    tr.train_step = step_then_sigterm
    result = tr.run()
    assert len(workers) == 2 and all(ignored) and not multiprocessing.active_children()
    assert result.steps_done == 2 and result.last_checkpoint.name == "step_000002"
    Trainer(config(data, out, num_workers=2, resume=True)).run()
    assert losses(out) == losses(ref_out)


def test_micro_batch_order_matches_train_step():
    # resume at position 40, 2 ranks, accumulation 2: rank 1 takes the 2nd and 4th slice of each global batch
    assert micro_batch_starts(40, 2, 3, 2, world=2, rank=1) == [43, 49, 55, 61]
    assert micro_batch_starts(0, 3, 2, 2, overfit=True) == [0, 2] * 3
    assert micro_batch_starts(12, 2, 2, 1) == [12, 14]


class Flaky:
    """A reader whose sample `bad` is corrupt: with skip_bad it is skipped (listed in `skipped`, the next sample
    served instead) the way readers do, else a DataError naming the episode."""

    def __init__(self, inner, bad: int, skip: bool):
        self.inner, self.bad, self.skip, self.skipped = inner, bad, skip, []
        self.reads = []  # the samples this copy of the reader served (each worker has its own)

    def __len__(self):
        return len(self.inner)

    def __getattr__(self, name):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __getitem__(self, i):
        self.reads.append(i)
        if i == self.bad:
            if not self.skip:
                raise DataError("videos/file-001.mp4: episode 1: cannot decode frame 3")
            if Skipped(1, "file-001.mp4", "cannot decode") not in self.skipped:
                self.skipped.append(Skipped(1, "file-001.mp4", "cannot decode"))
            i = (i + 1) % len(self)
        return self.inner[i]


def test_skips_in_workers_are_reported_by_the_main_process(data, tmp_path, capsys):
    inner = LeRobotV3Dataset(data, T)
    bad = EpochSampler(len(inner), 0)[1]  # read by the first micro-batch
    cfg = config(data, tmp_path / "skip", num_workers=2, steps=2, grad_accum=1, skip_bad=True)
    dataset = Flaky(inner, bad, skip=True)
    _, _, result = train(cfg, dataset)
    assert result.skipped == [Skipped(1, "file-001.mp4", "cannot decode")] == dataset.skipped
    assert dataset.reads == []  # every sample was read in a worker's copy of the reader
    assert "skipped 1 bad episode(s)\n  episode 1 (file-001.mp4): cannot decode" in capsys.readouterr().err


def test_worker_error_names_the_sample_and_does_not_hang(data, tmp_path):
    inner = LeRobotV3Dataset(data, T)
    bad = EpochSampler(len(inner), 0)[5]  # in step 3 (positions 4, 5): steps 1 and 2 train first
    cfg = config(data, tmp_path / "err", num_workers=2, steps=3, grad_accum=1)
    with pytest.raises(DataError, match=rf"episode 1: cannot decode frame 3 \[data worker 0, step 3, micro-batch 0: "
                                        rf"sample position 5 \(dataset index {bad}\)\]"):
        train(cfg, Flaky(inner, bad, skip=False))


def test_flags():
    parser = train_cli.argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    cfg = train_cli.config_from_args(parser.parse_args(["--num-workers", "4", "--prefetch", "3"]))
    assert (cfg.num_workers, cfg.prefetch) == (4, 3)
    assert (TrainConfig().num_workers, TrainConfig().prefetch) == (0, 2)
    for bad in (dict(num_workers=-1), dict(prefetch=0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad).validate()
