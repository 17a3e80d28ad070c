"""`xr0 eval libero`: the official LIBERO protocol (see xr0.sim.libero), resumable, with optional worker processes.

Also runs standalone: `python -m xr0.sim.libero_cli --suite libero_spatial --checkpoint DIR ...`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import subprocess
import sys
import time

from ..config import add_runtime_arguments, runtime_settings
from .common import add_noise_seed_argument, noise_seeds
from .libero import (
    ASYNC_LATENCY_MS, SUITES, TRIALS, WAIT_STEPS, LiberoNotInstalled, LiberoTaskEnv, Settings, append_record,
    check_run_file, libero_policy, pending, read_records, require_libero, run_episode, split_work, suite_tasks, summarize,
)

DTYPE_CHOICES = ("auto", "bf16", "fp32", "keep")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", help="an xr0 or official Xiaomi-Robotics-0 checkpoint folder (e.g. -LIBERO)")
    src.add_argument("--preset", help="random-init preset instead of a checkpoint (harness smoke, e.g. tiny)")
    p.add_argument("--suite", choices=sorted(SUITES), help="LIBERO suite")
    p.add_argument("--tasks", default=None, help="comma-separated task ids (default: every task of the suite)")
    p.add_argument("--episodes", type=int, default=TRIALS, help=f"trials per task, init states 0..K-1 (default {TRIALS})")
    p.add_argument("--max-steps", type=int, default=None,
                   help=f"policy steps per episode (default: the suite's {'/'.join(map(str, SUITES.values()))})")
    p.add_argument("--executor", choices=("sync", "async"), default="sync",
                   help="sync = the official protocol; async = spec §7.2 with a simulated latency")
    p.add_argument("--replan", type=int, default=None,
                   help="actions executed per chunk (default: the whole chunk = 10 for sync, T - 10 for async)")
    p.add_argument("--latency-ms", type=float, default=None,
                   help=f"simulated inference latency (default 0 for sync, {ASYNC_LATENCY_MS:g} for async)")
    p.add_argument("--wait-steps", type=int, default=WAIT_STEPS, help="no-op steps after each reset")
    p.add_argument("--workers", type=int, default=1, help="episodes run in this many processes (one policy each)")
    p.add_argument("--video", default=None, help="write one MP4 per episode under this folder")
    p.add_argument("--out", default=None, help="results folder (default runs/libero/<suite>); re-running resumes")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, help="auto = bf16 on GPU, as stored on CPU")
    add_noise_seed_argument(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--worker-spec", default=None, help=argparse.SUPPRESS)
    add_runtime_arguments(p)


# ---------------------------------------------------------------------------------------------- policy
def load_policy(checkpoint: str | None, preset: str | None, device: str = "auto", dtype: str = "auto",
                runtime: dict | None = None):
    from ..model.dtypes import resolve_device, torch_dtype
    from ..policy import XR0Policy

    dev = resolve_device(device)
    # auto: bf16 on a GPU, the checkpoint's own dtype on the CPU; keep: always the checkpoint's
    dt = None if dtype == "keep" or (dtype == "auto" and not dev.startswith("cuda")) else \
        torch_dtype("bf16" if dtype == "auto" else dtype)
    if preset:
        policy = XR0Policy.from_preset(preset, device=dev, dtype=dt)
        return policy.set_runtime(**(runtime or {}))
    return XR0Policy.from_pretrained(checkpoint, device=dev, dtype=dt, **(runtime or {}))


def run_pairs(settings: Settings, pairs: list[tuple[int, int]], policy, out: pathlib.Path, video: str | None,
              on_record=None, worker: int = 0, infos=None) -> None:
    """Run (task, episode) pairs in order, a new env per trial (seeded as the official client), appending a record
    after every episode."""
    import numpy as np

    np.random.seed(settings.seed)
    tasks = {t.task_id: t for t in (infos or suite_tasks(settings.suite))}
    chunk_policy = libero_policy(policy, seed_of_call=noise_seeds(settings.noise_seed))
    for t, e in pairs:
        env = LiberoTaskEnv(tasks[t], settings.resolution, settings.seed)
        try:
            rec = run_episode(env, chunk_policy, e, settings.max_steps, settings.executor, settings.replan,
                              settings.latency_ms, settings.wait_steps, pathlib.Path(video) if video else None)
        finally:
            env.close()
        rec["worker"] = worker
        append_record(out, rec)
        if on_record is not None:
            on_record(rec)


def _worker_main(spec_file: str) -> int:
    spec = json.loads(pathlib.Path(spec_file).read_text())
    settings = Settings(**spec["settings"])
    policy = load_policy(settings.checkpoint, settings.preset, spec["device"], spec["dtype"], settings.runtime)
    run_pairs(settings, [tuple(p) for p in spec["pairs"]], policy, pathlib.Path(spec["out"]), spec["video"],
              worker=spec["worker"])
    return 0


def _spawn(settings: Settings, shards, args, out: pathlib.Path, bar) -> list[str]:
    """Run shards in worker processes; the parent follows episodes.jsonl for the progress bar. Returns errors."""
    import torch

    n_gpu = torch.cuda.device_count() if args.device in ("auto", "cuda") else 0
    procs = []
    for i, shard in enumerate(shards):
        device = f"cuda:{i % n_gpu}" if n_gpu else ("cpu" if args.device == "auto" else args.device)
        spec = {"settings": settings.to_dict(), "pairs": shard, "out": str(out), "video": args.video,
                "device": device, "dtype": args.dtype, "worker": i}
        spec_file = out / f"worker{i}.json"
        spec_file.write_text(json.dumps(spec))
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // len(shards))))
        log = open(out / f"worker{i}.log", "w")
        procs.append((subprocess.Popen([sys.executable, "-m", "xr0.sim.libero_cli", "--worker-spec", str(spec_file)],
                                       stdout=log, stderr=subprocess.STDOUT, env=env), log, i))
    wanted = {(settings.suite, t, e) for shard in shards for t, e in shard}
    seen: set = set()
    errors = []
    try:
        while True:
            new = [r for r in read_records(out) if (r["suite"], r["task_id"], r["episode"]) in wanted - seen]
            for r in new:
                seen.add((r["suite"], r["task_id"], r["episode"]))
                bar.update(1)
            if all(p.poll() is not None for p, _, _ in procs):
                break
            time.sleep(1.0)
    finally:
        for p, log, i in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
            log.close()
            if p.returncode:
                tail = (out / f"worker{i}.log").read_text()[-2000:]
                errors.append(f"worker {i} exited with {p.returncode}; log tail:\n{tail}")
    return errors


# ---------------------------------------------------------------------------------------------- entry points
def _parse_tasks(text: str | None, n: int) -> list[int]:
    if text is None:
        return list(range(n))
    try:
        tasks = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError as e:
        raise ValueError(f"--tasks must be comma-separated integers, got {text!r}") from e
    bad = [t for t in tasks if not 0 <= t < n]
    if bad or not tasks:
        raise ValueError(f"--tasks {text!r}: task ids must be in 0..{n - 1}")
    return tasks


def evaluate(args) -> dict:
    """Run (or resume) the evaluation described by `args`; returns the summary that is also written to results.json."""
    require_libero()
    if not (args.checkpoint or args.preset):
        raise ValueError("give --checkpoint DIR (or --preset NAME for a random-init smoke run)")
    if args.suite is None:
        raise ValueError(f"--suite is required: one of {sorted(SUITES)}")
    if not 1 <= args.episodes <= TRIALS:
        raise ValueError(f"--episodes must be in 1..{TRIALS} (the suite has {TRIALS} init states per task)")
    if args.workers < 1:
        raise ValueError("--workers must be >= 1")
    if args.max_steps is not None and args.max_steps < 1:
        raise ValueError("--max-steps must be >= 1")
    infos = suite_tasks(args.suite)
    tasks = _parse_tasks(args.tasks, len(infos))
    checkpoint = args.checkpoint  # a local path is made absolute (workers run elsewhere); "embedded" / repo ids stay
    if checkpoint and pathlib.Path(checkpoint).exists():
        checkpoint = str(pathlib.Path(checkpoint).resolve())
    settings = Settings(suite=args.suite, checkpoint=checkpoint,
                        preset=args.preset, max_steps=args.max_steps or SUITES[args.suite], executor=args.executor,
                        replan=args.replan, latency_ms=args.latency_ms, wait_steps=args.wait_steps,
                        runtime=runtime_settings(args), noise_seed=args.noise_seed)
    noise_seeds(args.noise_seed)  # a bad value is named before any episode runs
    out = pathlib.Path(args.out or f"runs/libero/{args.suite}")
    check_run_file(out, settings)
    todo = pending(read_records(out), args.suite, tasks, args.episodes)
    t0 = time.perf_counter()
    errors: list[str] = []
    if todo:
        from tqdm import tqdm

        with tqdm(total=len(todo), desc=f"libero {args.suite}", unit="ep", file=sys.stderr) as bar:
            shards = split_work(todo, args.workers)
            if len(shards) == 1:
                successes = []

                def tick(rec):
                    successes.append(rec["success"])
                    bar.update(1)
                    bar.set_postfix(success=f"{sum(successes)}/{len(successes)}")

                policy = load_policy(args.checkpoint, args.preset, args.device, args.dtype, settings.runtime)
                run_pairs(settings, shards[0], policy, out, args.video, on_record=tick, infos=infos)
            else:
                errors = _spawn(settings, shards, args, out, bar)
    records = read_records(out)
    summary = summarize(records, args.suite, tasks, args.episodes, {t.task_id: t.name for t in infos})
    todo_set = set(todo)
    done_now = [r for r in records if (r["task_id"], r["episode"]) in todo_set]
    summary.update(settings=settings.to_dict(), out=str(out), episodes_per_task=args.episodes,
                   new_episodes=len(done_now), wall_s=round(time.perf_counter() - t0, 2), errors=errors)
    if done_now:
        inf = sum(r["inferences"] for r in done_now)
        summary["timing"] = {"mean_episode_s": round(sum(r["wall_s"] for r in done_now) / len(done_now), 2),
                             "mean_reset_s": round(sum(r["reset_s"] for r in done_now) / len(done_now), 2),
                             "mean_inference_s": round(sum(r["policy_s"] for r in done_now) / max(inf, 1), 3),
                             "mean_steps": round(sum(r["steps"] for r in done_now) / len(done_now), 1)}
    (out / "results.json").write_text(json.dumps(summary, indent=2))
    return summary


def run(args) -> int:
    if getattr(args, "worker_spec", None):
        return _worker_main(args.worker_spec)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # LIBERO prints progress notes on stdout; keep it for results
            summary = evaluate(args)
    except LiberoNotInstalled as e:
        print(f"xr0 eval libero: {e}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as e:
        print(f"xr0 eval libero: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary))
    else:
        rate = summary["success_rate"]
        print(f"{summary['suite']}: {summary['successes']}/{summary['episodes']} "
              f"({'n/a' if rate is None else f'{100 * rate:.1f}%'}) -> {summary['out']}/results.json")
        for t, v in summary["tasks"].items():
            r = v["success_rate"]
            print(f"  task {t:>2} {'n/a' if r is None else f'{100 * r:5.1f}%'}  ({v['successes']}/{v['episodes']})  {v['name']}")
    for err in summary["errors"]:
        print(err, file=sys.stderr)
    return 1 if summary["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="xr0 eval libero", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
