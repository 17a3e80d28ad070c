"""A dependency-free PNG of executed actions over time with chunk switches and holds marked (PIL only)."""

from __future__ import annotations

from PIL import Image, ImageDraw

COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot_actions(trace, path, dims: list[str], title: str = "", size: tuple[int, int] = (900, 420)) -> None:
    """One line per action dim; grey verticals at chunk switches, a red band on ticks that held (idle)."""
    acts = trace.actions[:, : len(dims)]
    n = len(acts)
    w, h = size
    left, right, top, bottom = 50, 130, 30, 30
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    lo, hi = float(acts.min()), float(acts.max())
    span = hi - lo or 1.0
    x = lambda i: left + (w - left - right) * i / max(n - 1, 1)  # noqa: E731
    y = lambda v: top + (h - top - bottom) * (1 - (v - lo) / span)  # noqa: E731
    idle, ids = trace.idle, trace.chunk_ids
    for i in range(n):
        if idle[i]:
            d.rectangle([x(i) - 1, top, x(i) + 1, h - bottom], fill=(255, 210, 210))
        if i and ids[i] != ids[i - 1]:
            d.line([x(i), top, x(i), h - bottom], fill=(170, 170, 170), width=1)
    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for k in range(len(dims)):
        pts = [(x(i), y(acts[i, k])) for i in range(n)]
        if len(pts) > 1:
            d.line(pts, fill=COLORS[k % len(COLORS)], width=2)
        d.text((w - right + 10, top + 16 * k), dims[k], fill=COLORS[k % len(COLORS)])
    d.text((w - right + 10, top + 16 * len(dims) + 8), "| chunk switch", fill=(120, 120, 120))
    d.text((w - right + 10, top + 16 * len(dims) + 24), "  held (idle)", fill=(220, 120, 120))
    d.text((left, 8), title, fill="black")
    d.text((left, h - bottom + 8), f"0 .. {n - 1} ticks", fill="black")
    d.text((4, top), f"{hi:.2f}", fill="black")
    d.text((4, h - bottom - 12), f"{lo:.2f}", fill="black")
    img.save(path)
