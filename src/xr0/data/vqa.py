"""Synthetic stage-1 data with exact labels: VQA about rendered shape scenes, and a matching reach task.

Why synthetic: the forgetting experiment (docs/forgetting.md) needs a VL skill whose answers are known exactly
and a robot task drawn from the same visual world, small enough to train on a CPU. Everything is a pure function
of (seed, index), so two runs see byte-identical samples.

Scenes: 2-3 shapes (circle / square / triangle) in distinct colours on a plain light background, with their
horizontal centres at least a quarter of the width apart, so "leftmost" / "further left" are never ambiguous.
"""

from __future__ import annotations

import json
import pathlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..processing import RobotSpec

COLOURS = {"red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 220), "yellow": (235, 200, 20)}
SHAPES = ("circle", "square", "triangle")
NUMBERS = {2: "two", 3: "three"}
BACKGROUND = (200, 200, 200)
QUESTION_KINDS = ("leftmost", "rightmost", "further_left", "shape", "count", "exists")


@dataclass(frozen=True)
class Obj:
    colour: str
    shape: str
    x: float  # centre in [-1, 1], left to right
    y: float  # centre in [-1, 1], top to bottom
    r: float  # half-size as a fraction of the image width


def random_scene(rng: np.random.Generator, n_objects: int | None = None) -> list[Obj]:
    """2-3 objects with distinct colours and well-separated x centres (min gap 0.5 in [-1, 1] units)."""
    n = int(rng.integers(2, 4)) if n_objects is None else n_objects
    if n not in (2, 3):
        raise ValueError(f"scenes have 2 or 3 objects, got {n}")
    colours = rng.choice(list(COLOURS), size=n, replace=False)
    while True:  # rejection sampling; with gap 0.5 over [-0.8, 0.8] this terminates in a few draws
        xs = rng.uniform(-0.8, 0.8, size=n)
        if np.min(np.diff(np.sort(xs))) >= 0.5:
            break
    ys = rng.uniform(-0.7, 0.7, size=n)
    return [Obj(str(c), str(rng.choice(SHAPES)), float(x), float(y), float(rng.uniform(0.12, 0.17)))
            for c, x, y in zip(colours, xs, ys)]


def render(objects: list[Obj], size: tuple[int, int] = (64, 64), gripper: tuple[float, float] | None = None,
           zoom_on: tuple[float, float] | None = None) -> np.ndarray:
    """(H, W, 3) uint8. `gripper` draws a small black ring at that (x, y); `zoom_on` renders a 2x crop around it
    (a cheap stand-in for a wrist camera)."""
    h, w = size
    scale = 4  # supersample, then downsize: smooth edges keep small shapes recognisable
    H, W = h * scale, w * scale
    cx, cy, z = (0.0, 0.0, 1.0) if zoom_on is None else (zoom_on[0], zoom_on[1], 2.0)
    to_px = lambda x, y: ((((x - cx) * z) + 1) / 2 * W, (((y - cy) * z) + 1) / 2 * H)  # noqa: E731
    img = Image.new("RGB", (W, H), BACKGROUND)
    d = ImageDraw.Draw(img)
    for o in objects:
        px, py = to_px(o.x, o.y)
        r = o.r * W * z
        if o.shape == "circle":
            d.ellipse([px - r, py - r, px + r, py + r], fill=COLOURS[o.colour])
        elif o.shape == "square":
            d.rectangle([px - r * 0.9, py - r * 0.9, px + r * 0.9, py + r * 0.9], fill=COLOURS[o.colour])
        else:
            d.polygon([(px, py - r), (px - r, py + r * 0.8), (px + r, py + r * 0.8)], fill=COLOURS[o.colour])
    if gripper is not None:
        px, py = to_px(*gripper)
        r = 0.06 * W * z
        d.ellipse([px - r, py - r, px + r, py + r], outline=(0, 0, 0), width=max(2, int(r / 3)))
    return np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.uint8)


def ask(objects: list[Obj], kind: str, rng: np.random.Generator) -> tuple[str, str]:
    """One (question, one-word answer) of the given kind about the scene."""
    by_x = sorted(objects, key=lambda o: o.x)
    if kind == "leftmost":
        return "What colour is the leftmost object?", by_x[0].colour
    if kind == "rightmost":
        return "What colour is the rightmost object?", by_x[-1].colour
    if kind == "further_left":
        a, b = rng.choice(len(objects), size=2, replace=False)
        a, b = objects[a], objects[b]
        winner = a if a.x < b.x else b
        return f"Which object is further left, the {a.colour} one or the {b.colour} one?", winner.colour
    if kind == "shape":
        o = objects[int(rng.integers(len(objects)))]
        return f"What shape is the {o.colour} object?", o.shape
    if kind == "count":
        return "How many objects are there?", NUMBERS[len(objects)]
    if kind == "exists":
        c = str(rng.choice(list(COLOURS)))
        return f"Is there a {c} object?", "yes" if any(o.colour == c for o in objects) else "no"
    raise ValueError(f"unknown question kind {kind!r}; choose from {QUESTION_KINDS}")


class _Synthetic:
    """n samples; sample i is a pure function of (seed, i), drawn from the generator `_rng(i)`."""

    STREAM = 0  # separates the random streams of different sample kinds with the same seed

    def __init__(self, n: int, seed: int):
        self.n, self.seed = int(n), int(seed)

    def __len__(self) -> int:
        return self.n

    def _rng(self, i: int) -> np.random.Generator:
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for {self.n} samples")
        return np.random.default_rng([self.seed, self.STREAM, i])


class SyntheticVQA(_Synthetic):
    """Indexable VL samples `{"images": [uint8 (H, W, 3)], "question": str, "answer": str}` (the VL JSONL format).

    Sample i depends only on (seed, i): use different seeds for training and held-out sets.
    """

    STREAM = 0x5651

    def __init__(self, n: int, seed: int = 0, size: tuple[int, int] = (64, 64),
                 kinds: tuple[str, ...] = QUESTION_KINDS):
        unknown = sorted(set(kinds) - set(QUESTION_KINDS))
        if unknown or not kinds:
            raise ValueError(f"unknown question kind(s) {unknown or kinds}; choose from {QUESTION_KINDS}")
        super().__init__(n, seed)
        self.size, self.kinds = tuple(size), tuple(kinds)

    def __getitem__(self, i: int) -> dict:
        rng = self._rng(i)
        objects = random_scene(rng)
        kind = self.kinds[int(rng.integers(len(self.kinds)))]
        question, answer = ask(objects, kind, rng)
        return {"images": [render(objects, self.size)], "question": question, "answer": answer, "kind": kind}


REACH_ACTION_DIM = REACH_STATE_DIM = 2


def reach_robot_spec(chunk_len: int) -> RobotSpec:
    """Identity normalisation; only the first 2 of the 32 padded action/state dims are used (x, y)."""
    return RobotSpec.identity(chunk_len, REACH_ACTION_DIM, REACH_STATE_DIM)


class SyntheticReach(_Synthetic):
    """Robot samples for the same scenes: "move to the <colour> <shape>" with the gripper drawn as a ring.

    state = gripper (x, y) in [-1, 1]; actions (T, 2) = absolute gripper targets on the straight line to the named
    object's centre, reaching it at the last step: a_t = s + (t + 1) / T * (goal - s). Exact and deterministic,
    so a policy must read the instruction (which object), the image (where it is) and the state (where it starts).
    The first camera is the full scene; any further camera is a 2x crop around the gripper (a wrist view).
    """

    STREAM = 0x5245

    def __init__(self, n: int, seed: int = 0, cameras: tuple[str, ...] = ("Base View",),
                 size: tuple[int, int] = (64, 64), chunk_len: int = 10):
        super().__init__(n, seed)
        self.cameras, self.size, self.T = tuple(cameras), tuple(size), chunk_len
        if not self.cameras:
            raise ValueError("at least one camera is required")

    def __getitem__(self, i: int) -> dict:
        rng = self._rng(i)
        objects = random_scene(rng)
        target = objects[int(rng.integers(len(objects)))]
        state = rng.uniform(-0.9, 0.9, size=2).astype(np.float32)
        goal = np.array([target.x, target.y], np.float32)
        frac = (np.arange(self.T, dtype=np.float32)[:, None] + 1) / self.T
        actions = (state[None] + frac * (goal - state)[None]).astype(np.float32)
        images = {cam: render(objects, self.size, gripper=tuple(state), zoom_on=None if k == 0 else tuple(state))
                  for k, cam in enumerate(self.cameras)}
        return {"images": images, "instruction": f"move to the {target.colour} {target.shape}", "state": state,
                "actions": actions, "action_valid": np.ones(self.T, bool), "episode": i, "frame": 0}


def write_vqa_jsonl(out, n: int, seed: int = 0, size: tuple[int, int] = (64, 64),
                    kinds: tuple[str, ...] = QUESTION_KINDS) -> pathlib.Path:
    """Write `n` SyntheticVQA samples as the VL co-training format: `out/vl.jsonl` + `out/images/{i:06d}.png`."""
    out = pathlib.Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    data = SyntheticVQA(n, seed=seed, size=size, kinds=kinds)
    lines = []
    for i in range(n):
        s = data[i]
        name = f"images/{i:06d}.png"
        Image.fromarray(s["images"][0]).save(out / name)
        lines.append(json.dumps({"images": [name], "question": s["question"], "answer": s["answer"]}))
    path = out / "vl.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


# `xr0 data vqa`
def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="output folder (vl.jsonl + images/)")
    p.add_argument("--n", type=int, default=2000, help="question-answer pairs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--kinds", default=",".join(QUESTION_KINDS), help=f"question kinds, from {','.join(QUESTION_KINDS)}")


def run(args) -> int:
    path = write_vqa_jsonl(args.out, args.n, args.seed, (args.image_size, args.image_size), tuple(args.kinds.split(",")))
    print(f"wrote {args.n} VQA samples to {path}")
    return 0
