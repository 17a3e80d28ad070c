"""Bars of benchmarks/reactivity.py results (one or more runs, e.g. one per checkpoint): per task, reaction time,
success after the move and the copying index per executor, with ± one standard error. PIL only.
Usage: python benchmarks/plot_reactivity.py RUN.json [RUN2.json ...] --out docs/reactivity.png [--labels a,b]
(each RUN.json holds reactivity.py's output, one JSON line per cell)."""

from __future__ import annotations

import argparse
import json

from PIL import Image, ImageDraw

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
          (227, 119, 194), (127, 127, 127), (188, 189, 34)]
LEGEND_PER_ROW = 8
PANELS = [("reaction_ticks_mean", "reaction_ticks_se", "ticks until it turns to the new target", 40.0),
          ("success_after_move", "success_after_move_se", "success after the move", 1.0),
          ("copying_index", "copying_index_se", "copying index (1 = copies the old plan)", 1.0)]


def load(path: str, label: str) -> list[dict]:
    """The per-cell lines of a reactivity.py output (its closing summary line repeats them)."""
    rows = [json.loads(line) for line in open(path) if line.strip().startswith("{")]
    rows = [r for r in rows if "task" in r]
    return [{**r, "series": "oracle" if r["chunker"] == "expert" else label} for r in rows]


def plot(rows: list[dict], out: str) -> None:
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    executors = list(dict.fromkeys(r["executor"] for r in rows))
    series = list(dict.fromkeys(r["series"] for r in rows))
    legend_rows = -(-len(series) // LEGEND_PER_ROW)
    pw, ph, left, top = 420, 230, 60, 25 + 15 * legend_rows
    w, h = left + pw * len(PANELS) + 20, top + (ph + 50) * len(tasks) + 40
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    for s, name in enumerate(series):
        lx, ly = left + 150 * (s % LEGEND_PER_ROW), 8 + 15 * (s // LEGEND_PER_ROW)
        d.rectangle([lx, ly, lx + 12, ly + 12], fill=COLORS[s % len(COLORS)])
        d.text((lx + 16, ly), name, fill="black")
    for ti, task in enumerate(tasks):
        y0 = top + ti * (ph + 50)
        for pi, (key, se_key, title, top_value) in enumerate(PANELS):
            x0 = left + pi * pw
            d.text((x0, y0), f"{task}: {title}", fill="black")
            base, height = y0 + ph, ph - 30
            d.line([x0, base, x0 + pw - 30, base], fill="black")
            d.text((x0 - 40, base - height - 5), f"{top_value:g}", fill="black")
            d.text((x0 - 20, base - 5), "0", fill="black")
            group = (pw - 40) / max(len(executors), 1)
            bar = (group - 10) / max(len(series), 1)
            for ei, ex in enumerate(executors):
                gx = x0 + 5 + ei * group
                d.text((gx, base + 5), ex, fill="black")
                for si, name in enumerate(series):
                    r = next((r for r in rows if (r["task"], r["executor"], r["series"]) == (task, ex, name)), None)
                    if r is None or r.get(key) is None:
                        continue
                    v = max(0.0, min(float(r[key]), top_value))
                    bx = gx + si * bar
                    y = base - height * v / top_value
                    d.rectangle([bx, y, bx + bar - 2, base], fill=COLORS[si % len(COLORS)])
                    se = r.get(se_key)
                    if se:
                        e = height * float(se) / top_value
                        d.line([bx + bar / 2, y - e, bx + bar / 2, y + e], fill="black")
    img.save(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--labels", default=None, help="comma-separated names of the runs' checkpoints")
    ap.add_argument("--out", default="docs/reactivity.png")
    args = ap.parse_args()
    labels = args.labels.split(",") if args.labels else args.runs
    if len(labels) != len(args.runs):
        ap.error(f"{len(args.runs)} runs but {len(labels)} labels")
    rows, seen_oracle = [], set()
    for path, label in zip(args.runs, labels):
        for r in load(path, label):
            key = (r["task"], r["executor"], r["series"])
            if r["series"] == "oracle" and key in seen_oracle:
                continue  # the oracle does not depend on the checkpoint
            seen_oracle.add(key)
            rows.append(r)
    plot(rows, args.out)
    print(json.dumps({"plot": args.out, "rows": len(rows)}))


if __name__ == "__main__":
    main()
