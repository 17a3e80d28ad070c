"""Does the training-memory planner (xr0.train.memory) predict real training? Planned vs measured on this CPU.

For each preset (tiny, small) and setup (full = post-sync, frozen VLM = stage2, and, when the trainer has them,
LoRA and activation checkpointing) a fresh subprocess (OMP_NUM_THREADS=1, one at a time) builds the real Trainer
on an in-memory toy dataset and runs training steps in fp32. It measures the peak RSS increase over a baseline:

- The baseline is taken after the imports, the Trainer (model weights, dataset, tokenizer) and one warm-up training
  step whose optimiser state is then dropped (so one-time allocations of the first forward/backward, kernels and
  autograd threads, are in the baseline, and the weights, which the plan's `weights` column counts, are too).
  glibc is told to return every allocation above 64 KiB to the OS on free (MALLOC_MMAP_THRESHOLD_=65536) so RSS
  follows the live tensors, and the peak is reset after the baseline (/proc/self/clear_refs "5", which resets
  ru_maxrss: the build's own transient peak, e.g. the 151,936-row embedding initialisation, would hide it).
- measured = ru_maxrss over `--steps` steps (the first allocates the optimiser state) - the baseline RSS;
  planned = plan total - plan weights (the same terms: grads, optimiser state, activations, transients) with the
  planner's CPU settings (attn "cpu": per-tensor AdamW, torch's CPU flash-attention kernel), fp32, 1 process.
- Also reported: the optimiser state alone (RSS after the first step - baseline; the grads are freed by then) vs the
  planned state.

Prints one JSON line: per (preset, setup, batch) the medians over `--repeats` subprocesses of planned and measured
MiB and their ratio. docs/training.md ("Memory plan") quotes a run.

  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_memory.py                 # tiny + small, batch 8, 3 repeats
  .venv/bin/python benchmarks/train_memory.py --presets small --batches 4,16 --repeats 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

MIB = 2**20
MMAP_THRESHOLD = os.environ.get("XR0_MMAP_THRESHOLD", "65536")  # bytes; glibc returns larger blocks to the OS on free
ARENAS = os.environ.get("XR0_ARENAS", "1")  # one malloc arena: the autograd thread's frees join the main heap
INSTRUCTION = "pick up the red block on the left side of the table and put it in the blue bowl"
SETUPS = {  # name -> (recipe, TrainConfig fields beyond the recipe, plan tune, checkpointing)
    "full": ("post-sync", {}, "full", False),
    "frozen": ("stage2", {}, "frozen", False),
    "lora": ("post-sync", {"lora_rank": 16}, "lora", False),
    "full+ckpt": ("post-sync", {"grad_checkpointing": True}, "full", True),
    "lora+ckpt": ("post-sync", {"lora_rank": 16, "grad_checkpointing": True}, "lora", True),
}


# ---------------------------------------------------------------------- the child: one measured setup
def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _trim() -> None:
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


class ToyData:
    """An in-memory dataset of the trainer's sample layout: two cameras at the preset's size, a fixed instruction
    (so batches are not padded), 8-D state, 7-D actions."""

    fps = 10.0
    action_dim = 7

    def __init__(self, n: int, chunk_len: int, image_size: tuple[int, int]):
        import numpy as np

        self.cameras = ["base_view", "left_wrist_view"]
        rng = np.random.default_rng(0)
        h, w = image_size
        self.samples = [dict(images={c: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for c in self.cameras},
                             instruction=INSTRUCTION, state=rng.normal(size=8).astype(np.float32),
                             actions=rng.normal(size=(chunk_len, 7)).astype(np.float32),
                             action_valid=np.ones(chunk_len, bool)) for _ in range(n)]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict:
        return self.samples[i]


def child(args) -> dict:
    import torch

    from xr0.config import get_preset
    from xr0.train import TrainConfig, Trainer
    from xr0.train import memory as P

    torch.set_num_threads(1)
    recipe, extra, tune, ckpt = SETUPS[args.setup]
    preset = get_preset(args.preset)
    data = ToyData(max(16, 2 * args.batch), preset.chunk_len, preset.image_size)
    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(preset=args.preset, recipe=recipe, batch_size=args.batch, dtype="fp32", device="cpu",
                          out=out, steps=1000, warmup=1, augment=False, progress=False, seed=0, **extra)
        t0 = time.perf_counter()
        tr = Trainer(cfg, dataset=data)
        tr.recipe.set_mode(tr.policy.model)
        tr.train_step()  # warm-up: first-use allocations go into the baseline
        tr.optimizer.state.clear()  # ... but not its optimiser state
        _trim()
        reset = _reset_peak()
        base_rss, base_max = _status("VmRSS"), _maxrss()
        tr.train_step()
        _trim()
        after_first = _status("VmRSS")
        for _ in range(args.steps - 1):
            tr.train_step()
        peak = _maxrss()
        seconds = time.perf_counter() - t0
    model = tr.policy.model
    counts = P.count_parts(model)
    dims = P.Dims.from_config(tr.policy.config)
    batch = tr.policy.make_batch(tr._samples(list(range(args.batch))), cfg.robot_type)
    work = P.Workload(batch=args.batch, vlm_tokens=batch["input_ids"].shape[1],
                      patches=batch["pixel_values"].shape[0] // args.batch, images=len(data.cameras),
                      repeat=tr.recipe.repeat, padded=bool((batch["attention_mask"] == 0).any()))
    row = P.plan(counts, dims, work, P.TrainingSetup(tune, ckpt, "ddp", 1, "fp32", "cpu", extra.get("lora_rank", 16)))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return dict(preset=args.preset, setup=args.setup, batch=args.batch, steps=args.steps, peak_reset=reset,
                baseline_mib=base_rss / MIB, baseline_maxrss_mib=base_max / MIB,
                measured_mib=(peak - base_rss) / MIB, measured_state_mib=(after_first - base_rss) / MIB,
                planned_mib=(row.total - row.weights) / MIB, planned_state_mib=row.optimizer / MIB,
                planned_weights_mib=row.weights / MIB, plan_phase=row.phase,
                plan_full_mib={k: round(v / MIB, 2) for k, v in row.full.items()},
                trainable=trainable, planned_trainable=row.trainable, vlm_tokens=work.vlm_tokens,
                seconds=round(seconds, 1))


# ---------------------------------------------------------------------- the parent
def available_setups() -> list[str]:
    """The setups the trainer supports now (LoRA and checkpointing need TrainConfig fields being added)."""
    from xr0.train import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    return [name for name, (_, extra, _, _) in SETUPS.items() if set(extra) <= fields]


def run_child(preset: str, setup: str, batch: int, steps: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD,
               MALLOC_ARENA_MAX=ARENAS, TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, __file__, "--child", "--preset", preset, "--setup", setup, "--batch", str(batch),
           "--steps", str(steps)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--setups", default="all", help="comma list of " + ",".join(SETUPS) + " (all: what exists)")
    ap.add_argument("--batches", default="8")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--preset", help=argparse.SUPPRESS)
    ap.add_argument("--setup", help=argparse.SUPPRESS)
    ap.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    setups = available_setups() if args.setups == "all" else args.setups.split(",")
    results = []
    for preset in args.presets.split(","):
        for setup in setups:
            for batch in map(int, args.batches.split(",")):
                runs = [run_child(preset, setup, batch, args.steps) for _ in range(args.repeats)]
                med = lambda k: statistics.median(r[k] for r in runs)  # noqa: E731
                res = dict(preset=preset, setup=setup, batch=batch, repeats=len(runs),
                           planned_mib=round(med("planned_mib"), 2), measured_mib=round(med("measured_mib"), 2),
                           ratio=round(med("measured_mib") / med("planned_mib"), 3),
                           planned_state_mib=round(med("planned_state_mib"), 2),
                           measured_state_mib=round(med("measured_state_mib"), 2),
                           measured_all_mib=[round(r["measured_mib"], 1) for r in runs],
                           planned_weights_mib=round(med("planned_weights_mib"), 1),
                           baseline_mib=round(med("baseline_mib"), 1), plan_phase=runs[0]["plan_phase"],
                           plan_full_mib=runs[0]["plan_full_mib"], vlm_tokens=runs[0]["vlm_tokens"],
                           trainable=runs[0]["trainable"], planned_trainable=runs[0]["planned_trainable"],
                           peak_reset=all(r["peak_reset"] for r in runs))
                print(f"{preset:6s} {setup:10s} B={batch:<3d} planned {res['planned_mib']:8.1f} MiB  measured "
                      f"{res['measured_mib']:8.1f} MiB  ratio {res['ratio']:.2f}  (state {res['planned_state_mib']:.1f}"
                      f" vs {res['measured_state_mib']:.1f})", file=sys.stderr, flush=True)
                results.append(res)
    import torch

    print(json.dumps(dict(bench="train_memory", dtype="fp32", threads=1, steps=args.steps, torch=torch.__version__,
                          results=results)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
