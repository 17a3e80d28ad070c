"""How close xr0 lands to the official XR-0 code's own outputs (tests/fixtures/official_tiny), as one JSON line.

    python benchmarks/official_parity.py [--device cpu|cuda] [--dtype fp32|bf16]

Each number is max |xr0 - official| / max |official| over the active entries (the fixture's measure), for the cases
of tests/test_parity.py: K/V of the VLM (a.*), velocities (b.*), actions (c.*, asbuilt.*, release.*), the training
losses (d.*, relative difference). In bf16 the actions are also compared with the official bf16 run (bf16.*) and the
official run's own bf16-vs-fp32 gap is printed beside them.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from test_parity import APRIL, actions, build_folder, load_cases, rel, vlm_batch  # noqa: E402

from xr0 import XR0Policy  # noqa: E402
from xr0.model.loss import LossOptions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"))
    args = ap.parse_args()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    c = {k: v.to(args.device) for k, v in load_cases().items()}
    active = c["in.action_mask"]
    noise = c["in.noise"].to(dtype)
    out: dict = {"device": args.device, "dtype": args.dtype, "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(pathlib.Path(tmp))
        load = lambda **s: XR0Policy.from_pretrained(folder, device=args.device, dtype=dtype, **s)  # noqa: E731
        april = load(**APRIL)
        with torch.inference_mode():
            cache = april.model.encode(vlm_batch(c))
            tokens = c["in.attention_mask"].bool()[:, None, :, None].expand_as(cache.keys[0])
            out["a.kv"] = max(max(rel(cache.keys[i], c[f"a.k{i}"], tokens), rel(cache.values[i], c[f"a.v{i}"], tokens))
                              for i in range(3))
            for p in (0, 3):
                ctx = april.model.context(cache, c["in.state"][:, 0], active, p)
                x_t = c["in.x_t"] if p == 0 else c["in.x_t_prefix"]
                out[f"b.p{p}.velocity"] = rel(april.model.velocity(ctx, x_t.to(dtype), c["in.t_fixed"]),
                                              c[f"b.p{p}.velocity"], active)
        for p in (0, 3):
            ours = actions(april, c, p, noise)
            out[f"c.p{p}.actions"] = rel(ours, c[f"c.p{p}.actions"], active)
            if args.dtype == "bf16":
                out[f"bf16.c.p{p}.actions"] = rel(ours, c[f"bf16.c.p{p}.actions"], active)
                out[f"official_bf16_gap.p{p}"] = rel(c[f"bf16.c.p{p}.actions"], c[f"c.p{p}.actions"], active)
        out["asbuilt.c.p0.actions"] = rel(actions(load(**{**APRIL, "rope_tables": "bf16"}), c, 0, noise),
                                          c["asbuilt.c.p0.actions"], active)
        out["release.c.p0.actions"] = rel(actions(load(), c, 0, noise), c["release.c.p0.actions"], active)
        for case, p in (("sync", 0), ("async", 5)):
            hidden = c["in.async.hidden_prefix"] if p else None
            opts = LossOptions(prefix_len=p, hidden_prefix=hidden, repeat=2, reweight=True, freq_weight=1.0,
                               time=c[f"d.{case}.t"], noise=c[f"in.{case}.noise"])
            batch = dict(vlm_batch(c), state=c["in.state"][:, 0], actions=c["in.train_actions"], action_mask=active)
            april.model.train()
            with torch.no_grad():
                loss = april.model.loss(batch, opts)
            april.model.eval()
            for ours, theirs in (("loss", "loss"), ("mse", "loss_mse"), ("freq", "loss_freq")):
                ref = c[f"d.{case}.{theirs}"].item()
                out[f"d.{case}.{theirs}"] = abs(loss[ours].item() - ref) / abs(ref)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
