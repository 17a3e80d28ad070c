"""The DiT action expert (spec §2.3): reads the VLM's per-layer K/V and predicts a flow velocity per action slot.

Module names are the official checkpoint's (`dit.layers.{i}.attn.qkv_proj`, `state_projector.layers.0`, `sink`, ...),
so released weights load strictly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding, rotate_half

from ..config import ExpertConfig
from .flow import euler_sample, euler_times
from .masks import FIRST_ACTION


@dataclass
class VLMCache:
    """What the VLM hands the expert, its K/V cache (not the clean action prefix): post-RoPE, post-k-norm K/V of
    the layers the expert reads, plus positions.

    keys/values: one (B, H, L, Dh) tensor per expert layer (VLM layer L_vlm - N + i for expert layer i).
    position_ids: (3, B, L) M-RoPE ids of the prompt. pad_mask: (B, L) bool, True on real tokens.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    position_ids: torch.Tensor
    pad_mask: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.pad_mask.shape[0]

    def max_position(self) -> torch.Tensor:
        """(3, B) per-axis maximum position over real (non-padding) tokens: P in spec §2.4."""
        pos = self.position_ids.masked_fill(~self.pad_mask[None], -1)
        return pos.amax(dim=-1)

    def repeat_interleave(self, r: int) -> "VLMCache":
        """Reuse one VLM pass for r noise/time draws per sample (training_repeat)."""
        if r == 1:
            return self
        rep = lambda x, d=0: x.repeat_interleave(r, dim=d)  # noqa: E731
        return VLMCache([rep(k) for k in self.keys], [rep(v) for v in self.values],
                      rep(self.position_ids, 1), rep(self.pad_mask))


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # fp32 statistics as in the reference; the fused op is bit-identical and ~2x fewer kernel launches.
        return self.weight * F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype)


class Projector(nn.Module):
    """The official `MLPProjector(d_in, d_out, num_layers=2)`: Linear(d_in -> d_out) -> GELU(tanh) ->
    Linear(d_out -> d_out), no biases, as `layers.0` / `layers.2`. Its hidden width is its output width, so the
    output head (1024 -> 32) is [32, 1024] + [32, 32]."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(d_in, d_out, bias=False), nn.GELU(approximate="tanh"),
                                    nn.Linear(d_out, d_out, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> 1000 t -> sinusoid [cos, sin] (max period 1e4) -> Linear -> SiLU -> Linear.

    1000 t is computed in t's dtype, as the official code does in the action dtype: a bf16 model embeds
    bf16(bf16(t) * 1000) (t = 0.2 -> 200.0, t = 0.6 -> 600.0, t = 0.4 -> 400.0; 0.37 -> 370.0 exactly by chance),
    an fp32 model the fp32 product. ActionExpert.modulation_table hands it t in the model's dtype."""

    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden, bias=False), nn.SiLU(), nn.Linear(hidden, hidden, bias=False))

    def sinusoid(self, t: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
        args = (t * 1000).float()[:, None] * freqs[None]
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.sinusoid(t).to(self.mlp[0].weight.dtype))


class Linear1(nn.Module):
    """A single Linear under the name `layers.0` (the official `t_projector`)."""

    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(d_in, d_out, bias=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ExpertAttention(nn.Module):
    """Joint attention: the expert's queries over [VLM K/V of one layer ; the expert tokens' own K/V]."""

    def __init__(self, cfg: ExpertConfig):
        super().__init__()
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        width = cfg.num_heads * cfg.head_dim
        self.qkv_proj = nn.Linear(cfg.hidden_size, 3 * width, bias=True)
        self.o_proj = nn.Linear(width, cfg.hidden_size, bias=False)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_eps)

    def forward(self, x, vlm_k, vlm_v, cos, sin, mask):
        B, S, _ = x.shape
        q, k, v = self.qkv_proj(x).view(B, S, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k = self.q_norm(q), self.k_norm(k)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = torch.cat([vlm_k.to(k.dtype), k], dim=2)  # vlm_k/v already repeated to num_heads (ActionExpert.prepare)
        v = torch.cat([vlm_v.to(v.dtype), v], dim=2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(out.transpose(1, 2).reshape(B, S, -1))


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ExpertLayer(nn.Module):
    """Sandwich-norm DiT block with adaLN-single modulation.

    `mod` (B, 6, 1, H) holds this layer's rows shift/scale/gate for attention, then for the MLP, with the layer's
    `adaln_table` already added and 1 already added to the two scale rows (see ActionExpert.modulation_table).
    """

    def __init__(self, cfg: ExpertConfig):
        super().__init__()
        h = cfg.hidden_size
        self.attn = ExpertAttention(cfg)
        self.mlp = SwiGLU(h, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(h, cfg.rms_eps)
        self.middle_layernorm = RMSNorm(h, cfg.rms_eps)
        self.post_layernorm = RMSNorm(h, cfg.rms_eps)
        self.final_layernorm = RMSNorm(h, cfg.rms_eps)
        self.adaln_table = nn.Parameter(torch.randn(6, h) / math.sqrt(h))

    def forward(self, x, mod, vlm_k, vlm_v, cos, sin, mask):
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = mod.unbind(1)
        h = x
        x = torch.addcmul(shift_a, self.input_layernorm(x), scale_a)  # x * (1 + scale) + shift
        x = self.middle_layernorm(torch.addcmul(h, gate_a, self.attn(x, vlm_k, vlm_v, cos, sin, mask)))
        h = x
        x = torch.addcmul(shift_m, self.post_layernorm(x), scale_m)
        return self.final_layernorm(torch.addcmul(h, gate_m, self.mlp(x)))


class ExpertStack(nn.Module):
    """Holds the layers under the official name `dit.layers.{i}`."""

    def __init__(self, cfg: ExpertConfig):
        super().__init__()
        self.layers = nn.ModuleList(ExpertLayer(cfg) for _ in range(cfg.num_layers))


@dataclass
class ExpertContext:
    """Everything about one expert call that does not change across denoising steps (computed once per chunk)."""

    cache: VLMCache
    state_token: torch.Tensor  # (B, 1, H)
    cos: torch.Tensor  # (B, 1, S, Dh)
    sin: torch.Tensor
    mask: torch.Tensor  # (B, 1, S, L + S) bool
    action_mask: torch.Tensor  # (B, T, D): the DiT's input is multiplied by it (its output is not)
    prefix_len: int
    velocity_mask: torch.Tensor | None = None  # (B, T, D): 0 on the prefix rows, 1 elsewhere (derived)

    def __post_init__(self):
        # As the official dit_forward: the output's prefix rows are 0, dims the action mask drops stay free (the
        # server zeroes them when decoding). One multiply per step instead of a masked write: static shapes, and
        # one graph serves every prefix length.
        if self.velocity_mask is None:
            self.velocity_mask = torch.ones_like(self.action_mask)
            self.velocity_mask[:, : self.prefix_len] = 0


class ActionExpert(nn.Module):
    """The flow-matching DiT: `step` is one pass, `velocity` one pass at times t. Subclassed by XR0Model, so its
    parameter names sit at the checkpoint's top level (XR0Model's forward is the training loss; the DiT pass is
    always called as `step`)."""

    def __init__(self, cfg: ExpertConfig, action_dim: int, state_dim: int, text_config):
        super().__init__()
        h = cfg.hidden_size
        self.expert_config = cfg
        self.dit = ExpertStack(cfg)
        self.state_projector = Projector(state_dim, h)
        self.action_projector = Projector(action_dim, h)
        self.action_output_layer = Projector(h, action_dim)
        self.t_embedder = TimestepEmbedder(h, cfg.time_embed_dim)
        self.t_projector = Linear1(h, 6 * h)
        self.sink = nn.Embedding(1, h)
        # Qwen3-VL's own text rotary module: with all three M-RoPE axes equal it is plain 1-D RoPE (theta 5e6).
        self.rotary = Qwen3VLTextRotaryEmbedding(text_config)
        self.checkpoint_layers = False  # activation checkpointing: recompute each DiT layer in backward

    def prepare(self, cache: VLMCache, state: torch.Tensor, action_mask: torch.Tensor, self_mask: torch.Tensor,
                positions: torch.Tensor, prefix_len: int) -> ExpertContext:
        """Precompute what every denoising step shares: state token, RoPE tables, the full boolean mask, and the
        VLM K/V repeated to the DiT's head count where it has more heads than the VLM has KV heads (GQA)."""
        dtype = self.sink.weight.dtype
        B = cache.batch_size
        group = self.expert_config.num_heads // cache.keys[0].shape[1]
        if group > 1:  # the official repeat_kv: head h of the DiT reads VLM KV head h // group
            cache = VLMCache([k.repeat_interleave(group, dim=1) for k in cache.keys],
                             [v.repeat_interleave(group, dim=1) for v in cache.values],
                             cache.position_ids, cache.pad_mask)
        state_token = self.state_projector(state.to(dtype)).unsqueeze(1)
        cos, sin = self.rotary(state_token, positions)
        S = self_mask.shape[-1]
        mask = torch.cat([cache.pad_mask[:, None, None, :].expand(B, 1, S, -1),
                          self_mask.expand(B, 1, S, S)], dim=-1)
        return ExpertContext(cache, state_token, cos.unsqueeze(1).to(dtype), sin.unsqueeze(1).to(dtype), mask,
                             action_mask, prefix_len)

    def modulation_table(self, t: torch.Tensor) -> torch.Tensor:
        """Times (N,) -> every layer's adaLN rows (num_layers, N, 6, 1, H), `1 +` already applied to the scales.

        Depends on t only, so inference computes it once per chunk for the fixed Euler times (one pass through the
        6H-wide t_projector instead of one per step) and the DiT steps just index it.
        """
        time_mod = self.t_projector(self.t_embedder(t.to(self.sink.weight.dtype))).view(t.shape[0], 6, -1)
        tables = torch.stack([layer.adaln_table for layer in self.dit.layers])  # (num_layers, 6, H)
        plus_one = torch.tensor([0, 1, 0, 0, 1, 0], dtype=time_mod.dtype, device=time_mod.device)[:, None]
        return (time_mod[None] + tables[:, None] + plus_one).unsqueeze(3)

    def step(self, ctx: ExpertContext, x: torch.Tensor, mod: torch.Tensor,
             return_hidden: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """One DiT pass: the velocity (B, T, D) for actions x (B, T, D), zero on the prefix rows, given the adaLN
        rows `mod` of modulation_table(t) (num_layers, B, 6, 1, H). return_hidden=True also returns the last
        hidden states (B, 2 + T, H) of [sink, state, actions]."""
        dtype = self.sink.weight.dtype
        B = x.shape[0]
        actions = self.action_projector((x * ctx.action_mask).to(dtype))
        h = torch.cat([self.sink.weight.expand(B, 1, -1), ctx.state_token, actions], dim=1)
        recompute = self.checkpoint_layers and self.training and torch.is_grad_enabled()
        for layer, layer_mod, k, v in zip(self.dit.layers, mod, ctx.cache.keys, ctx.cache.values):
            if recompute:
                h = checkpoint(layer, h, layer_mod, k, v, ctx.cos, ctx.sin, ctx.mask, use_reentrant=False)
            else:
                h = layer(h, layer_mod, k, v, ctx.cos, ctx.sin, ctx.mask)
        velocity = self.action_output_layer(h[:, FIRST_ACTION:]).to(x.dtype) * ctx.velocity_mask
        return (velocity, h) if return_hidden else velocity

    def velocity(self, ctx: ExpertContext, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """step() at times t (B,)."""
        return self.step(ctx, x, self.modulation_table(t))


class StaticDenoiser:
    """The whole Euler loop on buffers whose shapes and addresses never change, for CUDA-graph replay.

    Built for a batch size, a VLM prompt capacity `max_len` (shorter prompts are right-padded; the padding is masked
    out), the chunk length and the step count. Each call copies one chunk's context into the buffers and runs the
    loop: eagerly on CPU (same numbers as ActionExpert.step), or on CUDA by replaying a graph captured on the
    first call, which removes the launch overhead of steps x layers x ~30 kernels. The modulation table is computed
    once here, so rebuild after changing the weights.
    """

    def __init__(self, expert: ActionExpert, batch: int, max_len: int, chunk_len: int, action_dim: int,
                 steps: int = 5, cuda_graph: bool | None = None):
        cfg, w = expert.expert_config, expert.sink.weight
        dev, dtype = w.device, w.dtype
        S = chunk_len + FIRST_ACTION
        self.expert, self.steps, self.max_len, self.shape = expert, steps, max_len, (batch, chunk_len, action_dim)
        self.warned = False  # a chunk that does not fit has been logged
        self.cuda_graph = dev.type == "cuda" if cuda_graph is None else cuda_graph
        if self.cuda_graph and dev.type != "cuda":
            raise ValueError("cuda_graph=True needs the model on a CUDA device")
        kv = lambda: torch.zeros(batch, cfg.num_heads, max_len, cfg.head_dim, device=dev, dtype=dtype)  # noqa: E731
        with torch.no_grad():
            keys, values = [kv() for _ in range(cfg.num_layers)], [kv() for _ in range(cfg.num_layers)]
            pad = torch.zeros(batch, max_len, dtype=torch.bool, device=dev)  # pad mask and positions: not read by
            positions = torch.zeros(3, batch, max_len, dtype=torch.long, device=dev)  # the DiT pass (see `mask`)
            rope = lambda: torch.zeros(batch, 1, S, cfg.head_dim, device=dev, dtype=dtype)  # noqa: E731
            amask = torch.zeros(batch, chunk_len, action_dim, device=dev)
            self.ctx = ExpertContext(VLMCache(keys, values, positions, pad),
                                     torch.zeros(batch, 1, cfg.hidden_size, device=dev, dtype=dtype), rope(), rope(),
                                     torch.zeros(batch, 1, S, max_len + S, dtype=torch.bool, device=dev), amask, 0,
                                     torch.zeros_like(amask))
            self.times = euler_times(steps, batch, dev)
            self.table = expert.modulation_table(self.times.flatten()).unflatten(1, (steps, batch))
            self.x = torch.zeros(batch, chunk_len, action_dim, device=dev)  # fp32, like the eager loop after step 1
            self.out = torch.zeros_like(self.x)
        self.graph = None

    def fits(self, ctx: ExpertContext, noise: torch.Tensor, steps: int) -> bool:
        return (steps == self.steps and tuple(noise.shape) == self.shape
                and ctx.cache.keys[0].shape[2] <= self.max_len and noise.device == self.x.device)

    @torch.no_grad()
    def load(self, ctx: ExpertContext, noise: torch.Tensor, prefix_actions: torch.Tensor | None = None) -> None:
        """Copy one chunk's inputs into the buffers (VLM K/V right-padded to max_len, mask columns to match)."""
        L, c = ctx.cache.keys[0].shape[2], self.ctx
        if L > self.max_len:
            raise ValueError(f"prompt has {L} VLM tokens, more than this denoiser's max_len={self.max_len}")
        for dst, src in zip(c.cache.keys + c.cache.values, ctx.cache.keys + ctx.cache.values):
            dst[:, :, :L].copy_(src)
            dst[:, :, L:].zero_()  # masked, but must be finite: 0 * NaN would leak through the softmax
        c.mask.zero_()
        c.mask[..., :L].copy_(ctx.mask[..., :L])
        c.mask[..., self.max_len:].copy_(ctx.mask[..., L:])
        for name in ("state_token", "cos", "sin", "action_mask", "velocity_mask"):
            getattr(c, name).copy_(getattr(ctx, name))
        self.x.copy_(noise)
        if prefix_actions is not None:
            self.x[:, : prefix_actions.shape[1]].copy_(prefix_actions)

    def _loop(self) -> None:
        self.out.copy_(euler_sample(lambda x, t, k: self.expert.step(self.ctx, x, self.table[:, k]),
                                    self.x, self.steps, times=self.times))

    def _capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up off the capture: lazy cuBLAS/attention initialisation must not be recorded
                self._loop()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._loop()

    @torch.no_grad()
    def __call__(self, ctx: ExpertContext, noise: torch.Tensor,
                 prefix_actions: torch.Tensor | None = None) -> torch.Tensor:
        self.load(ctx, noise, prefix_actions)
        if not self.cuda_graph:
            self._loop()
        elif self.graph is None:
            self._capture()  # the capture itself does not run the kernels: replay below computes this chunk
        if self.graph is not None:
            self.graph.replay()
        return self.out.clone()
