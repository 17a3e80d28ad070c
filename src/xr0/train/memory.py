"""Training-memory planner: the peak memory per GPU of a fine-tuning setup, computed, not measured.

`xr0 bench train --preset xr0-4b --plan` prints one row per setup: what to tune (full / frozen VLM / LoRA), with or
without activation checkpointing, single process or DDP or FSDP2 over N GPUs, at a per-GPU batch. Everything here is
a pure function of parameter counts (`count_parts`, taken from the real modules built on the meta device, so
nothing is allocated), the model dimensions (`Dims.from_config`) and the batch's sequence lengths (`Workload`).
`tests/test_memory.py` checks the per-layer activation formulas against the tensors autograd really saves
(saved-tensor hooks on the tiny model, fp32 and bf16 autocast, full / frozen / LoRA, padded or not: within 3 %);
`benchmarks/train_memory.py` checks whole plans against the peak RSS of real training steps on the CPU
(docs/training.md, "Memory plan").

Setups, as the trainer runs them (docs/training.md "Trainer" and "Fine-tuning"):
- full: `--recipe post-sync` / `post-async`: vision tower, VLM text layers and DiT train; the token embeddings do not.
- frozen: `--recipe stage2`: only the DiT trains; the VLM runs under no_grad (its K/V are constants).
- lora: `--lora-rank r`: adapters y = W x + (alpha/r) B(A x) (xr0.train.lora, no dropout) on q/k/v/o/gate/up/down
  of every VLM text layer; all of `vlm.*` but the adapters is frozen (vision included: nothing in it needs a
  gradient, so it saves no activations); the DiT trains fully. DDP only: the trainer refuses `--fsdp` with LoRA.

Assumptions, each a term below:
- Optimiser: AdamW with fp32 master weights (4 B), fp32 grads (4 B) and fp32 exp_avg + exp_avg_sq (8 B) per
  trainable parameter; frozen parameters hold no grad or state. Parameters that never get a gradient (the last VLM
  layer's o_proj, post-attention norm and MLP and the final norm: they feed no K/V the DiT reads; in LoRA that
  layer's o/gate/up/down adapters) get no grad and no state (AdamW skips them).
- Frozen weights are held in bf16 under bf16 autocast (`TrainingSetup.frozen_bf16`; the trainer does this with
  `--freeze` or `--lora-rank`, not with a recipe's own freezing alone, and never under FSDP, which keeps them fp32
  and sharded), fp32 otherwise. With a bf16 embedding (or FSDP's bf16 gathering) the VLM residual stream is bf16.
- bf16 = torch.autocast: linears run in bf16 and save bf16 (cast) inputs, one cast per consuming linear; the
  RMSNorms compute in fp32 and save fp32 copies (HF's Qwen3 RMSNorm, the DiT's F.rms_norm on x.float()); on a GPU
  LayerNorm runs in fp32 too (CUDA autocast's fp32 list), on the CPU in bf16. Autocast keeps a bf16 copy of every
  trainable fp32 linear weight from its forward to its backward (2 B/param, `autocast_copies`), except under FSDP,
  whose bf16 MixedPrecisionPolicy (distributed.shard with --dtype bf16) gathers bf16 weights directly.
- Attention (`TrainingSetup.attn`): "gpu" = the flash / memory-efficient SDPA kernels: q, k, v, out and logsumexp saved,
  no L x L matrix; a mask is saved as one float copy per call. "cpu" = this CPU's torch: torch 2.13's CPU SDPA is
  a flash kernel too (checked with saved-tensor hooks: q, k, v, out, logsumexp, the mask as a float copy), so it
  saves the same; only LayerNorm precision (above) and AdamW (below) differ. "math" = SDPA's math fallback (older
  torch, unsupported shapes): it saves the softmax probabilities, heads x Lq x Lk per call, instead of out + lse.
- `Workload.padded` (prompts of different lengths in one batch, the usual case): transformers then passes a padding
  mask, so SDPA gets the VLM's K/V repeated to all query heads (repeat_kv) and a float L x L mask per layer;
  without padding it uses enable_gqa (no copies).
- Activations are derived per layer type from the config (hidden size, heads, KV heads, head dim, intermediate
  size) and the sequence lengths: VLM = prompt + image tokens (the processor's prompt for the preset's cameras and
  image_size), vision = 16 x 16 patches per camera, DiT = chunk_len + 2 (sink, state) tokens per sample, each sample
  repeated `repeat` = 4 times. Each DiT layer's SDPA saves [VLM K/V ; its own K/V] concatenated. The
  repeat_interleave'd copy of the K/V cache (and the GQA repeat to the DiT's heads, if any) lives until the loss
  returns: a forward-time transient, or saved as the checkpointed DiT layers' inputs.
- The last VLM layer's post-attention part and the final norm are freed when the VLM forward returns (their output
  is unused), so they are not counted.
- Activation checkpointing (`--grad-checkpointing`: non-reentrant checkpoints of every VLM text layer, vision block
  and DiT layer): each layer's input is kept (DiT layers: also their K/V inputs), and the K/V cache of every VLM
  layer (an argument of the replays); while a layer runs, forward or replayed in backward, its full activations
  exist once more. Patch embedding, mergers and the DiT's projectors and heads are not checkpointed.
- Single GPU: the trainer does not wrap the model (no DDP buckets). DDP (N > 1): a full replica plus gradient
  buckets (gradient_as_bucket_view=False: a second fp32 copy of the trainable grads, allocated once).
- FSDP2 (distributed.shard): parameters, grads and optimiser state sharded over N. Units: every VLM text layer,
  vision block, DiT attn and DiT mlp; the root holds the rest (embeddings, patch embedding, mergers, final norm,
  DiT norms, adaLN tables and projectors) and stays gathered for the whole step. Text layers use
  reshard_after_forward=False: ALL of them stay gathered from their forward until their backward. Other units are
  gathered two at a time (running + prefetched), and in backward one unit's unsharded grads plus its reduce-scatter
  buffer exist at a time. Gathered copies are bf16 under --dtype bf16 (the MixedPrecisionPolicy), fp32 otherwise.
- Peak: the largest of three moments. (1) End of forward: weights + optimiser state + all saved activations + the
  transients above. (2) Backward, which runs DiT -> VLM text layers -> vision -> the rest and frees each part's
  saved activations (and autocast copies, and FSDP's gathered text layers) as it produces that part's grads: both
  change evenly within a part, so their sum peaks at a part boundary; plus a working set (one layer's activations
  for the activation grads, the K/V grads the DiT sends the VLM layers, with checkpointing one replayed layer).
  (3) The optimiser step: weights + grads + state + AdamW's temporaries (`TrainingSetup.adamw`): torch's default on
  CUDA, the foreach implementation, allocates sqrt(exp_avg_sq) for all parameters at once (4 B/param); fused AdamW none;
  on the CPU AdamW runs per tensor (two temporaries of the largest). zero_grad(set_to_none=True) frees the grads
  after the step.
- The table's columns are the bytes of each kind alive at that peak moment, so they add up to the total: "grads" is
  0 at a peak at the start of backward (DDP buckets excepted), "activations" 0 at a peak in the optimiser step.
  `Row.full` keeps every term at full size. Not counted: allocator fragmentation and the CUDA context (`fits` adds
  10 % and 1 GiB), NCCL buffers, the data loader, small per-sample tensors of the loss.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

GIB = 2**30
TUNES = ("full", "frozen", "lora")
STRATEGIES = ("ddp", "fsdp")
ATTENTION = ("gpu", "cpu", "math")
PARTS = ("expert", "text", "vision", "embeddings")  # backward order: the DiT first, the root's rest last
FP32 = 4
FIRST_LINEARS = ("t_embedder.mlp.0", "state_projector.layers.0", "action_projector.layers.0")


# ---------------------------------------------------------------------- inputs
@dataclass(frozen=True)
class Counts:
    """Parameters per part, from the real modules (`count_parts`).

    vision: vlm.model.visual.*; text: the VLM text layers + final norm; embeddings: the input token embeddings (tied
    to lm_head); expert: the DiT and everything else outside `vlm.`. linear: nn.Linear weights per part (what
    autocast copies and keeps for backward). dead: parameters of the full setup that never get a gradient.
    text_layers: all text decoder layers (the final norm excluded); text_layer, vision_block, dit_unit: the largest
    FSDP2 unit of each kind; root: parameters in no unit. largest: the largest tensor per part.
    """

    vision: int
    text: int
    embeddings: int
    expert: int
    linear: dict = field(default_factory=dict)
    dead: int = 0
    text_layers: int = 0
    text_layer: int = 0
    vision_block: int = 0
    dit_unit: int = 0
    root: int = 0
    largest: dict = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.vision + self.text + self.embeddings + self.expert


@dataclass(frozen=True)
class Dims:
    """The dimensions the activation formulas need (`from_config`)."""

    # VLM text
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    layers: int
    # vision
    v_hidden: int
    v_heads: int
    v_intermediate: int
    v_depth: int
    deepstack: int
    patch_dim: int  # values per patch: channels x temporal patch x patch x patch
    # DiT
    e_hidden: int
    e_heads: int
    e_head_dim: int
    e_intermediate: int
    e_layers: int
    time_dim: int
    chunk_len: int
    action_dim: int

    @classmethod
    def from_config(cls, config) -> "Dims":
        t, v, e = config.vlm["text_config"], config.vlm["vision_config"], config.expert
        return cls(hidden=t["hidden_size"], heads=t["num_attention_heads"], kv_heads=t["num_key_value_heads"],
                   head_dim=t["head_dim"], intermediate=t["intermediate_size"], layers=t["num_hidden_layers"],
                   v_hidden=v["hidden_size"], v_heads=v["num_heads"], v_intermediate=v["intermediate_size"],
                   v_depth=v["depth"], deepstack=len(v.get("deepstack_visual_indexes", [])),
                   patch_dim=v.get("in_channels", 3) * v.get("temporal_patch_size", 2) * v.get("patch_size", 16) ** 2,
                   e_hidden=e.hidden_size, e_heads=e.num_heads, e_head_dim=e.head_dim,
                   e_intermediate=e.intermediate_size, e_layers=e.num_layers, time_dim=e.time_embed_dim,
                   chunk_len=config.chunk_len, action_dim=config.action_dim)

    def lora_params(self, rank: int) -> int:
        """Adapter parameters r x (in + out) over the seven linears of every text layer."""
        h, q, kv, i = self.hidden, self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate
        per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
        return rank * per_layer * self.layers

    def lora_dead(self, rank: int) -> int:
        """Adapters of the last layer that get no gradient: o, gate, up, down."""
        h, q, i = self.hidden, self.heads * self.head_dim, self.intermediate
        return rank * ((q + h) + 2 * (h + i) + (i + h))


@dataclass(frozen=True)
class Workload:
    """Per-GPU batch and sequence lengths. vlm_tokens: the (padded) prompt length, text + image tokens; patches:
    vision patches per sample (cameras x (H/16) x (W/16))."""

    batch: int
    vlm_tokens: int
    patches: int
    images: int = 2  # images (cameras) per sample; vision attention runs per image
    repeat: int = 4
    padded: bool = True


@dataclass(frozen=True)
class TrainingSetup:
    """How one fine-tuning run trains: what is tuned, activation checkpointing, the parallel strategy over how many
    GPUs, the precision, the attention kernels, the LoRA rank, where frozen weights live and which AdamW runs."""

    tune: str = "full"  # full | frozen | lora
    checkpointing: bool = False
    strategy: str = "ddp"  # ddp (single process when gpus == 1) | fsdp
    gpus: int = 1
    dtype: str = "bf16"  # bf16 | fp32
    attn: str = "gpu"  # gpu | cpu | math
    lora_rank: int = 16
    frozen_bf16: bool | None = None  # frozen weights held in bf16; None: under bf16 unless FSDP (the trainer's rule)
    adamw: str | None = None  # foreach | fused | single; None: what torch picks (foreach on CUDA, single on the CPU)

    def __post_init__(self):
        if self.tune not in TUNES or self.strategy not in STRATEGIES or self.attn not in ATTENTION:
            raise ValueError(f"bad setup {self}")
        if self.dtype not in ("bf16", "fp32") or self.gpus < 1 or (self.tune == "lora" and self.lora_rank < 1):
            raise ValueError(f"bad setup {self}")
        if self.adamw not in (None, "foreach", "fused", "single"):
            raise ValueError(f"bad setup {self}")

    @property
    def optimizer_impl(self) -> str:
        return self.adamw or ("single" if self.attn == "cpu" else "foreach")

    @property
    def frozen_in_bf16(self) -> bool:
        """The trainer holds frozen weights in the autocast dtype with --freeze/--lora-rank, never under FSDP."""
        if self.frozen_bf16 is not None:
            return self.frozen_bf16 and self.dtype == "bf16"
        return self.dtype == "bf16" and self.strategy != "fsdp"

    @property
    def label(self) -> str:
        tune = f"lora r={self.lora_rank}" if self.tune == "lora" else self.tune
        par = "single" if self.gpus == 1 and self.strategy == "ddp" else f"{self.strategy} x{self.gpus}"
        return f"{tune}{' +ckpt' if self.checkpointing else ''}, {par}"


@dataclass
class Row:
    """One setup's plan, in bytes. The six columns are what is alive at the peak (they sum to total); `full` holds
    every term at its full size, `phase` says where the peak is (forward end, backward, optimiser step)."""

    setup: TrainingSetup
    weights: int
    grads: int
    optimizer: int
    activations: int
    other: int
    total: int
    phase: str
    trainable: int
    full: dict = field(default_factory=dict)

    def gib(self) -> dict:
        return {k: round(getattr(self, k) / GIB, 2) for k in ("weights", "grads", "optimizer", "activations", "other",
                                                               "total")}

    def to_dict(self) -> dict:
        return dict(setup=self.setup.label, **dataclasses.asdict(self.setup), phase=self.phase,
                    trainable=self.trainable, **{f"{k}_gib": v for k, v in self.gib().items()},
                    bytes={k: getattr(self, k) for k in ("weights", "grads", "optimizer", "activations", "other",
                                                          "total")},
                    full_gib={k: round(v / GIB, 3) for k, v in self.full.items()})


# ---------------------------------------------------------------------- counts from the real modules
def count_parts(model) -> Counts:
    """Counts of an XR0Model (build it under `torch.device("meta")`: shapes only, nothing allocated)."""
    from torch import nn

    def part(name: str) -> str:
        if name.endswith("embed_tokens.weight") or name == "vlm.lm_head.weight":
            return "embeddings"
        if name.startswith("vlm.model.visual."):
            return "vision"
        if name.startswith("vlm."):
            return "text"
        return "expert"

    sizes: dict[str, int] = {p: 0 for p in PARTS}
    largest: dict[str, int] = {p: 0 for p in PARTS}
    seen = set()
    for name, p in model.named_parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        k = part(name)
        sizes[k] += p.numel()
        largest[k] = max(largest[k], p.numel())
    linear = {p: 0 for p in PARTS}
    for name, mod in model.named_modules():
        # a linear whose input needs no gradient (the first layer of the time/state/action projectors) does not
        # keep its weight for backward
        if isinstance(mod, nn.Linear) and not name.endswith(FIRST_LINEARS):
            linear[part(name + ".weight")] += mod.weight.numel()
    n = lambda m: sum(q.numel() for q in m.parameters())  # noqa: E731
    lm = model.vlm.model.language_model
    last = lm.layers[-1]
    dead = n(last.self_attn.o_proj) + n(last.post_attention_layernorm) + n(last.mlp) + n(lm.norm)
    units = [*lm.layers, *model.vlm.model.visual.blocks, *(m for layer in model.dit.layers
                                                            for m in (layer.attn, layer.mlp))]
    return Counts(vision=sizes["vision"], text=sizes["text"], embeddings=sizes["embeddings"], expert=sizes["expert"],
                  linear=linear, dead=dead, text_layers=sum(n(m) for m in lm.layers),
                  text_layer=max(n(m) for m in lm.layers),
                  vision_block=max(n(m) for m in model.vlm.model.visual.blocks),
                  dit_unit=max(n(m) for layer in model.dit.layers for m in (layer.attn, layer.mlp)),
                  root=sum(sizes.values()) - sum(n(m) for m in units), largest=largest)


def meta_model(config):
    """The XR0Model of a PolicyConfig on the meta device (no memory, ~0.2 s for xr0-4b)."""
    import torch

    from ..model.vla import XR0Model

    with torch.device("meta"):
        return XR0Model(config)


# ---------------------------------------------------------------------- activations per layer
@dataclass(frozen=True)
class _Bytes:
    a: int  # activation (autocast) dtype
    f: int = FP32
    autocast: bool = False
    ln_fp32: bool = False  # LayerNorm runs in fp32 (CUDA autocast)
    math: bool = False  # math attention: probabilities saved
    r: int = FP32  # the VLM residual stream: bf16 when the embedding's output is (frozen in bf16, or FSDP-gathered)


def _bytes(setup: TrainingSetup) -> _Bytes:
    bf16 = setup.dtype == "bf16"
    residual = 2 if bf16 and (setup.frozen_in_bf16 or setup.strategy == "fsdp") else FP32
    return _Bytes(a=2 if bf16 else 4, autocast=bf16, ln_fp32=bf16 and setup.attn != "cpu",
                  math=setup.attn == "math", r=residual)


def text_layer_bytes(d: Dims, w: Workload, b: _Bytes, lora_rank: int = 0, first: bool = False) -> dict[str, float]:
    """Saved-for-backward bytes of one VLM text layer, per token: {"attn": ..., "post": ...} where "post" is the
    post-attention part (freed early in the last layer). lora_rank > 0: the base weights are frozen (bf16 under
    autocast), the adapters train; `first`: the first layer (its input needs no gradient under LoRA)."""
    a, f = b.a, b.f
    h, q, kv, i = d.hidden, d.heads * d.head_dim, d.kv_heads * d.head_dim, d.intermediate
    L = w.vlm_tokens
    if lora_rank:
        # RMSNorm with a frozen weight: its fp32 input copy and its output (shared by the consumers, no cast)
        norm1 = a * h if first else (f + a) * h
        norm2 = (f + a) * h
        q_side = (f + a) * q  # q_proj output (fp32 copy for the norm), the rotated q
        k_side = (f + a) * kv
    else:
        # RMSNorm with a trainable fp32 weight: fp32 input copy, the normalised value in the input (residual)
        # dtype, and the output cast once per consuming linear (q/k/v, gate/up) under autocast (shared without it)
        c1, c2 = (3, 2) if b.autocast else (1, 1)
        norm1 = (f + b.r + c1 * a) * h
        norm2 = (f + b.r + c2 * a) * h
        q_side = (f + 2 * a) * q  # q_proj output (fp32), normalised q, rotated q
        k_side = (f + 2 * a) * kv
    v_side = a * kv
    if w.padded:  # repeat_kv: SDPA saves K/V repeated to every query head, and a float mask
        k_side += a * q - a * kv
        v_side += a * q - a * kv
        mask = a * L
    else:
        mask = 0
    sdpa = _sdpa(b, d.heads, d.head_dim, L)
    attn = norm1 + q_side + k_side + v_side + sdpa + mask + f * (2 + d.heads + d.kv_heads)
    post = norm2 + 4 * a * i
    if lora_rank:
        attn += 3 * a * lora_rank  # each adapter's A x (saved by B)
        post += 4 * a * lora_rank
    return {"attn": attn, "post": post}


def _sdpa(b: _Bytes, heads: int, head_dim: int, keys: int) -> float:
    """SDPA's own saves per query token beyond q/k/v: out + logsumexp (flash), or the probabilities (math)."""
    if b.math:
        return b.a * heads * keys
    return b.a * heads * head_dim + b.f * heads


def vision_bytes(d: Dims, w: Workload, b: _Bytes) -> dict[str, float]:
    """Saved bytes per patch: {"block": one vision block, "rest": patch embedding + position embedding + mergers}."""
    a, f = b.a, b.f
    vh, vi = d.v_hidden, d.v_intermediate
    per_image = w.patches / w.images
    ln = (f + a) if b.ln_fp32 else 2 * a  # LayerNorm: (fp32 copy of) its input + its output (cast for the linear)
    # 2 LayerNorms, the qkv output (v is a view of it), rotated q and k, the attention output's copy (proj input),
    # SDPA's own saves, the MLP, the LayerNorm statistics
    block = (2 * ln + 6 * a) * vh + _sdpa(b, d.v_heads, vh // d.v_heads, per_image) + 2 * a * vi + 4 * f
    if b.ln_fp32:
        mergers = (d.deepstack + 1) * (f + 3 * a) * vh
    else:  # a block's input is the previous merger's saved input: counted once, in the block
        mergers = (3 * d.deepstack + 4) * a * vh
    rest = a * d.patch_dim + 4 * 8 + 4 * f + mergers
    return {"block": block, "rest": rest}


def dit_bytes(d: Dims, w: Workload, b: _Bytes) -> dict[str, float]:
    """Saved bytes of one DiT layer: {"token": per DiT token, "sample": per (repeated) sample (the mask and the
    concatenated [VLM ; DiT] K/V its SDPA saves)}, and the projectors/heads outside the layers ("rest_token" per
    action token, "rest_sample" per repeated sample)."""
    a, f = b.a, b.f
    H, qd, i = d.e_hidden, d.e_heads * d.e_head_dim, d.e_intermediate
    S = d.chunk_len + 2
    keys = w.vlm_tokens + S
    heads = (2 * f + 5 * a) if b.autocast else 8 * f  # q/k norm inputs (fp32), normalised q/k, rotated q, out, o_in
    token = (10 * f + 4 * a) * H + heads * qd + 4 * a * i + f * (4 + 2 * d.e_heads)
    if b.math:
        token += a * d.e_heads * keys - a * qd - f * d.e_heads
    sample = a * S * keys + 2 * a * qd * keys
    rest_token = 3 * a * H + (3 * a + 6 * f) * d.action_dim
    rest_sample = 6 * f * H * d.e_layers + 10 * a * H + a * d.time_dim
    return {"token": token, "sample": sample, "rest_token": rest_token, "rest_sample": rest_sample}


def kv_copies(d: Dims, w: Workload, b: _Bytes) -> tuple[float, float]:
    """(the r-times repeated K/V of the layers the DiT reads, the copy repeated to the DiT's heads under GQA or 0)."""
    per_head = 2 * w.batch * w.repeat * w.vlm_tokens * d.e_head_dim * b.a * d.e_layers
    gqa = d.e_heads if d.e_heads > d.kv_heads else 0
    return per_head * d.kv_heads, per_head * gqa


# ---------------------------------------------------------------------- the plan
def activations(d: Dims, w: Workload, setup: TrainingSetup) -> dict[str, float]:
    """Saved-for-backward bytes per part at the end of the forward (checkpointing included), the transient K/V
    repeat copy, and the working sets; the per-layer formulas are text_layer_bytes, vision_bytes, dit_bytes."""
    b = _bytes(setup)
    B, L, P = w.batch, w.vlm_tokens, w.patches
    tokens, patches = B * L, B * P
    samples = B * w.repeat
    S = d.chunk_len + 2
    ck = setup.checkpointing
    out = {"expert": 0.0, "text": 0.0, "vision": 0.0, "embeddings": 0.0}
    layer_full = {}  # one layer's full activations (the recompute buffer / activation-grad working set)

    dit = dit_bytes(d, w, b)
    one_dit = dit["token"] * samples * S + dit["sample"] * samples
    repeated, gqa = kv_copies(d, w, b)
    layer_full["dit"] = one_dit
    if ck:  # each layer's input (fp32 residual) and the K/V it reads (inputs of the checkpointed layer)
        out["expert"] = d.e_layers * b.f * d.e_hidden * samples * S + (gqa or repeated)
        transient_kv = repeated if gqa else 0.0
    else:
        out["expert"] = d.e_layers * one_dit
        transient_kv = repeated + gqa
    out["expert"] += dit["rest_token"] * samples * d.chunk_len + dit["rest_sample"] * samples

    if setup.tune != "frozen":
        r = setup.lora_rank if setup.tune == "lora" else 0
        layer = text_layer_bytes(d, w, b, r)
        one = (layer["attn"] + layer["post"]) * tokens
        layer_full["text"] = one
        if ck:  # each layer's input, and every layer's K/V: the cache object is an argument of the replays
            out["text"] = d.layers * (b.r * d.hidden + 2 * b.a * d.kv_heads * d.head_dim) * tokens
        else:
            first = text_layer_bytes(d, w, b, r, first=True)
            out["text"] = (d.layers - 1) * one + (first["attn"] + first["post"]) * tokens - layer["post"] * tokens
        out["text"] += tokens * 1  # the image-token mask of masked_scatter
    if setup.tune == "full":
        vis = vision_bytes(d, w, b)
        layer_full["vision"] = vis["block"] * patches
        per_block = b.a * d.v_hidden if ck else vis["block"]
        out["vision"] = (d.v_depth * per_block + vis["rest"]) * patches
    # the pixel values (fp32, or the frozen vision tower's bf16); in fp32 full tuning the patch embedding saves them
    out["inputs"] = 0.0 if setup.tune == "full" and not b.autocast else \
        patches * d.patch_dim * (b.f if setup.tune == "full" else b.a)
    biggest = max(layer_full.values())
    # backward working set: activation grads of one layer, and the K/V grads the DiT sends the VLM layers
    kv_grads = 0.0 if setup.tune == "frozen" else 2 * B * L * d.kv_heads * d.head_dim * b.f * d.e_layers
    out["working"] = biggest + kv_grads + (biggest if ck else 0.0)
    out["forward_working"] = biggest if ck else 0.0  # a checkpointed layer's activations while it runs
    out["kv_repeat"] = transient_kv
    return out


def plan(counts: Counts, dims: Dims, work: Workload, setup: TrainingSetup) -> Row:
    """One setup's peak memory per GPU (see the module docstring for every assumption)."""
    N = setup.gpus
    fsdp = setup.strategy == "fsdp"
    shard = (lambda x: math.ceil(x / N)) if fsdp else (lambda x: x)  # noqa: E731
    bf16 = setup.dtype == "bf16"
    frozen_bytes = 2 if setup.frozen_in_bf16 else 4
    lora = dims.lora_params(setup.lora_rank) if setup.tune == "lora" else 0
    train = {"expert": counts.expert, "text": 0, "vision": 0, "embeddings": 0}
    if setup.tune == "full":
        train.update(text=counts.text, vision=counts.vision)
    train["text"] += lora
    trainable = sum(train.values())
    frozen = counts.total + lora - trainable
    dead = {"full": counts.dead, "frozen": 0, "lora": dims.lora_dead(setup.lora_rank) if lora else 0}[setup.tune]
    live = {k: v - (dead if k == "text" else 0) for k, v in train.items()}  # params that get a gradient

    weights = shard(FP32 * trainable + frozen_bytes * frozen)
    grads_by_part = {k: shard(FP32 * v) for k, v in live.items()}
    grads = sum(grads_by_part.values())
    buckets = FP32 * trainable if (not fsdp and N > 1) else 0
    optimizer = shard(2 * FP32 * sum(live.values()))
    impl = setup.optimizer_impl
    if impl == "foreach":  # sqrt(exp_avg_sq) of all parameters at once
        step_temp = shard(FP32 * sum(live.values()))
    elif impl == "single":  # per tensor: two temporaries of the largest
        step_temp = 2 * FP32 * max([counts.largest.get(k, 0) for k, v in train.items() if v] + [0])
        if lora:
            step_temp = max(step_temp, 2 * FP32 * setup.lora_rank * max(dims.intermediate, dims.hidden))
    else:
        step_temp = 0

    act = activations(dims, work, setup)
    # autocast's bf16 copies of the trainable fp32 weights (not under FSDP's bf16 gathering)
    copies = {k: 0.0 for k in PARTS}
    if bf16 and not fsdp:
        lin = counts.linear
        copies["expert"] = 2 * lin.get("expert", counts.expert)
        if setup.tune == "full":
            copies["text"] = 2 * lin.get("text", counts.text)
            copies["vision"] = 2 * lin.get("vision", counts.vision)
        copies["text"] += 2 * lora
    # FSDP2: gathered copies
    gathered_text = gathered_root = fsdp_fwd = fsdp_bwd = 0.0
    if fsdp:
        g = 2 if bf16 else 4
        gathered_text = g * (counts.text_layers + lora)  # every text layer, from its forward to its backward
        gathered_root = g * counts.root  # the whole step
        unit = max(counts.vision_block, counts.dit_unit)
        grad_unit = {"full": max(unit, counts.text_layer), "frozen": counts.dit_unit,
                     "lora": max(counts.dit_unit, lora // dims.layers)}[setup.tune]
        fsdp_fwd = 2 * g * unit  # the running unit and the prefetched one
        fsdp_bwd = fsdp_fwd + 2 * g * grad_unit  # + one unit's unsharded grads and its reduce-scatter buffer

    persistent = weights + optimizer + buckets
    saved = {k: act[k] + copies[k] for k in PARTS}
    saved["text"] += gathered_text
    # (1) end of forward
    fwd = (persistent + sum(saved.values()) + act["inputs"] + act["kv_repeat"] + act["forward_working"]
           + gathered_root + fsdp_fwd)
    # (2) backward: parts in order; peak at a boundary
    best, best_k = -1.0, 0
    for k in range(len(PARTS) + 1):
        alive = sum(saved[p] for p in PARTS[k:]) + sum(grads_by_part[p] for p in PARTS[:k])
        if alive > best:
            best, best_k = alive, k
    bwd = persistent + best + act["inputs"] + act["working"] + gathered_root + fsdp_bwd
    # (3) optimiser step
    step = persistent + grads + step_temp
    total = max(fwd, bwd, step)
    if total == step:
        phase, g_now, a_now = "step", grads, 0.0
        other = step_temp
    elif total == fwd:
        phase, g_now, a_now = "forward", 0, sum(act[p] for p in PARTS) + act["inputs"]
        other = (sum(copies.values()) + gathered_text + act["kv_repeat"] + act["forward_working"] + gathered_root
                 + fsdp_fwd)
    else:
        done = PARTS[:best_k]
        phase = "backward" if best_k == 0 else f"backward after {'+'.join(done)}"
        g_now = sum(grads_by_part[p] for p in done)
        a_now = sum(act[p] for p in PARTS[best_k:]) + act["inputs"]
        other = (sum(copies[p] for p in PARTS[best_k:]) + (gathered_text if "text" not in done else 0)
                 + act["working"] + gathered_root + fsdp_bwd)
    full = dict(weights=weights, grads=grads, buckets=buckets, optimizer=optimizer, optimizer_step_temp=step_temp,
                autocast_copies=sum(copies.values()), fsdp_gathered_text=gathered_text,
                fsdp_gathered_root=gathered_root, fsdp_units_forward=fsdp_fwd, fsdp_units_backward=fsdp_bwd,
                kv_repeat=act["kv_repeat"], working=act["working"], forward_working=act["forward_working"],
                inputs=act["inputs"],
                **{f"activations_{p}": act[p] for p in PARTS if act[p]}, forward_peak=fwd, backward_peak=bwd,
                step_peak=step)
    return Row(setup=setup, weights=int(weights), grads=int(g_now + buckets), optimizer=int(optimizer),
               activations=int(a_now), other=int(other), total=int(total), phase=phase, trainable=int(trainable),
               full={k: int(v) for k, v in full.items()})


def table(counts: Counts, dims: Dims, work: Workload, gpus: tuple[int, ...] = (1, 8), dtype: str = "bf16",
          attn: str = "gpu", lora_rank: int = 16, tunes: tuple[str, ...] = TUNES) -> list[Row]:
    """Every setup: tune x checkpointing x (single | DDP | FSDP2) for each GPU count. One GPU is the single process
    the trainer runs without a wrapper; LoRA runs are DDP only (the trainer refuses --lora-rank with --fsdp)."""
    rows = []
    for n in gpus:
        for strategy in (("ddp",) if n == 1 else STRATEGIES):
            for tune in tunes:
                if tune == "lora" and strategy == "fsdp":
                    continue
                for ck in (False, True):
                    rows.append(plan(counts, dims, work, TrainingSetup(tune, ck, strategy, n, dtype, attn, lora_rank)))
    return rows


CARDS_GIB = (24, 80)  # 24 GB and 80 GB cards (about 24 and 80 GiB; an 80 GB H100 reports 79.6 GiB)
SLACK = 1.10  # allocator fragmentation on top of the planned live bytes
CONTEXT_GIB = 1.0  # CUDA context, cuBLAS workspaces


def fits(row: Row, card_gib: float) -> bool:
    """Planned total + 10 % allocator slack + 1 GiB CUDA context within the card."""
    return row.total / GIB * SLACK + CONTEXT_GIB <= card_gib


def format_table(rows: list[Row], cards_gib: tuple[float, ...] = CARDS_GIB) -> str:
    """A Markdown table in GiB per GPU; `fits` lists the cards it fits (`fits`: 10 % slack + 1 GiB context)."""
    head = "| setup | weights | grads | optimiser | activations | other | **total** | peak at | fits |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        g = r.gib()
        ok = ", ".join(f"{x:g} GB" for x in cards_gib if fits(r, x)) or "none"
        lines.append(f"| {r.setup.label} | {g['weights']:.1f} | {g['grads']:.1f} | {g['optimizer']:.1f} | "
                     f"{g['activations']:.1f} | {g['other']:.1f} | **{g['total']:.1f}** | {r.phase} | {ok} |")
    return "\n".join(lines)
