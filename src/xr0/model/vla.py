"""XR0Model: Qwen3-VL + the DiT action expert, tensors in and out: encode -> VLMCache, context, denoise, loss.

Normalisation, observation checks and checkpoint files live above it, in xr0.policy (XR0Policy = processor +
model); loading and saving its tensors in xr0.model.weights. Parameter names are the checkpoint's: `vlm.*`
(transformers' Qwen3-VL) + the official expert names at top level (the model is the expert, extended by the VLM).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from transformers import Qwen3VLConfig

from ..config import PolicyConfig
from . import rtc
from .action_expert import ActionExpert, ExpertContext, StaticDenoiser, VLMCache
from .backbone import build_vlm, encode, set_activation_checkpointing
from .flow import euler_sample, euler_times, initial_noise, interpolate, sample_time
from .loss import LossFeatures, LossOptions, flow_loss
from .masks import SINK, expert_mask, expert_positions
from .weights import seeded_embedding

logger = logging.getLogger(__name__)


class XR0Model(ActionExpert):
    """The whole network of one PolicyConfig: the action expert extended by the VLM (a subclass, so the official
    expert tensor names stay at the checkpoint's top level).

    `model(batch, opts)` is the training loss, as the official `XR0.forward(batch, return_loss=True)`;
    `sample_normalized` generates one chunk; `step` / `velocity` (ActionExpert) are one DiT pass.
    `stage_hook`, when set, is called with a stage name at each boundary of inference ("preprocess" and
    "postprocess" from XR0Policy.sample, "prefill", "context", "dit_setup", "dit_step_K" or "denoise"): how
    `xr0 bench` times the stages of `XR0Policy.sample()`.
    """

    def __init__(self, config: PolicyConfig):
        config.validate()
        text_config = Qwen3VLConfig(**config.vlm).text_config
        super().__init__(config.expert, config.action_dim, config.state_dim, text_config)
        self.config = config
        self.vlm = build_vlm(config.vlm)
        if self.sink.weight.device.type != "meta":
            with torch.no_grad():
                self.vlm.model.language_model.embed_tokens.weight.copy_(seeded_embedding(config))
        self._static_denoisers: dict[int, StaticDenoiser] = {}  # chunk length -> fixed-shape denoiser
        self.stage_hook: Callable[[str], None] | None = None

    def forward(self, batch: dict[str, torch.Tensor], opts: LossOptions | None = None) -> dict[str, torch.Tensor]:
        """The training loss (`loss`)."""
        return self.loss(batch, opts)

    def mark_stage(self, stage: str) -> None:
        """Call stage_hook (if set) at a stage boundary."""
        if self.stage_hook is not None:
            self.stage_hook(stage)

    @property
    def device(self) -> torch.device:
        return self.sink.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.sink.weight.dtype

    def set_activation_checkpointing(self, on: bool = True) -> "XR0Model":
        """Training memory: recompute every VLM text layer and vision block (transformers' own switch) and every DiT
        layer in backward instead of keeping their activations. Same gradients (tests/test_finetune.py)."""
        set_activation_checkpointing(self.vlm, on)
        self.checkpoint_layers = on
        return self

    def set_runtime(self, **settings) -> "XR0Model":
        """Override RUNTIME_FIELDS (config.py) of a built policy, rebuilding the rotary tables for rope_tables."""
        self.config.override(**settings)
        self.reset_rope_buffers(self.device)
        return self

    def reset_rope_buffers(self, device: str | torch.device = "cpu") -> None:
        """Recompute the (non-persistent) RoPE frequency tables of the VLM text, vision and DiT rotary modules after
        a meta-device build or a dtype cast: fp32, with values rounded to bf16 where config.rope_tables is "bf16"
        (what the April code's `.to(torch.bfloat16)` left; the rotary forwards compute in fp32 either way)."""
        for m in self.modules():
            if isinstance(getattr(m, "inv_freq", None), torch.Tensor) and hasattr(m, "config"):
                inv = type(m)(m.config).inv_freq
                if self.config.rope_tables == "bf16":
                    inv = inv.to(torch.bfloat16).float()
                m.inv_freq, m.original_inv_freq = inv.to(device), inv.clone().to(device)

    def to(self, *args, **kwargs):
        out = super().to(*args, **kwargs)
        self.reset_rope_buffers(self.device)  # keep RoPE tables in fp32 whatever the weights' dtype
        return out

    # ------------------------------------------------------------------ forward pieces
    def batch_to_device(self, batch: dict) -> dict:
        """A VLM batch's tensors on this model's device, pixel values in the VLM's dtype."""
        batch = {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        if batch.get("pixel_values") is not None:
            batch["pixel_values"] = batch["pixel_values"].to(self.vlm.dtype)
        return batch

    def encode(self, batch: dict, inputs_embeds: torch.Tensor | None = None) -> VLMCache:
        """One VLM pass -> the K/V the expert reads (its last `num_layers` layers)."""
        cache, _ = encode(self.vlm, self.batch_to_device(batch), self.config.expert.num_layers, inputs_embeds)
        return cache

    def context(self, cache: VLMCache, state: torch.Tensor, action_mask: torch.Tensor, prefix_len: int = 0,
                hidden_prefix: torch.Tensor | None = None) -> ExpertContext:
        """The per-chunk expert inputs: Λ mask, RoPE positions (+offset on noisy tokens), state token. The chunk
        length T is the action mask's (B, T, D): each robot type has its own."""
        e, T = self.config.expert, action_mask.shape[1]
        dev = self.device
        mask = expert_mask(T, prefix_len, e.local_window, hidden_prefix, device=dev)
        positions = expert_positions(cache.max_position(), T, prefix_len, e.rope_offset)
        return self.prepare(cache, state.to(dev), action_mask.to(dev), mask, positions, prefix_len)

    def denoise(self, ctx: ExpertContext, noise: torch.Tensor, steps: int | None = None,
                prefix_actions: torch.Tensor | None = None) -> torch.Tensor:
        """Euler-integrate the expert's velocity from noise (B, T, D); prefix slots stay fixed.

        The adaLN modulation depends on t alone and t takes fixed values, so it is computed once for all steps.
        Uses the static (CUDA-graph) denoiser when one was set up and this call fits it.
        """
        steps = steps or self.config.num_steps
        fast = self._static_denoisers.get(noise.shape[1])
        if fast is not None and not self.training:
            if fast.fits(ctx, noise, steps):
                out = fast(ctx, noise, prefix_actions)
                self.mark_stage("denoise")
                return out
            if not fast.warned:
                fast.warned = True
                logger.info("a chunk of %d VLM tokens, %d steps, batch %d does not fit the fixed DiT buffers (%d "
                            "tokens, %d steps, batch %d): the eager loop runs it", ctx.cache.keys[0].shape[2], steps,
                            noise.shape[0], fast.max_len, fast.steps, fast.shape[0])
        times, table = self._step_tables(steps, noise)
        self.mark_stage("dit_setup")

        def step(x, t, k):
            v = self.step(ctx, x, table[:, k])
            self.mark_stage(f"dit_step_{k}")
            return v

        return euler_sample(step, noise, steps, prefix_actions, times)

    def _step_tables(self, steps: int, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Euler times (steps, B) and their adaLN modulation (computed once: it depends on t alone)."""
        B = noise.shape[0]
        times = euler_times(steps, B, noise.device)
        return times, self.modulation_table(times.flatten()).unflatten(1, (steps, B))

    def use_static_denoiser(self, max_len: int | None, batch: int = 1, steps: int | None = None,
                            cuda_graph: bool | None = None, chunk_len: int | None = None) -> StaticDenoiser | None:
        """Route denoise() (and so sample()) for chunks of chunk_len actions (default config.chunk_len; one per
        robot type's chunk length can be installed) through fixed buffers sized for prompts of up to max_len VLM
        tokens; other shapes take the eager loop.

        On CUDA the 5-step DiT loop is then captured once as a CUDA graph and replayed per chunk (cuda_graph=None:
        on CUDA only). Inference only: rebuild after changing the weights. max_len=None switches all of them off.
        """
        if max_len is None:
            self._static_denoisers.clear()
            return None
        T = chunk_len or self.config.chunk_len
        self._static_denoisers[T] = StaticDenoiser(self, batch, max_len, T, self.config.action_dim,
                                                   steps or self.config.num_steps, cuda_graph)
        return self._static_denoisers[T]

    def install_static_denoiser(self, denoiser: StaticDenoiser | None) -> None:
        """Route its chunk length through `denoiser` (one built by use_static_denoiser, e.g. kept per benchmark
        setup), replacing any installed ones; None: all off."""
        self._static_denoisers = {} if denoiser is None else {denoiser.shape[1]: denoiser}

    def compile_denoiser(self, **options) -> None:
        """torch.compile the per-step DiT pass (`step`) with static shapes; parameter names are unchanged.

        Pays off where the step is launch/overhead-bound (measured in docs/benchmarks.md). Inference only: the
        compiled step is specialised to these weights' dtype.
        """
        self.step = torch.compile(self.step, dynamic=False, **options)

    def guided_denoise(self, ctx: ExpertContext, noise: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                       steps: int | None = None, beta: float = rtc.BETA) -> torch.Tensor:
        """Inference-time RTC: Euler-integrate from noise (B, T, D) with guidance toward `target` (B, T, D).

        `weights` (B, T, D) is the soft mask (0 = free). The context must carry no trained prefix (prefix_len=0):
        the target is matched by guidance alone (rtc.py). Returns float32; needs autograd, so not inference_mode.
        """
        if ctx.prefix_len:
            raise ValueError(f"guided_denoise needs a context without a trained prefix, got {ctx.prefix_len=}")
        steps = steps or self.config.num_steps
        with torch.no_grad():
            times, table = self._step_tables(steps, noise)
        return rtc.guided_euler_sample(lambda x, t, k: self.step(ctx, x, table[:, k]), noise, target, weights,
                                       steps, beta, times)

    def sample_normalized(self, batch: dict, state: torch.Tensor, action_mask: torch.Tensor, noise: torch.Tensor,
                          prefix: torch.Tensor | None = None, steps: int | None = None,
                          guide_weights: torch.Tensor | None = None) -> torch.Tensor:
        """One chunk (B, T, D) in normalised units from a VLM batch, normalised state (B, D_s), action mask
        (B, T, D) and x_0 `noise` (B, T, D).

        prefix (B, p, D): the trained clean prefix (rows :p stay fixed), or with `guide_weights` (B, T, D) the
        soft target of inference-time RTC guidance (rows :p come back as generated).
        """
        guided = guide_weights is not None
        noise = noise.to(self.device, self.dtype)
        prefix = None if prefix is None else prefix.to(self.device, self.dtype)
        with torch.no_grad() if guided else torch.inference_mode():  # guidance differentiates through the expert
            p = 0 if prefix is None or guided else prefix.shape[1]
            cache = self.encode(batch)
            self.mark_stage("prefill")
            ctx = self.context(cache, state, action_mask, p)
            self.mark_stage("context")
            if not guided:
                return self.denoise(ctx, noise, steps, prefix)
            target = torch.zeros(action_mask.shape, device=self.device)
            target[:, : prefix.shape[1]] = prefix.float()
            return self.guided_denoise(ctx, noise, target, guide_weights.to(self.device), steps)

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict[str, torch.Tensor], opts: LossOptions | None = None) -> dict[str, torch.Tensor]:
        """The official flow-matching loss on the non-prefix rows (flow_loss), plus the optional training-only
        auxiliary term (`opts.auxiliary`, e.g. xr0.train.env_state)."""
        opts = opts or LossOptions()
        p, r = opts.prefix_len, opts.repeat
        dev, dtype = self.device, self.dtype
        vlm_trains = any(q.requires_grad for q in self.vlm.parameters())
        with torch.set_grad_enabled(torch.is_grad_enabled() and vlm_trains):  # a frozen VLM's K/V are constants
            cache = self.encode(batch)
        last_values = cache.values[-1]  # (B, kv_heads, L, Dh): what the expert's last layer reads
        cache = cache.repeat_interleave(r)
        rep = lambda x: x.to(dev).repeat_interleave(r, dim=0)  # noqa: E731
        actions, mask, state = rep(batch["actions"]).float(), rep(batch["action_mask"]).float(), rep(batch["state"])
        B = actions.shape[0]
        ctx = self.context(cache, state, mask, p, opts.hidden_prefix)
        t = (sample_time(B, opts.generator) if opts.time is None else opts.time).to(dev)
        noise = (torch.randn(actions.shape, generator=opts.generator) if opts.noise is None else opts.noise).to(dev)
        if t.shape != (B,) or noise.shape != actions.shape:
            raise ValueError(f"loss draws must be time ({B},) and noise {tuple(actions.shape)}, got "
                             f"{tuple(t.shape)} and {tuple(noise.shape)}")
        x_t, target = interpolate(actions, noise, t.to(dtype))
        if p:
            x_t[:, :p] = actions[:, :p]
        v, hidden = self.step(ctx, x_t.to(dtype), self.modulation_table(t), return_hidden=True)
        v = v.float()[:, p:]
        target, active = target[:, p:].float(), mask[:, p:].bool()
        weight = torch.ones_like(v)
        if opts.reweight and p:
            with torch.no_grad():  # L1 re-weighting: where a rollout from the same prefix misses the data, weigh more
                start = torch.cat([actions[:, :p], noise[:, p:]], dim=1).to(dtype)
                rollout = self.denoise(ctx, start, opts.reweight_steps, start[:, :p]).float()
                weight = (rollout[:, p:] - actions[:, p:]).abs()
        out = flow_loss(v, target, active, weight, opts.freq_weight)
        if opts.auxiliary is not None:
            term, logged = opts.auxiliary(LossFeatures(batch, last_values, hidden[:, SINK], r))
            out.update(logged)
            out["loss"] = out["loss"] + term
        return out



def check_noise(noise, shape: tuple[int, ...], device, dtype, seed: int) -> torch.Tensor:
    """x_0 for sample(): the given tensor (checked) or the official runtime's seeded draw."""
    if noise is None:
        return initial_noise(shape, seed, device, dtype)
    if not torch.is_tensor(noise) or tuple(noise.shape) not in (shape, shape[1:]):
        raise ValueError(f"noise must be a tensor of shape {shape[1:]} or {shape}, got "
                         f"{tuple(noise.shape) if torch.is_tensor(noise) else type(noise).__name__}")
    if not torch.isfinite(noise).all():
        raise ValueError("noise contains NaN or inf")
    return noise.reshape(shape).to(device, dtype)
