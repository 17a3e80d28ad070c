"""Two CPU processes (gloo) train the tiny preset for 3 steps: parameters must agree across ranks, and only rank 0
writes metrics and checkpoints. FSDP2 must reproduce the DDP run (same losses and weights)."""

import json
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from xr0 import XR0Policy
from xr0.data.lerobot_v3 import LeRobotV3Writer

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_dataset(root):
    with LeRobotV3Writer(root, 10, {"front": (32, 32)}, 8, 7, robot_type="toy") as w:
        for e, n in enumerate((16, 14)):
            rng = np.random.default_rng(e)
            images = {"front": np.repeat(rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8), n, 0)}
            w.add_episode(images, rng.normal(size=(n, 8)), rng.normal(size=(n, 7)), f"task {e}")
    return root


def _worker(rank, port, data, out, fsdp, dtype):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(WORLD), LOCAL_WORLD_SIZE=str(WORLD))
    torch.set_num_threads(1)
    from xr0.train import TrainConfig, Trainer

    cfg = TrainConfig(preset="tiny", recipe="post-async", data=data, out=out, robot_type="toy", steps=3, batch_size=2, lr=1e-3,
                      warmup=1, save_every=3, log_every=1, dtype=dtype, seed=0, progress=False, fsdp=fsdp)
    tr = Trainer(cfg)
    tr.run()
    params = {}
    for name, p in tr.core.named_parameters():
        p = p.full_tensor() if hasattr(p, "full_tensor") else p  # FSDP: gather the shards (collective)
        params[name] = p.detach().cpu().contiguous().clone()
    spec = tr.policy.robot("toy")  # rank 0 computed the statistics, the other rank received them
    params.update({f"stats.{k}": torch.from_numpy(v) for k, v in spec.arrays().items()})
    save_file(params, os.path.join(out, f"rank{rank}.safetensors"))
    dist.destroy_process_group()


def _launch(tmp_path, fsdp=False, dtype="fp32"):
    data = tmp_path / "data"
    data = str(data if data.exists() else _write_dataset(data))
    out = tmp_path / f"{'fsdp' if fsdp else 'ddp'}-{dtype}"
    out.mkdir()
    mp.spawn(_worker, args=(_free_port(), data, str(out), fsdp, dtype), nprocs=WORLD, join=True)
    return out


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    return _launch(tmp_path_factory.mktemp("ddp"))


def test_ddp_ranks_agree(ddp_run):
    r0, r1 = (load_file(str(ddp_run / f"rank{r}.safetensors")) for r in range(WORLD))
    assert r0.keys() == r1.keys() and len(r0) > 100
    diff = max((r0[k] - r1[k]).abs().max().item() for k in r0)
    assert diff == 0.0, diff
    init = XR0Policy.from_preset("tiny", seed=0, cameras=("front",))
    assert r0["stats.action_std"].abs().sum() > 0 and torch.equal(r0["stats.action_std"], r1["stats.action_std"])
    moved = [k for k, v in init.model.named_parameters() if not torch.equal(v, r0["model." + k])]
    assert any(k.startswith("dit.") for k in moved) and any(k.startswith("vlm.model.visual") for k in moved)
    # one writer: 3 metric rows (the mean loss over both ranks), one checkpoint holding rank 0's weights
    rows = _rows(ddp_run)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    ckpt = XR0Policy.from_pretrained(ddp_run / "checkpoints" / "step_000003")
    assert all(torch.equal(v, r0["model." + k]) for k, v in ckpt.model.named_parameters())
    assert sorted(p.name for p in (ddp_run / "checkpoints").iterdir()) == ["latest", "step_000003"]


def test_fsdp_matches_ddp(ddp_run, tmp_path):
    out = _launch(tmp_path, fsdp=True)
    assert [r["loss"] for r in _rows(out)] == pytest.approx([r["loss"] for r in _rows(ddp_run)], rel=1e-5)
    f0, d0 = load_file(str(out / "rank0.safetensors")), load_file(str(ddp_run / "rank0.safetensors"))
    assert max((f0[k] - d0[k]).abs().max().item() for k in d0) < 1e-5
    ckpt = XR0Policy.from_pretrained(out / "checkpoints" / "step_000003")
    assert all(torch.allclose(v, f0["model." + k], atol=1e-6) for k, v in ckpt.model.named_parameters())


def test_fsdp_bf16_mixed_precision_matches_ddp(tmp_path):
    """--dtype bf16: FSDP2 gathers bf16 parameters (MixedPrecisionPolicy, fp32 gradient reduction), DDP autocasts
    fp32 weights; the same three steps agree within bf16 precision and the master weights stay fp32."""
    ddp, fsdp = _launch(tmp_path, dtype="bf16"), _launch(tmp_path, fsdp=True, dtype="bf16")
    d, f = [r["loss"] for r in _rows(ddp)], [r["loss"] for r in _rows(fsdp)]
    assert f == pytest.approx(d, rel=2e-2), (d, f)
    f0, d0 = load_file(str(fsdp / "rank0.safetensors")), load_file(str(ddp / "rank0.safetensors"))
    assert all(v.dtype == torch.float32 for v in f0.values())
    init = XR0Policy.from_preset("tiny", seed=0, cameras=("front",))
    # the weight updates (3 AdamW steps) point the same way: Adam's normalised steps flip sign where a gradient is
    # near zero and bf16 rounding differs, so compare the whole update, not single entries
    keys = [k for k, _ in init.model.named_parameters()]
    step_d = torch.cat([(d0["model." + k] - v).flatten() for k, v in init.model.named_parameters()])
    step_f = torch.cat([(f0["model." + k] - v).flatten() for k, v in init.model.named_parameters()])
    cos = float(step_d @ step_f / (step_d.norm() * step_f.norm()))
    assert cos >= 0.9 and abs(float(step_f.norm() / step_d.norm()) - 1) < 0.1
