"""Mutation fuzzing of the dataset readers (LeRobot v3 and official JSON); prints one JSON line.

    python benchmarks/fuzz_data.py [--mutants 240] [--plain-mutants 240] [--seed 0] [--workdir DIR]

Writes a small LeRobot v3 dataset (3 episodes in 2 data/video files, 2 cameras) and 3 official JSON episodes
(2 cameras each) with xr0's writers, reads every sample of the clean copies as the reference, then damages one
file per mutant (byte flips, a truncation, or for JSON/parquet a deleted key/column or a wrong type), round-robin
over the file kinds: data parquet, episode metadata parquet, tasks parquet, info.json, stats.json, the MP4s, the
episode JSONs. Each mutant is read strictly and with skip_bad=True (verify_videos=True); tests/data_mutants.py
defines the outcomes. `--mutants` run on the datasets as xr0 writes them (with SHA-256 digests), `--plain-mutants`
on the same datasets with the digests removed, as LeRobot or the official release would write them: there a flip
inside a number or an MP4 payload can change a sample unseen, and the run reports how often.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from data_mutants import BUGS, build_targets, plan, read_all, run_mutant  # noqa: E402

try:
    from tqdm import tqdm
except ImportError:  # progress is optional
    tqdm = None


def fuzz(workdir: pathlib.Path, n: int, seed: int, digests: bool, label: str) -> dict:
    targets = build_targets(workdir / label, digests=digests)
    jobs = plan(targets, n, seed)
    bar = tqdm(total=n, desc=label, file=sys.stderr, leave=False) if tqdm else None
    counts: dict = collections.defaultdict(lambda: {"strict": collections.Counter(), "skip_bad": collections.Counter()})
    totals = {"strict": collections.Counter(), "skip_bad": collections.Counter()}
    examples, silent = [], []
    for target, kind, rel, mutant_seed in jobs:
        m = run_mutant(target, kind, rel, mutant_seed)
        key = f"{m.dataset}/{m.kind}"
        counts[key]["strict"][m.strict] += 1
        counts[key]["skip_bad"][m.skip] += 1
        totals["strict"][m.strict] += 1
        totals["skip_bad"][m.skip] += 1
        row = {"file": f"{m.dataset}/{m.file}", "mutation": m.mutation, "strict": m.strict, "skip_bad": m.skip,
               "note": m.note.replace(f"{workdir / label}/", "")[:240]}
        if m.strict in BUGS or m.skip in BUGS:
            (silent if "silent_difference" in (m.strict, m.skip) and not digests else examples).append(row)
        if bar:
            bar.update(1)
    if bar:
        bar.close()
    bugs = {o: totals["strict"][o] + totals["skip_bad"][o] for o in BUGS if totals["strict"][o] + totals["skip_bad"][o]}
    by_kind = {k: {s: dict(sorted(c.items())) for s, c in v.items()} for k, v in sorted(counts.items())}
    return {"mutants": n, "by_kind": by_kind,
            "strict": dict(sorted(totals["strict"].items())), "skip_bad": dict(sorted(totals["skip_bad"].items())),
            "bugs": bugs, "bug_examples": examples[:8], "silent_difference_examples": silent[:4]}


def open_read_seconds(workdir: pathlib.Path, reps: int = 15) -> dict:
    """Median seconds to open each clean dataset and read every sample, with and without digest checks; the
    dataset's size; SHA-256 throughput on this machine (what a big file's first read costs on top)."""
    out = {}
    for digests in (True, False):
        targets = build_targets(workdir / f"timing-{digests}", digests=digests)
        for t in targets:
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                read_all(t.open())
                times.append(time.perf_counter() - t0)
            out[f"{t.name}_{'with' if digests else 'without'}_digests"] = round(statistics.median(times), 4)
            out[f"{t.name}_kb"] = round(sum(p.stat().st_size for p in t.root.rglob("*") if p.is_file()) / 1024)
    block = bytes(range(256)) * (1 << 18)  # 64 MiB
    t0 = time.perf_counter()
    hashlib.sha256(block).hexdigest()
    out["sha256_mb_per_s"] = round(len(block) / (1 << 20) / (time.perf_counter() - t0))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mutants", type=int, default=240, help="mutants of the datasets as xr0 writes them (digests)")
    ap.add_argument("--plain-mutants", type=int, default=None, help="mutants without digests (default: --mutants)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=pathlib.Path, default=None, help="where the datasets go (default: a temp dir)")
    args = ap.parse_args()
    plain = args.mutants if args.plain_mutants is None else args.plain_mutants
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="xr0-fuzz-data-") as tmp:
        workdir = args.workdir or pathlib.Path(tmp)
        result = {"seed": args.seed,
                  "with_digests": fuzz(workdir, args.mutants, args.seed, True, "with_digests"),
                  "without_digests": fuzz(workdir, plain, args.seed, False, "without_digests"),
                  "open_and_read_s": open_read_seconds(workdir)}
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
