"""An XR0Model's tensors in and out of checkpoints: the strict load, the state a checkpoint stores, and the seeded
token embedding a checkpoint may leave out. File formats (safetensors, config.json) live in xr0.policy."""

from __future__ import annotations

import hashlib
import math

import torch
from transformers import Qwen3VLConfig

from ..config import PolicyConfig

EMBED = "vlm.model.language_model.embed_tokens.weight"
TIED_HEAD = "vlm.lm_head.weight"


def load_strict(model, state: dict[str, torch.Tensor], device: str | torch.device = "cpu") -> None:
    """Load `state` into `model` (an XR0Model, possibly built on the meta device), strictly: the tied lm_head may be
    absent, anything else missing, unexpected or mis-shaped is listed in one ValueError."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    tied = TIED_HEAD if model.vlm.config.tie_word_embeddings else None
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
        state[tied] = state[EMBED]
    model.load_state_dict(state, strict=True, assign=True)
    if tied:
        model.vlm.lm_head.weight = model.vlm.model.language_model.embed_tokens.weight
    model.reset_rope_buffers(device)


def state_to_save(model, dtype: torch.dtype | None = None, store_embedding: bool = True) -> tuple[dict, dict]:
    """(tensors, extra config entries) as a checkpoint stores them: CPU, contiguous, the tied lm_head omitted;
    with store_embedding=False also the token embedding, which must still be at its seeded value."""
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    if model.vlm.config.tie_word_embeddings:
        state.pop(TIED_HEAD, None)
    extra = {}
    if not store_embedding:
        seeded = seeded_embedding(model.config)
        current = model.vlm.model.language_model.embed_tokens.weight.detach().float().cpu()
        if not torch.equal(current, seeded.to(current.dtype)):
            raise ValueError("store_embedding=False needs the token embedding at its seeded initial value, "
                             "but it was trained or loaded from elsewhere")
        del state[EMBED]
        extra["embedding_sha256"] = _sha256(seeded)
    return state, extra


def seeded_embedding(config: PolicyConfig, expect_sha256: str | None = None) -> torch.Tensor:
    """The token embedding's initial value, a pure function of `config.embedding_seed` (and the vocabulary size,
    width and initializer range of `config.vlm`).

    Every recipe that keeps the input embedding frozen leaves it at this value, so a checkpoint may omit it
    (151,936 rows are most of a small model's bytes) and the loader regenerates it, checking the hash.
    """
    text = Qwen3VLConfig(**config.vlm).text_config
    gen = torch.Generator().manual_seed(config.embedding_seed)
    weight = torch.randn((text.vocab_size, text.hidden_size), generator=gen) * text.initializer_range
    if expect_sha256 is not None and _sha256(weight) != expect_sha256:
        raise ValueError("the regenerated token embedding does not match the checkpoint's hash "
                         "(a different torch random generator?); this checkpoint needs its stored embedding")
    return weight


def count_parameters(module: torch.nn.Module) -> int:
    """Parameters of `module`, each shared tensor (the tied lm_head) once."""
    seen, total = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += math.prod(p.shape)
    return total


def _sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
