"""MT50 results from lerobot-eval's eval_info.json files: success per task, per split and the mean of the four
split means (the SmolVLA paper's "Avg."), as JSON; `--markdown` adds the table beside the published numbers,
`--plot PNG` a bar per task (PIL only).

Run with LeRobot's Python (it reads the split lists from LeRobot's own metaworld_config.json):
  .venv-lerobot/bin/python benchmarks/mt50_table.py runs/eval-mt50/easy-10 docs/mt50/results/*.json ... \
      [--markdown] [--plot docs/mt50.png] [--save docs/mt50/results/NAME.json]

Inputs are lerobot-eval output folders (every eval_info.json under them) or results files written by --save
(task -> successes, a few hundred bytes: what `make eval-mt50` commits, so that splits evaluated in different
sessions make one table). A task found in two inputs is refused, not counted twice.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

SPLITS = ("easy", "medium", "hard", "very_hard")
# Published MT50 success (%), 10 trials per task: easy, medium, hard, very hard, mean (None: not reported).
PUBLISHED = {
    "SmolVLA 0.45B (SmolVLA paper)": (82.5, 41.8, 45.0, 60.0, 57.3),
    "SmolVLA 2.25B (SmolVLA paper)": (None, None, None, None, 68.2),
    "π0 3.5B (SmolVLA paper)": (None, None, None, None, 47.9),
    "π0.5 (as reprinted by others)": (None, None, None, None, 43.8),
    "Evo-1 0.77B (Evo-1 paper)": (None, None, None, None, 80.6),
}


def read(inputs: list[str], difficulty_to_tasks: dict[str, list[str]]) -> dict[str, list[bool]]:
    """task name -> successes, from every eval_info.json under folders and from --save results files."""
    out: dict[str, list[bool]] = {}
    seen: dict[str, str] = {}

    def add(task: str, successes, source: str) -> None:
        if task in seen and seen[task] != source:
            raise SystemExit(f"{task} is in both {seen[task]} and {source}: pass one of them")
        seen[task] = source
        out.setdefault(task, []).extend(bool(s) for s in successes)

    for item in inputs:
        path = Path(item)
        if path.is_file():
            for task, successes in json.loads(path.read_text())["successes"].items():
                add(task, successes, item)
            continue
        files = sorted(path.rglob("eval_info.json"))
        if not files:
            raise SystemExit(f"{item}: no eval_info.json (did lerobot-eval finish?) and not a results file")
        for file in files:
            for entry in json.loads(file.read_text())["per_task"]:
                group, tid = entry["task_group"], int(entry["task_id"])
                task = difficulty_to_tasks[group][tid] if group in difficulty_to_tasks else group
                add(task, entry["metrics"]["successes"], item)
    return out


def summarise(results: dict[str, list[bool]], difficulty_to_tasks: dict[str, list[str]]) -> dict:
    per_task = {t: 100.0 * sum(s) / len(s) for t, s in results.items()}
    splits = {}
    for split in SPLITS:
        tasks = difficulty_to_tasks[split]
        done = [t for t in tasks if t in per_task]
        if done:
            splits[split] = {"success": sum(per_task[t] for t in done) / len(done), "tasks": len(done),
                             "of": len(tasks), "episodes": sum(len(results[t]) for t in done)}
    complete = [s for s in SPLITS if s in splits and splits[s]["tasks"] == splits[s]["of"]]
    mean = sum(splits[s]["success"] for s in SPLITS) / len(SPLITS) if len(complete) == len(SPLITS) else None
    return {"per_task": per_task, "splits": splits, "mean_of_splits": mean}


def markdown(summary: dict, label: str) -> str:
    fmt = lambda v: "–" if v is None else f"{v:.1f}"  # noqa: E731
    rows = ["| policy | easy | medium | hard | very hard | mean |", "|---|---:|---:|---:|---:|---:|"]
    for name, values in PUBLISHED.items():
        rows.append(f"| {name} | " + " | ".join(fmt(v) for v in values) + " |")
    ours = []
    for split in SPLITS:  # a split evaluated on part of its tasks says how many
        got = summary["splits"].get(split)
        part = "" if got is None or got["tasks"] == got["of"] else f" ({got['tasks']} of {got['of']} tasks)"
        ours.append(fmt(got and got["success"]) + part)
    ours.append(fmt(summary["mean_of_splits"]))
    rows.append(f"| **{label}** | " + " | ".join(ours) + " |")
    return "\n".join(rows)


def plot(summary: dict, difficulty_to_tasks: dict[str, list[str]], path: str) -> None:
    from PIL import Image, ImageDraw

    tasks = [t for s in SPLITS for t in difficulty_to_tasks[s] if t in summary["per_task"]]
    colors = {"easy": (44, 160, 44), "medium": (31, 119, 180), "hard": (255, 127, 14), "very_hard": (214, 39, 40)}
    split_of = {t: s for s in SPLITS for t in difficulty_to_tasks[s]}
    row, left, width = 16, 230, 400
    img = Image.new("RGB", (left + width + 60, 40 + row * len(tasks)), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), "MT50 success per task (%), lerobot-eval; colour = split (easy, medium, hard, very hard)",
           fill="black")
    for i, task in enumerate(tasks):
        y = 30 + i * row
        value = summary["per_task"][task]
        d.text((10, y + 2), task, fill="black")
        d.rectangle([left, y + 2, left + width * value / 100.0, y + row - 3], fill=colors[split_of[task]])
        d.text((left + width * value / 100.0 + 4, y + 2), f"{value:.0f}", fill="black")
    img.save(path)


def main() -> None:
    from lerobot.envs.metaworld import DIFFICULTY_TO_TASKS

    from xr0.sim.mt50 import write_results

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("inputs", nargs="+", help="lerobot-eval output folders, or results files written by --save")
    ap.add_argument("--markdown", action="store_true", help="also print the table beside the published numbers")
    ap.add_argument("--label", default="xr0 small (this repo)", help="our row's name in the table")
    ap.add_argument("--plot", default=None, metavar="PNG", help="write a bar chart of success per task")
    ap.add_argument("--save", default=None, metavar="JSON", help="write the inputs' successes per task (small)")
    args = ap.parse_args()
    results = read(args.inputs, DIFFICULTY_TO_TASKS)
    if args.save:
        write_results(args.save, results, runner="lerobot-eval", inputs=args.inputs)
    summary = summarise(results, DIFFICULTY_TO_TASKS)
    if args.plot:
        plot(summary, DIFFICULTY_TO_TASKS, args.plot)
    if args.markdown:
        print(markdown(summary, args.label))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
