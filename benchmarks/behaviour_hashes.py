"""Behaviour fingerprint for refactors: prints one JSON object to compare before and after a change.

- seeded `sample()` of the embedded checkpoint and of random `tiny` and `small` presets (native and non-native
  image sizes, a clean prefix, an RTC-guided prefix): SHA-256 of the action bytes;
- `xr0 eval metaworld --checkpoint embedded --seed 1000 --episodes 2` (async and sync, simulated clock): its JSON
  without the wall-clock fields.

Usage: MUJOCO_GL=egl .venv/bin/python benchmarks/behaviour_hashes.py [--no-eval] > before.json
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import numpy as np

WALL_CLOCK = ("inference_wall_ms_p50", "inference_wall_ms_p95")


def _digest(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float32).tobytes()).hexdigest()[:16]


def sample_hashes() -> dict:
    from xr0 import XR0Policy

    out = {}
    for name in ("embedded", "tiny", "small"):
        policy = XR0Policy.from_pretrained(name) if name == "embedded" else XR0Policy.from_preset(name, seed=0)
        rng = np.random.default_rng(0)
        robot = policy.robot()
        h, w = robot.image.size or policy.config.image_size
        hashes = []
        for k in range(3):  # the native size, then 16 and 32 rows taller
            images = {c: rng.integers(0, 256, (h + 16 * k, w, 3), dtype=np.uint8) for c in robot.cameras}
            state = rng.normal(size=robot.state_dim).astype(np.float32)
            hashes.append(_digest(policy.sample(images, "reach the green target", state, seed=k)))
        prefix = rng.normal(size=(min(3, policy.config.max_prefix) or 1, robot.action_dim)).astype(np.float32)
        if policy.config.max_prefix:
            hashes.append(_digest(policy.sample(images, "open the drawer", state, prefix=prefix, seed=5)))
        weights = np.linspace(1.0, 0.2, len(prefix))
        hashes.append(_digest(policy.sample(images, "open the drawer", state, prefix=prefix, prefix_weights=weights,
                                            seed=6)))
        out[name] = hashes
    return out


def eval_json(executor: str) -> dict:
    cmd = [sys.executable, "-m", "xr0.cli", "eval", "metaworld", "--checkpoint", "embedded", "--seed", "1000",
           "--episodes", "2", "--executor", executor, "--json"]
    lines = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()
    result = json.loads(lines[-1])
    return {k: v for k, v in result.items() if k not in WALL_CLOCK}


def main() -> None:
    out = {"sample": sample_hashes()}
    if "--no-eval" not in sys.argv:
        out["metaworld_eval"] = {ex: eval_json(ex) for ex in ("async", "sync")}
    print(json.dumps(out, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
