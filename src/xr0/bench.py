"""`xr0 bench latency|train`: per-stage inference latency and training throughput, random weights, one JSON line.

Why a script and not a timed test: latency depends on the machine and on its load, so it is measured on demand and
the numbers are quoted with the device, versions and thread count they came from (docs/benchmarks.md).

latency: one action chunk = preprocess (resize, tokenize, patchify, normalise, to device) -> prefill (one VLM pass,
K/V of its last layers) -> context (state token, Λ mask, RoPE) -> denoise (time table + one DiT pass per Euler
step) -> postprocess (to host, de-normalise). `--naive` re-runs the VLM and the context at every step, the cost that
K/V reuse saves. `--compare` runs other configurations in the same process, interleaved run by run, so their ratios
share the machine's load; on a shared, noisy machine quote those ratios rather than numbers from separate runs.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np

from .model.dtypes import resolve_dtype, torch_dtype

DTYPES = ("fp32", "bf16", "auto")
INSTRUCTION = "pick up the red block on the left side of the table and put it in the blue bowl"  # ~20 tokens
COMPARE = {  # name -> the one field of the primary setup it changes
    "naive": ("naive", True), "kv": ("naive", False), "fp32": ("dtype", "fp32"), "bf16": ("dtype", "bf16"),
    "compile": ("compile", True), "eager": ("compile", False), "compile-vlm": ("compile_vlm", True),
    "graph": ("cuda_graph", True), "nograph": ("cuda_graph", False),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True)
    lat = sub.add_parser("latency", help="p50/p95 latency of one action chunk and of each stage")
    _common(lat)
    lat.add_argument("--runs", type=int, default=20, help="timed chunks (after warm-up)")
    lat.add_argument("--warmup", type=int, default=3, help="untimed chunks first (compilation, allocator, caches)")
    lat.add_argument("--naive", action="store_true", help="recompute the VLM at every denoising step (no K/V reuse)")
    lat.add_argument("--compile", action="store_true", help="torch.compile the DiT step (inductor)")
    lat.add_argument("--compile-vlm", action="store_true", help="torch.compile the VLM text tower too")
    lat.add_argument("--cuda-graph", action="store_true", help="static buffers + one CUDA graph for the DiT loop")
    lat.add_argument("--prefix", type=int, default=0, help="length of a committed action prefix (async mode)")
    lat.add_argument("--steps", type=int, default=None, help="Euler steps (default: the preset's, 5)")
    lat.add_argument("--compare", default="", help=f"comma list of other setups run interleaved: {','.join(COMPARE)}")
    tr = sub.add_parser("train", help="training throughput (samples/s): make_batch + flow-matching loss + AdamW")
    _common(tr)
    tr.add_argument("--batch-size", type=int, default=4)
    tr.add_argument("--steps", type=int, default=10, help="timed optimiser steps (after warm-up)")
    tr.add_argument("--warmup", type=int, default=2)
    tr.add_argument("--freeze-vlm", action="store_true", help="train the expert only (pre-training stage 2)")
    pl = tr.add_argument_group("memory plan (--plan: nothing is allocated or run; xr0.train.memory)")
    pl.add_argument("--plan", action="store_true",
                    help="print the planned peak memory per GPU of full / frozen-VLM / LoRA fine-tuning, with and "
                         "without activation checkpointing, single GPU, DDP and FSDP2, at --batch-size per GPU "
                         "(--dtype defaults to bf16 here)")
    pl.add_argument("--gpus", default="1,8", help="comma list of GPU counts (default 1,8)")
    pl.add_argument("--lora-rank", type=int, default=16)
    pl.add_argument("--attn", default="gpu", choices=("gpu", "cpu", "math"),
                    help="gpu: CUDA (flash/efficient SDPA, fp32 LayerNorm under autocast, foreach AdamW); cpu: this "
                         "CPU's torch (its SDPA is a flash kernel too; per-tensor AdamW); math: SDPA's math fallback, "
                         "which saves the L x L attention probabilities")
    tr.set_defaults(dtype=None)  # --plan: bf16; the throughput benchmark: fp32


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="small", help="tiny | small | xr0-4b (random weights)")
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--dtype", default="fp32", choices=DTYPES,
                   help="weights/activations; auto = bf16 where this device computes it natively, else fp32")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def run(args: argparse.Namespace) -> int:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("xr0 bench: --device cuda but no CUDA device is visible", file=sys.stderr)
        return 2
    if args.action == "train" and args.plan:
        result = plan_memory(args)
        print(result.pop("table"), file=sys.stderr if args.json else sys.stdout, flush=True)
        if args.json:
            print(json.dumps(result))
        return 0
    if args.action == "train" and args.dtype is None:
        args.dtype = "fp32"
    result = latency(args) if args.action == "latency" else train(args)
    _log(_table(result))
    if args.json:
        print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------- setup
@dataclass(frozen=True)
class Setup:
    dtype: str = "fp32"
    naive: bool = False
    compile: bool = False
    compile_vlm: bool = False
    cuda_graph: bool = False


@contextlib.contextmanager
def _default_dtype(dtype):
    import torch

    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_policy(preset: str, device: str, dtype: str, seed: int = 0):
    """Random weights built where they will run and in their final dtype: for xr0-4b on a GPU that is ~9 GB of bf16
    initialised on the device in seconds, instead of 19 GB of fp32 initialised on the host and then copied."""
    from .policy import XR0Policy

    dt = torch_dtype(dtype)
    with _default_dtype(dt):
        return XR0Policy.from_preset(preset, device=device, dtype=dt, seed=seed)


def observation(policy, seed: int = 0, prefix_len: int = 0) -> dict:
    """The preset's cameras at its resolution (no resize needed), a ~20-token instruction, a state, a prefix."""
    rng = np.random.default_rng(seed)
    h, w = policy.config.image_size
    robot = policy.robot()
    obs = dict(images={cam: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for cam in policy.config.cameras},
               instruction=INSTRUCTION, state=rng.normal(size=robot.state_dim).astype(np.float32))
    obs["prefix"] = rng.normal(size=(prefix_len, robot.action_dim)).astype(np.float32) if prefix_len else None
    return obs


# ---------------------------------------------------------------------- latency
class StageTimer:
    """Stage boundaries; on CUDA each mark waits for the queued kernels, so a stage is charged its own GPU time."""

    def __init__(self, device: str):
        import torch

        self.sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
        self.marks: list[tuple[str, float]] = []

    def start(self) -> None:
        self.sync()
        self.marks = [("", time.perf_counter())]

    def mark(self, stage: str) -> None:
        self.sync()
        self.marks.append((stage, time.perf_counter()))

    def stages(self) -> dict[str, float]:
        """Milliseconds per stage; a stage marked several times (naive prefill) is summed."""
        out: dict[str, float] = {}
        for (_, t0), (name, t1) in zip(self.marks, self.marks[1:]):
            out[name] = out.get(name, 0.0) + 1e3 * (t1 - t0)
        return out


class Runner:
    """Times the stages of XR0Policy.sample() for one Setup, through XR0Model.stage_hook; `naive` runs the
    counterfactual without a KV cache (the VLM and the context again at every denoising step) from the same parts."""

    def __init__(self, policy, setup: Setup, obs: dict, steps: int, device: str):
        self.policy, self.setup, self.obs, self.steps, self.device = policy, setup, obs, steps, device
        self.clock = StageTimer(device)
        self.static = None
        if setup.cuda_graph and not setup.naive:
            L = len(policy.processor.prompt_ids(obs["instruction"]))
            self.static = policy.model.use_static_denoiser(max_len=-(-L // 64) * 64, steps=steps, cuda_graph=True)
            policy.model.install_static_denoiser(None)  # installed per run (runners may share a policy)

    @contextlib.contextmanager
    def _installed(self):
        """Per run: this runner's static denoiser and the clock as the model's stage hook."""
        m = self.policy.model
        m.install_static_denoiser(self.static)
        m.stage_hook = self.clock.mark
        try:
            yield
        finally:
            m.install_static_denoiser(None)
            m.stage_hook = None

    def chunk(self) -> tuple[np.ndarray, dict[str, float], float]:
        obs, clock = self.obs, self.clock
        with self._installed():
            clock.start()
            if self.setup.naive:
                out = self._naive_chunk()
            else:
                out = self.policy.sample(obs["images"], obs["instruction"], obs["state"], prefix=obs["prefix"],
                                         steps=self.steps)
        stages = clock.stages()
        steps = [stages[k] for k in stages if k.startswith("dit_")]
        if steps:
            stages["denoise"] = sum(steps)
        return out, stages, 1e3 * (clock.marks[-1][1] - clock.marks[0][1])

    def _naive_chunk(self) -> np.ndarray:
        import torch

        from .model.flow import euler_sample, initial_noise

        p, obs, dev, clock = self.policy, self.obs, self.device, self.clock
        m, robot = p.model, p.robot()
        T, D = robot.chunk_len, p.config.action_dim
        with torch.inference_mode():
            batch = p.processor(obs["images"], obs["instruction"], robot)
            state = torch.from_numpy(robot.normalize_state(obs["state"]))[None].to(dev)
            mask = torch.from_numpy(robot.action_mask).expand(1, T, D).to(dev)
            noise = initial_noise((1, T, D), 0, dev, m.dtype)
            prefix, n_pre = obs["prefix"], 0 if obs["prefix"] is None else len(obs["prefix"])
            prefix_t = None
            if prefix is not None:
                prefix_t = torch.from_numpy(robot.normalize_actions(prefix))[None].to(dev, m.dtype)
            clock.mark("preprocess")

            def velocity(x, t, k):
                cache = m.encode(batch)
                clock.mark("prefill")
                ctx = m.context(cache, state, mask, n_pre)
                clock.mark("context")
                v = m.velocity(ctx, x, t)
                clock.mark(f"dit_step_{k}")
                return v

            x = euler_sample(velocity, noise, self.steps, prefix_t)
            out = robot.denormalize_actions(x[0].float().cpu().numpy())
            if prefix is not None:
                out[:n_pre] = prefix
            clock.mark("postprocess")
        return out


def _setup_from_args(args, device: str) -> Setup:
    return Setup(resolve_dtype(args.dtype, device), args.naive, args.compile, args.compile_vlm, args.cuda_graph)


def _prepare(policy, setup: Setup):
    """A policy object for this setup: compiled parts are swapped in (instance attributes, names unchanged)."""
    if setup.compile or setup.compile_vlm:
        policy = copy.deepcopy(policy)
    if setup.compile and not setup.cuda_graph:  # a CUDA graph replays eager kernels; no compile inside a capture
        policy.model.compile_denoiser()
    if setup.compile_vlm:  # in place: parameter names stay; static shapes (one prompt length in a benchmark)
        policy.model.vlm.model.language_model.compile(dynamic=False)
    return policy


def latency(args) -> dict:
    device = args.device
    primary = _setup_from_args(args, device)
    if primary.cuda_graph and not device.startswith("cuda"):
        raise SystemExit("xr0 bench: --cuda-graph needs --device cuda")
    setups = {"this": primary}
    for name in filter(None, (s.strip() for s in args.compare.split(","))):
        if name not in COMPARE:
            raise SystemExit(f"xr0 bench: unknown --compare entry {name!r}; choose from {sorted(COMPARE)}")
        field, value = COMPARE[name]
        setups[name] = dataclasses.replace(primary, **{field: value})
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    base = {primary.dtype: build_policy(args.preset, device, primary.dtype, args.seed)}
    build_s = time.perf_counter() - t0
    for s in setups.values():
        if s.dtype not in base:  # same random weights, other dtype
            base[s.dtype] = copy.deepcopy(base[primary.dtype]).to(torch_dtype(s.dtype))
    policies = {}
    trained = base[primary.dtype].config.max_prefix
    if args.prefix > trained:  # sample() refuses a clean prefix longer than trained, as a robot's request would be
        raise SystemExit(f"xr0 bench: --prefix {args.prefix} is longer than the preset's trained clean prefix "
                         f"({trained})")
    obs = observation(base[primary.dtype], args.seed, args.prefix)
    steps = args.steps or base[primary.dtype].config.num_steps
    runners = {}
    for name, s in setups.items():
        key = (s.dtype, s.compile, s.compile_vlm)
        if key not in policies:
            policies[key] = _prepare(base[s.dtype], s)
        runners[name] = Runner(policies[key], s, obs, steps, device)
    totals = {n: [] for n in runners}
    stages = {n: [] for n in runners}
    first_s = {}
    for r in range(args.warmup + args.runs):
        for name, runner in runners.items():
            t = time.perf_counter()
            out, st, total = runner.chunk()
            if r == 0:
                first_s[name] = time.perf_counter() - t
            if r >= args.warmup:
                totals[name].append(total)
                stages[name].append(st)
    # The staged pipeline must be sample() itself: compare one chunk with the public API (same seed).
    ref = policies[(primary.dtype, primary.compile, primary.compile_vlm)].sample(**obs, steps=steps, seed=0)
    out, _, _ = runners["this"].chunk()
    res = dict(bench="latency", preset=args.preset, mode="naive" if primary.naive else "kv-reuse",
               **dataclasses.asdict(primary), prefix=args.prefix, steps=steps, runs=args.runs, warmup=args.warmup,
               **_stats(totals["this"], stages["this"]), first_chunk_s=round(first_s["this"], 3),
               max_abs_diff_vs_sample=float(np.abs(out - ref).max()),
               vlm_tokens=len(base[primary.dtype].processor.prompt_ids(INSTRUCTION)),
               params=sum(t.numel() for t in base[primary.dtype].model.parameters()), build_s=round(build_s, 2))
    if len(runners) > 1:
        res["compare"] = {n: {**dataclasses.asdict(setups[n]), **_stats(totals[n], stages[n])}
                          for n in runners if n != "this"}
        res["ratio_p50"] = {n: round(c["p50_ms"] / res["p50_ms"], 3) for n, c in res["compare"].items()}
    res.update(_environment(device, load_before))
    return res


def _stats(totals: list[float], stages: list[dict[str, float]]) -> dict:
    pct = lambda xs, q: round(float(np.percentile(xs, q)), 3)  # noqa: E731
    names = list(dict.fromkeys(k for st in stages for k in st))
    order = ["preprocess", "prefill", "context", "dit_setup"] + sorted(k for k in names if k.startswith("dit_step_"))
    order += [k for k in ("denoise", "postprocess") if k in names]
    return dict(p50_ms=pct(totals, 50), p95_ms=pct(totals, 95),
                stages={k: {"p50_ms": pct([st.get(k, 0.0) for st in stages], 50),
                            "p95_ms": pct([st.get(k, 0.0) for st in stages], 95)} for k in order if k in names})


# ---------------------------------------------------------------------- training
def train(args) -> dict:
    import torch

    from .model.loss import LossOptions

    device, dtype = args.device, resolve_dtype(args.dtype, args.device)
    clock = StageTimer(device)
    load_before = os.getloadavg()
    policy = build_policy(args.preset, device, "fp32", args.seed)  # fp32 master weights
    model = policy.model.train()
    rng = np.random.default_rng(args.seed)
    T, D = policy.config.chunk_len, policy.robot().action_dim
    samples = [dict(observation(policy, args.seed + i), actions=rng.normal(size=(T, D)).astype(np.float32))
               for i in range(args.batch_size)]
    for s in samples:
        s.pop("prefix")
    frozen = ("vlm.",) if args.freeze_vlm else ("vlm.model.language_model.embed_tokens.",)
    params = [p for n, p in model.named_parameters() if not n.startswith(frozen)]
    for n, p in model.named_parameters():
        p.requires_grad_(not n.startswith(frozen))
    opt = torch.optim.AdamW(params, lr=1e-4)
    autocast = torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bf16")
    gen = torch.Generator().manual_seed(args.seed)
    totals, stages, losses = [], [], []
    for step in range(args.warmup + args.steps):
        clock.start()
        batch = policy.make_batch(samples)
        clock.mark("make_batch")
        with autocast:
            loss = model.loss(batch, LossOptions(generator=gen))["loss"]
        clock.mark("forward")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clock.mark("backward")
        opt.step()
        clock.mark("optimizer")
        losses.append(loss.item())
        if step >= args.warmup:
            totals.append(1e3 * (clock.marks[-1][1] - clock.marks[0][1]))
            stages.append(clock.stages())
    st = _stats(totals, stages)
    st["stages"] = {k: {"p50_ms": round(float(np.percentile([s[k] for s in stages], 50)), 3),
                        "p95_ms": round(float(np.percentile([s[k] for s in stages], 95)), 3)}
                    for k in ("make_batch", "forward", "backward", "optimizer")}
    res = dict(bench="train", preset=args.preset, dtype=dtype, batch_size=args.batch_size, steps=args.steps,
               warmup=args.warmup, freeze_vlm=args.freeze_vlm,
               samples_per_s=round(args.batch_size / (st["p50_ms"] / 1e3), 3), **st,
               trainable_params=sum(p.numel() for p in params), loss_first=losses[0], loss_last=losses[-1])
    res.update(_environment(device, load_before))
    return res


# ---------------------------------------------------------------------- memory plan
def plan_workload(config, batch: int, instruction: str = INSTRUCTION, repeat: int = 4, padded: bool = True):
    """The plan's Workload for a PolicyConfig: the prompt the processor builds for its cameras and image size (the
    ~20-token INSTRUCTION), 16 x 16 patches per camera; padded: batches mix prompt lengths (a padding mask)."""
    from .processing import Processor
    from .processing.images import PATCH
    from .train.memory import Workload

    h, w = config.image_size
    tokens = len(Processor(config).prompt_ids(instruction))
    cams = len(config.cameras)
    return Workload(batch=batch, vlm_tokens=tokens, patches=cams * (h // PATCH) * (w // PATCH), images=cams,
                    repeat=repeat, padded=padded)


def plan_memory(args) -> dict:
    """`xr0 bench train --plan`: the table of xr0.train.memory for a preset, from its modules built on the meta device."""
    from .config import get_preset
    from .train import memory as P

    dtype = args.dtype or "bf16"
    if dtype == "auto":
        dtype = "bf16" if args.attn != "cpu" else resolve_dtype("auto", "cpu")
    config = get_preset(args.preset)
    t0 = time.perf_counter()
    counts = P.count_parts(P.meta_model(config))
    dims = P.Dims.from_config(config)
    work = plan_workload(config, args.batch_size)
    gpus = tuple(int(g) for g in str(args.gpus).split(",") if g.strip())
    if not gpus or min(gpus) < 1:
        raise SystemExit(f"xr0 bench: --gpus must list GPU counts >= 1, got {args.gpus!r}")
    rows = P.table(counts, dims, work, gpus, dtype, args.attn, args.lora_rank)
    head = (f"xr0 bench train --plan: {args.preset}, {counts.total / 1e9:.3f} B parameters (vision "
            f"{counts.vision / 1e6:.0f} M, VLM text layers {counts.text / 1e6:.0f} M, token embeddings "
            f"{counts.embeddings / 1e6:.0f} M, DiT expert {counts.expert / 1e6:.0f} M), batch {work.batch} per GPU, "
            f"{work.vlm_tokens} VLM tokens x {work.repeat} DiT repeats of {config.chunk_len + 2} tokens, "
            f"{work.patches} vision patches per sample, {dtype}, attention {args.attn}. GiB per GPU at the peak "
            f"(the columns add up to the total); fits = total x {P.SLACK:g} + {P.CONTEXT_GIB:g} GiB within the card.")
    return dict(bench="train-plan", preset=args.preset, dtype=dtype, attn=args.attn, batch_size=work.batch,
                lora_rank=args.lora_rank, gpus=list(gpus), counts=dict(vision=counts.vision, text=counts.text,
                                                                       embeddings=counts.embeddings,
                                                                       expert=counts.expert, total=counts.total),
                workload=dataclasses.asdict(work), rows=[r.to_dict() for r in rows],
                plan_s=round(time.perf_counter() - t0, 3), table=head + "\n\n" + P.format_table(rows))


# ---------------------------------------------------------------------- reporting
def _environment(device: str, load_before) -> dict:
    import torch
    import transformers

    env = dict(device=device, torch=torch.__version__, transformers=transformers.__version__,
               python=platform.python_version(), threads=torch.get_num_threads(),
               load_avg_before=[round(x, 2) for x in load_before],
               load_avg_after=[round(x, 2) for x in os.getloadavg()])
    if device.startswith("cuda"):
        env.update(device_name=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                   max_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2))
    else:
        caps = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
        env.update(device_name=f"{caps.get('cpu_name', platform.processor())} x{os.cpu_count()}",
                   cpu_capability=torch.backends.cpu.get_cpu_capability(),
                   native_bf16=bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()))
    return env


def _table(res: dict) -> str:
    head = (f"{res['bench']} {res['preset']} {res['device']} {res['dtype']} threads={res['threads']}: "
            f"p50 {res['p50_ms']:.1f} ms, p95 {res['p95_ms']:.1f} ms")
    if res["bench"] == "train":
        head += f", {res['samples_per_s']:.2f} samples/s"
    rows = [f"  {k:<12} {v['p50_ms']:9.2f} {v['p95_ms']:9.2f}" for k, v in res["stages"].items()]
    rows += [f"  vs {n:<9} p50 {c['p50_ms']:.1f} ms  ({res['ratio_p50'][n]:.2f}x this)"
             for n, c in res.get("compare", {}).items()]
    return "\n".join([head, f"  {'stage':<12} {'p50 ms':>9} {'p95 ms':>9}", *rows])


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
