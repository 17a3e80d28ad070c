"""XR0Policy: Qwen3-VL + the DiT action expert, with sample() for users and loss() for training."""

from __future__ import annotations

import hashlib
import json
import math
import pathlib
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen3VLConfig

from ..checkpoints import CONFIG, WEIGHTS, atomic_write, file_sha256, resolve_checkpoint, verify_manifest
from ..config import PolicyConfig, get_preset
from ..processing import Processor, RobotSpec, stats_hash
from . import rtc
from .action_expert import ActionExpert, ExpertContext, StaticDenoiser, VLMCache
from .backbone import build_vlm, encode
from .flow import euler_sample, euler_times, initial_noise, interpolate, sample_time
from .masks import SINK, expert_mask, expert_positions

NORMS = "normalization.safetensors"
FORMAT = "xr0"
EMBED = "vlm.model.language_model.embed_tokens.weight"


@dataclass
class LossOptions:
    """Switches of the flow-matching objective (spec §6.3-6.4); the defaults are synchronous post-training."""

    prefix_len: int = 0
    hidden_prefix: torch.Tensor | None = None  # prefix dropout draw (bool (p,)), shared by the batch
    repeat: int = 1  # training_repeat: noise/time draws per VLM pass
    reweight: bool = False  # L1 re-weighting from a no-grad rollout (async samples with p > 0)
    reweight_steps: int = 5
    freq_weight: float = 0.0  # c of the rFFT term
    generator: torch.Generator | None = None
    # The loss's own draws, when handed in (B * repeat,) times and (B * repeat, T, D) noise; else drawn from
    # `generator`. Reproducing a run of the official code needs its draws: its Beta sampler is another stream.
    time: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    # Training-only: a head predicting batch["env_state"] from the image tokens and the expert's sink token
    # (xr0.train.env_state)
    env_state_head: torch.nn.Module | None = None
    env_state_weight: float = 0.0


class XR0Policy(ActionExpert):
    """The whole VLA. Parameter names: `vlm.*` (transformers' Qwen3-VL) + the official expert names at top level."""

    def __init__(self, config: PolicyConfig, robots: dict[str, RobotSpec] | None = None):
        config.validate()
        text_config = Qwen3VLConfig(**config.vlm).text_config
        super().__init__(config.expert, config.action_dim, config.state_dim, text_config)
        self.config = config
        self.vlm = build_vlm(config.vlm)
        if self.sink.weight.device.type != "meta":
            with torch.no_grad():
                self.vlm.model.language_model.embed_tokens.weight.copy_(self.seeded_embedding())
        self.robots = robots or {"default": RobotSpec.identity(config.chunk_len, config.action_dim, config.state_dim,
                                                               config.action_dim, config.state_dim)}
        self._processor: Processor | None = None
        self._static_denoiser: StaticDenoiser | None = None

    # ------------------------------------------------------------------ construction / checkpoints
    @classmethod
    def from_preset(cls, name: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                    seed: int = 0, robots: dict[str, RobotSpec] | None = None, **overrides) -> "XR0Policy":
        """Random weights for a named preset. device="meta" builds the layout without allocating memory."""
        cfg = get_preset(name)
        for k, v in overrides.items():
            if not hasattr(cfg, k):
                raise ValueError(f"unknown config field {k!r}")
            setattr(cfg, k, v)
        torch.manual_seed(seed)
        with torch.device(device):
            policy = cls(cfg, robots)
        if dtype is not None:
            policy.to(dtype)
        return policy.eval()

    @classmethod
    def from_pretrained(cls, path: str | pathlib.Path, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, **settings) -> "XR0Policy":
        """Load a folder written by save_pretrained, or an official release folder (safetensors only; strict:
        every tensor must match); `path` may also be "embedded", a training run or a Hugging Face repo id that is in
        the local cache (checkpoints.resolve_checkpoint). `settings` override the checkpoint's RUNTIME_FIELDS (config.py), e.g.
        local_window=4, rope_offset=10 to run a release folder as the April post-training code does."""
        path = resolve_checkpoint(path)  # also "embedded", a training run, a Hugging Face repo id in the local cache
        cfg_file = path / CONFIG
        from . import official  # an official release folder (no "format": "xr0") is mapped by official.py
        if official.is_official(cfg_file):
            return official.load_official(path, device, dtype, **settings)
        try:
            meta = json.loads(cfg_file.read_text())
            config = PolicyConfig.from_dict(meta["policy"])
            config.validate()
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{cfg_file} is not a valid xr0 config: {e}") from e
        config.override(**settings)
        verify_manifest(path, meta.get("sha256", {}))  # checkpoints saved before the manifest have none
        robots = load_robots(path / NORMS, meta.get("robots", {}))
        with torch.device("meta"):
            policy = cls(config, robots)
        state = _load_safetensors(path / WEIGHTS)
        if EMBED not in state and "embedding_sha256" in meta:
            stored_dtype = next(iter(state.values())).dtype  # e.g. a bf16 export stays bf16 throughout
            state[EMBED] = policy.seeded_embedding(expect_sha256=meta["embedding_sha256"]).to(stored_dtype)
        policy.load_weights(state, device=device)
        if dtype is not None:
            policy.to(dtype)
        return policy.eval()

    def load_weights(self, state: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> None:
        """Strict load (the tied lm_head may be absent); lists every missing/unexpected/mis-shaped tensor."""
        expected = {k: v.shape for k, v in self.state_dict().items()}
        tied = "vlm.lm_head.weight" if self.vlm.config.tie_word_embeddings else None
        missing = sorted(set(expected) - set(state) - {tied})
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k])}"
                       for k in set(state) & set(expected) if state[k].shape != expected[k])
        if missing or unexpected or wrong:
            raise ValueError("checkpoint does not match the model:\n"
                             + "".join(f"  {title} ({len(keys)}): {keys[:20]}{' ...' if len(keys) > 20 else ''}\n"
                                       for title, keys in (("missing", missing), ("unexpected", unexpected),
                                                           ("shape mismatch", wrong)) if keys))
        # Fresh (aligned) copies: tensors viewing a file buffer can take other SIMD paths and change results in
        # the last bit. Popping keeps peak memory near one copy.
        state = {k: state.pop(k).to(device, copy=True) for k in list(state)}
        if tied and tied not in state:
            state[tied] = state["vlm.model.language_model.embed_tokens.weight"]
        self.load_state_dict(state, strict=True, assign=True)
        if tied:
            self.vlm.lm_head.weight = self.vlm.model.language_model.embed_tokens.weight
        self.reset_rope_buffers(device)

    def set_runtime(self, **settings) -> "XR0Policy":
        """Override RUNTIME_FIELDS (config.py) of a built policy, rebuilding the rotary tables for rope_tables."""
        self.config.override(**settings)
        self.reset_rope_buffers(self.sink.weight.device)
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
        self.reset_rope_buffers(self.sink.weight.device)  # keep RoPE tables in fp32 whatever the weights' dtype
        return out

    def seeded_embedding(self, expect_sha256: str | None = None) -> torch.Tensor:
        """The token embedding's initial value, a pure function of `config.embedding_seed`.

        Every recipe that keeps the input embedding frozen leaves it at this value, so a checkpoint may omit it
        (151,936 rows are most of a small model's bytes) and the loader regenerates it, checking the hash.
        """
        emb = self.vlm.model.language_model.embed_tokens.weight
        std = self.vlm.config.text_config.initializer_range
        gen = torch.Generator().manual_seed(self.config.embedding_seed)
        weight = torch.randn(emb.shape, generator=gen) * std
        if expect_sha256 is not None and _sha256(weight) != expect_sha256:
            raise ValueError("the regenerated token embedding does not match the checkpoint's hash "
                             "(a different torch random generator?); this checkpoint needs its stored embedding")
        return weight

    def save_pretrained(self, path: str | pathlib.Path, dtype: torch.dtype | None = None,
                        store_embedding: bool = True) -> None:
        """Write model.safetensors (tied lm_head omitted), normalization.safetensors, then config.json with the
        SHA-256 of both (`sha256`; from_pretrained verifies it).

        store_embedding=False omits the token embedding when it still equals its seeded initial value.
        """
        path = pathlib.Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in self.state_dict().items()}
        if self.vlm.config.tie_word_embeddings:
            state.pop("vlm.lm_head.weight", None)
        extra = {}
        if not store_embedding:
            seeded = self.seeded_embedding()
            current = self.vlm.model.language_model.embed_tokens.weight.detach().float().cpu()
            if not torch.equal(current, seeded.to(current.dtype)):
                raise ValueError("store_embedding=False needs the token embedding at its seeded initial value, "
                                 "but it was trained or loaded from elsewhere")
            del state[EMBED]
            extra["embedding_sha256"] = _sha256(seeded)
        atomic_write(path / WEIGHTS, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
        norms = {f"{name}.{key}": torch.from_numpy(arr) for name, spec in self.robots.items()
                 for key, arr in spec.arrays().items()}
        atomic_write(path / NORMS, lambda tmp: save_file(norms, tmp, metadata={"format": FORMAT}))
        meta = {"format": FORMAT, "policy": self.config.to_dict(),
                "robots": {n: {"action_dim": s.action_dim, "state_dim": s.state_dim} for n, s in self.robots.items()},
                "norm_stats_hash": stats_hash(self.robots), **extra,
                "sha256": {name: file_sha256(path / name) for name in (WEIGHTS, NORMS)}}
        atomic_write(path / CONFIG, lambda tmp: pathlib.Path(tmp).write_text(json.dumps(meta, indent=2)))

    # ------------------------------------------------------------------ model core
    @property
    def processor(self) -> Processor:
        if self._processor is None:
            self._processor = Processor(self.config)
        return self._processor

    def robot(self, robot_type: str | None = None) -> RobotSpec:
        if robot_type is None:
            if len(self.robots) != 1:
                raise ValueError(f"robot_type is required: this checkpoint has {sorted(self.robots)}")
            return next(iter(self.robots.values()))
        if robot_type not in self.robots:
            raise ValueError(f"unknown robot_type {robot_type!r}; this checkpoint has {sorted(self.robots)}")
        return self.robots[robot_type]

    def batch_to_device(self, batch: dict) -> dict:
        """A VLM batch's tensors on this policy's device, pixel values in the VLM's dtype."""
        batch = {k: (v.to(self.sink.weight.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        if batch.get("pixel_values") is not None:
            batch["pixel_values"] = batch["pixel_values"].to(self.vlm.dtype)
        return batch

    def encode(self, batch: dict, inputs_embeds: torch.Tensor | None = None) -> VLMCache:
        """One VLM pass -> the K/V the expert reads (its last `num_layers` layers)."""
        cache, _ = encode(self.vlm, self.batch_to_device(batch), self.config.expert.num_layers, inputs_embeds)
        return cache

    def context(self, cache: VLMCache, state: torch.Tensor, action_mask: torch.Tensor, prefix_len: int = 0,
                hidden_prefix: torch.Tensor | None = None) -> ExpertContext:
        """The per-chunk expert inputs: Λ mask, RoPE positions (+offset on noisy tokens), state token."""
        e, T = self.config.expert, self.config.chunk_len
        dev = self.sink.weight.device
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
        fast = self._static_denoiser
        if fast is not None and not self.training and fast.fits(ctx, noise, steps):
            return fast(ctx, noise, prefix_actions)
        times, table = self._step_tables(steps, noise)
        return euler_sample(lambda x, t, k: self.velocity_at(ctx, x, table[:, k]), noise, steps, prefix_actions, times)

    def _step_tables(self, steps: int, noise: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The Euler times (steps, B) and their adaLN modulation (computed once: it depends on t alone)."""
        B = noise.shape[0]
        times = euler_times(steps, B, noise.device)
        return times, self.modulation_table(times.flatten()).unflatten(1, (steps, B))

    def use_static_denoiser(self, max_len: int | None, batch: int = 1, steps: int | None = None,
                            cuda_graph: bool | None = None) -> StaticDenoiser | None:
        """Route denoise() (and so sample()) through fixed buffers sized for prompts of up to max_len VLM tokens.

        On CUDA the 5-step DiT loop is then captured once as a CUDA graph and replayed per chunk (cuda_graph=None:
        on CUDA only). Inference only: rebuild after changing the weights. max_len=None switches it off.
        """
        self._static_denoiser = None if max_len is None else StaticDenoiser(
            self, batch, max_len, self.config.chunk_len, self.config.action_dim, steps or self.config.num_steps,
            cuda_graph)
        return self._static_denoiser

    def compile_denoiser(self, **options) -> None:
        """torch.compile the per-step DiT pass (velocity_at) with static shapes; parameter names are unchanged.

        Pays off where the step is launch/overhead-bound (CPU `small`: ~1.3x per step after a ~20 s compile); the
        VLM prefill did not gain on CPU. Inference only: the compiled step is specialised to these weights' dtype.
        """
        self.velocity_at = torch.compile(self.velocity_at, dynamic=False, **options)

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
        return rtc.guided_euler_sample(lambda x, t, k: self.velocity_at(ctx, x, table[:, k]), noise, target, weights,
                                       steps, beta, times)

    # ------------------------------------------------------------------ inference
    def sample(self, images, instruction: str, state, prefix=None, steps: int | None = None, seed: int = 0,
               robot_type: str | None = None, prefix_weights=None, noise: torch.Tensor | None = None) -> np.ndarray:
        """One action chunk (T, action_dim) in physical units, from camera images, an instruction and the state.

        images: dict camera -> (H, W, 3) uint8 (or a list in `config.cameras` order). state: (state_dim,).
        prefix: optional (p, action_dim) committed actions (async execution); they come back unchanged in rows :p.
        prefix_weights: optional (p,) in [0, 1]. Then the prefix is not the trained clean prefix but a soft target
        for inference-time RTC guidance (Black et al. 2025; model/rtc.py): row i is pulled toward prefix[i] with
        weight prefix_weights[i], rows :p come back as generated (not overwritten), and p may exceed max_prefix.
        noise: optional x_0 (T, D) or (1, T, D); by default flow.initial_noise(seed), the official runtime's draw.
        Dims the robot's action mask drops come back 0 (RobotSpec.denormalize_actions), as the official server.
        """
        robot = self.robot(robot_type)
        T, D = self.config.chunk_len, self.config.action_dim
        state = _vector("state", state, robot.state_dim)
        prefix = _check_prefix(prefix, robot.action_dim, T)
        weights = None if prefix_weights is None else _check_prefix_weights(prefix_weights, prefix)
        if steps is not None and (not isinstance(steps, int) or steps < 1):
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        guided = weights is not None
        with torch.no_grad() if guided else torch.inference_mode():  # guidance differentiates through the expert
            batch = self.processor(images, instruction)
            dev, dtype = self.sink.weight.device, self.sink.weight.dtype
            state_t = torch.from_numpy(robot.normalize_state(state))[None]
            mask = torch.from_numpy(robot.action_mask).expand(1, T, D)
            noise = _check_noise(noise, (1, T, D), dev, dtype, int(seed))
            p = 0 if prefix is None else prefix.shape[0]
            prefix_t = None if prefix is None else torch.from_numpy(robot.normalize_actions(prefix))[None].to(dev, dtype)
            if guided:
                ctx = self.context(self.encode(batch), state_t, mask, 0)
                x = self.guided_denoise(ctx, noise, *_soft_target(prefix_t, weights, mask.to(dev)), steps)
            else:
                ctx = self.context(self.encode(batch), state_t, mask, p)
                x = self.denoise(ctx, noise, steps, prefix_t)
        out = robot.denormalize_actions(x[0].float().cpu().numpy())
        if prefix is not None and not guided:
            out[:p] = prefix
        return out

    def metadata(self, robot_type: str | None = None) -> dict:
        """What a client needs to talk to this policy (sent by the server on connect)."""
        robot = self.robot(robot_type)
        c = self.config
        return {"cameras": list(c.cameras), "image_size": list(c.image_size), "state_dim": robot.state_dim,
                "action_dim": robot.action_dim, "chunk_len": c.chunk_len, "control_hz": c.control_hz,
                "max_prefix": c.max_prefix, "robot_types": sorted(self.robots), "preset": c.name,
                "norm_stats_hash": stats_hash(self.robots)}

    # ------------------------------------------------------------------ training
    def make_batch(self, samples: list[dict], robot_type: str | None = None) -> dict[str, torch.Tensor]:
        """Dataset samples ({images, instruction, state, actions (T, action_dim), action_valid (T,)}) -> tensors."""
        robot = self.robot(robot_type)
        T, D = self.config.chunk_len, self.config.action_dim
        proc = self.processor
        vlm = proc.collate([proc.prompt_ids(s["instruction"]) for s in samples], [proc.images(s["images"]) for s in samples])
        state = np.stack([robot.normalize_state(_vector("state", s["state"], robot.state_dim)) for s in samples])
        actions = np.stack([np.asarray(s["actions"], np.float32) for s in samples])
        if actions.shape[1:] != (T, robot.action_dim):
            raise ValueError(f"actions must have shape (T={T}, {robot.action_dim}), got {actions.shape[1:]}")
        if not np.isfinite(actions).all():
            raise ValueError("actions contain NaN or inf")
        if all("env_state" in s for s in samples):  # training-only supervision (xr0.train.env_state)
            vlm["env_state"] = torch.from_numpy(np.stack([np.asarray(s["env_state"], np.float32) for s in samples]))
        valid = np.stack([np.asarray(s.get("action_valid", np.ones(T, bool)), bool) for s in samples])
        mask = robot.action_mask[None, None, :] * valid[:, :, None]
        vlm.update(state=torch.from_numpy(state), actions=torch.from_numpy(robot.normalize_actions(actions)),
                   action_mask=torch.from_numpy(mask.astype(np.float32)).expand(len(samples), T, D).contiguous())
        return vlm

    def loss(self, batch: dict[str, torch.Tensor], opts: LossOptions | None = None) -> dict[str, torch.Tensor]:
        """The official flow-matching loss on the non-prefix rows (flow_loss), plus the optional env-state term."""
        opts = opts or LossOptions()
        p, r = opts.prefix_len, opts.repeat
        dev, dtype = self.sink.weight.device, self.sink.weight.dtype
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
        hidden = self.hidden_at(ctx, x_t.to(dtype), self.modulation_table(t))
        v = self.velocity_from(ctx, hidden, dtype).float()[:, p:]
        target, active = target[:, p:].float(), mask[:, p:].bool()
        weight = torch.ones_like(v)
        if opts.reweight and p:
            with torch.no_grad():  # L1 re-weighting: where a rollout from the same prefix misses the data, weigh more
                start = torch.cat([actions[:, :p], noise[:, p:]], dim=1).to(dtype)
                rollout = self.denoise(ctx, start, opts.reweight_steps, start[:, :p]).float()
                weight = (rollout[:, p:] - actions[:, p:]).abs()
        out = flow_loss(v, target, active, weight, opts.freq_weight)
        if opts.env_state_head is not None:
            if "env_state" not in batch:
                raise ValueError("the env-state loss needs samples with env_state (observation.environment_state)")
            images = batch["mm_token_type_ids"].to(dev).bool()
            tokens = last_values.transpose(1, 2).flatten(2)[images].unflatten(0, (images.shape[0], -1))  # (B, N, C)
            terms = opts.env_state_head.loss(tokens, hidden[:, SINK], batch["env_state"], r)
            out.update({f"env_state_{k}": v for k, v in terms.items()})
            out["env_state"] = sum(terms.values()) / len(terms)
            out["loss"] = out["loss"] + opts.env_state_weight * out["env_state"]
        return out


# ---------------------------------------------------------------------- helpers
def flow_loss(pred: torch.Tensor, target: torch.Tensor, active: torch.Tensor, weight: torch.Tensor,
              freq_weight: float) -> dict[str, torch.Tensor]:
    """The official `compute_loss` on (B, T - p, D) suffix rows: 0.5 * weighted MSE + c * weighted rFFT-L1.

    The weight is normalised by its mean over the active entries (the action mask), then every entry is clamped to
    [0.5, 5]. The MSE averages the active entries; the rFFT term takes pred and target unmasked (inactive dims
    enter it too, as the official code) and weights each sample by its mean weight over all entries.
    """
    pred, target, weight = pred.float(), target.float(), weight.float()
    if not active.any():
        zero = (pred.reshape(-1)[0] - target.reshape(-1)[0]) * 0.0
        return {"loss": zero, "mse": zero, "freq": zero}
    with torch.no_grad():
        weight = weight.clone()
        weight[active] = weight[active] / weight[active].mean()
        weight = weight.clamp(0.5, 5.0)
    mse = ((pred - target).pow(2) * weight)[active].mean()
    out = {"mse": mse, "loss": 0.5 * mse}
    if freq_weight:
        spectral = (torch.fft.rfft(pred, dim=1) - torch.fft.rfft(target, dim=1)).abs()
        out["freq"] = (spectral * weight.mean(dim=(1, 2))[:, None, None]).mean()
        out["loss"] = out["loss"] + freq_weight * out["freq"]
    return out


def _check_noise(noise, shape: tuple[int, ...], device, dtype, seed: int) -> torch.Tensor:
    """x_0 for sample(): the given tensor (checked) or the official runtime's seeded draw."""
    if noise is None:
        return initial_noise(shape, seed, device, dtype)
    if not torch.is_tensor(noise) or tuple(noise.shape) not in (shape, shape[1:]):
        raise ValueError(f"noise must be a tensor of shape {shape[1:]} or {shape}, got "
                         f"{tuple(noise.shape) if torch.is_tensor(noise) else type(noise).__name__}")
    if not torch.isfinite(noise).all():
        raise ValueError("noise contains NaN or inf")
    return noise.reshape(shape).to(device, dtype)


def _vector(name: str, x, dim: int) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be a numeric vector of length {dim}: {e}") from e
    if arr.shape != (dim,):
        raise ValueError(f"{name} must have shape ({dim},), got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or inf")
    return arr


def _check_prefix(prefix, action_dim: int, chunk_len: int) -> np.ndarray | None:
    """The prefix as float32 (p, action_dim), or None; raises ValueError naming `prefix`."""
    if prefix is None:
        return None
    prefix = np.asarray(prefix, dtype=np.float32)
    if prefix.ndim != 2 or prefix.shape[1] != action_dim:
        raise ValueError(f"prefix must have shape (p, {action_dim}), got {prefix.shape}")
    if prefix.shape[0] > chunk_len:
        raise ValueError(f"prefix has {prefix.shape[0]} actions, longer than the chunk length T={chunk_len}")
    if not np.isfinite(prefix).all():
        raise ValueError("prefix contains NaN or inf")
    return prefix


def _check_prefix_weights(weights, prefix: np.ndarray | None) -> np.ndarray:
    """RTC soft-mask weights as float32 (p,), finite and in [0, 1]; raises ValueError naming `prefix_weights`."""
    if prefix is None:
        raise ValueError("prefix_weights needs a prefix (the target the weights apply to)")
    try:
        w = np.asarray(weights, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ValueError(f"prefix_weights must be a numeric vector: {e}") from e
    p = prefix.shape[0]
    if w.shape != (p,):
        raise ValueError(f"prefix_weights must have shape ({p},) like the prefix, got {w.shape}")
    if not np.isfinite(w).all():
        raise ValueError("prefix_weights contains NaN or inf")
    if w.size and (w.min() < 0 or w.max() > 1):
        raise ValueError(f"prefix_weights must lie in [0, 1], got range [{w.min():g}, {w.max():g}]")
    return w


def _soft_target(prefix: torch.Tensor, weights: np.ndarray, action_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """RTC target and weights (1, T, D) float32 from a normalised prefix (1, p, D), its weights (p,) and the
    (1, T, D) action mask: both padded with 0 past row p; the weights also 0 on unused action dims."""
    T, p = action_mask.shape[1], prefix.shape[1]
    target = torch.zeros(action_mask.shape, device=prefix.device)
    target[:, :p] = prefix.float()
    row_weights = torch.zeros(T, device=prefix.device)
    row_weights[:p] = torch.from_numpy(weights).to(prefix.device)
    return target, row_weights[None, :, None] * action_mask.float()


def _load_safetensors(file: pathlib.Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found")
    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own error types for truncated / corrupt headers
        raise ValueError(f"{file} is not a readable safetensors file: {e}") from e


def load_robots(file: pathlib.Path, dims: dict) -> dict[str, RobotSpec]:
    arrays = _load_safetensors(file)
    robots = {}
    for name, d in dims.items():
        try:
            robots[name] = RobotSpec(**{k: arrays[f"{name}.{k}"].numpy() for k in
                                        ("action_mean", "action_std", "action_mask", "state_mean", "state_std")},
                                     action_dim=d["action_dim"], state_dim=d["state_dim"])
        except KeyError as e:
            raise ValueError(f"{file}: robot type {name!r} lacks {e}") from e
    if not robots:
        raise ValueError(f"{file}: no robot types listed in the config")
    return robots


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def count_parameters(module: torch.nn.Module) -> int:
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += math.prod(p.shape)
    return total
