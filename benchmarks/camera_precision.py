"""How precisely a pair of MetaWorld cameras places a point of the reach goal range, by the pinhole model.

For every pair, at each point of a 4 x 3 x 4 grid over reach-v3's goal range, the two cameras' image Jacobians
(pixels per cm of x, y, z at the render size) are stacked and the least-squares position error per pixel of image
error is read off (sqrt of the diagonal of (J^T J)^-1, in cm per pixel): a pair whose views move a point along
nearly one image direction for two world directions cannot tell those apart. Also the smallest distance of a grid
point to the image border. Prints one JSON line per pair, best z first.
Usage: python benchmarks/camera_precision.py [--size 128]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

from xr0.sim.metaworld import MetaWorldEnv  # noqa: E402

FIXED = ("topview", "corner", "corner2", "corner3", "corner4")  # the world-fixed cameras (the other two ride the arm)


def project(model, data, cam: int, point: np.ndarray, size: int) -> np.ndarray:
    """Pixel offset from the image centre (x right, y up in the camera's frame) of a world point."""
    c = data.cam_xmat[cam].reshape(3, 3).T @ (point - data.cam_xpos[cam])
    f = (size / 2) / np.tan(np.deg2rad(model.cam_fovy[cam]) / 2)
    return f * c[:2] / -c[2]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=128, help="render size in pixels")
    args = ap.parse_args()
    env = MetaWorldEnv("reach-v3", seed=0, image_size=(32, 32))
    model, data = env.sim.model, env.sim.data
    ids = {model.camera(i).name: i for i in range(model.ncam)}
    lo, hi = env.sim.goal_space.low, env.sim.goal_space.high
    grid = [lo + (hi - lo) * np.array(f) for f in itertools.product(*(np.linspace(0, 1, n) for n in (4, 3, 4)))]

    def jacobian(cam, p):  # pixels per cm, 2 x 3
        return np.stack([(project(model, data, cam, p + e * 0.01, args.size)
                          - project(model, data, cam, p - e * 0.01, args.size)) / 2 for e in np.eye(3)], 1)

    rows = []
    for pair in itertools.combinations(FIXED, 2):
        err = np.array([np.sqrt(np.diag(np.linalg.inv(J.T @ J))) for J in
                        (np.vstack([jacobian(ids[c], p) for c in pair]) for p in grid)])
        margin = min(args.size / 2 - np.abs(project(model, data, ids[c], p, args.size)).max()
                     for p in grid for c in pair)
        median = np.median(err, 0).round(2).tolist()
        rows.append({"cameras": list(pair), "cm_per_px_median": dict(zip("xyz", median)),
                     "cm_per_px_worst_z": round(float(err[:, 2].max()), 2), "border_margin_px": round(float(margin), 1)})
    env.close()
    for r in sorted(rows, key=lambda r: r["cm_per_px_median"]["z"]):
        print(json.dumps(r))


if __name__ == "__main__":
    main()
