"""Stage-1 pre-training (spec §4, §2.7): Choice-Policy heads on the VLM, plus vision-language co-training.

The VLM sees `prompt, <state>, [A_1] .. [A_T], [S]`: the state token's embedding is an MLP projection of the state,
the [A_i] / [S] embeddings are learned. Each [A_i] output predicts N candidate actions for timestep i, [S] predicts
N scores. Losses (XR-1's recipe): winner-takes-all masked-mean L1 over candidates, MSE of each score against its
candidate's (detached) L1, and next-token cross-entropy on VL answers through the tied lm_head.

The choice tokens exist only in this module's VLM pass. `XR0Model.encode` (stage 2, post-training, inference)
runs the plain prompt, so the K/V the DiT reads never contain them (else the DiT could copy the VLM's guess).
The heads live in `choice_heads.safetensors` (names `choice.*`) beside the policy, never in its official layout.
"""

from __future__ import annotations

import pathlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import IGNORE
from .backbone import vlm_position_ids
from .headfile import load_head, save_head

HEADS_FILE = "choice_heads.safetensors"
PREFIX = "choice."
FORMAT = "xr0-choice"
PLACEHOLDER_ID = 151643  # "<|endoftext|>": any non-vision id works, its embedding is replaced


@dataclass
class ChoiceConfig:
    hidden_size: int  # the VLM's hidden size H
    chunk_len: int  # T: one [A_i] token per action timestep
    action_dim: int  # D (padded)
    state_dim: int
    num_candidates: int = 5  # N (XR-1 uses 5; XR-0 does not say)
    depth: int = 2  # hidden Linear+GELU layers of each head before its output Linear (XR-1: 4, at H = 2560)


class MLP(nn.Module):
    """`depth` x (Linear(H, H) -> GELU) -> Linear(H, d_out); `layers.{k}` names."""

    def __init__(self, d_in: int, hidden: int, d_out: int, depth: int):
        super().__init__()
        mods: list[nn.Module] = []
        for k in range(depth):
            mods += [nn.Linear(d_in if k == 0 else hidden, hidden), nn.GELU(approximate="tanh")]
        mods.append(nn.Linear(hidden if depth else d_in, d_out))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ChoiceHeads(nn.Module):
    """State token MLP, T action-query and one score-query embeddings, and the action / score heads."""

    FILE = HEADS_FILE

    def __init__(self, config: ChoiceConfig):
        super().__init__()
        c = config
        if min(c.hidden_size, c.chunk_len, c.action_dim, c.state_dim, c.num_candidates) < 1 or c.depth < 0:
            raise ValueError(f"invalid choice-head config {c}")
        self.config = c
        self.state_proj = MLP(c.state_dim, c.hidden_size, c.hidden_size, depth=1)
        # Embedding-scale init (Qwen's initializer_range 0.02), like a new vocabulary row.
        self.action_queries = nn.Parameter(torch.randn(c.chunk_len, c.hidden_size) * 0.02)
        self.score_query = nn.Parameter(torch.randn(c.hidden_size) * 0.02)
        self.action_head = MLP(c.hidden_size, c.hidden_size, c.num_candidates * c.action_dim, c.depth)
        self.score_head = MLP(c.hidden_size, c.hidden_size, c.num_candidates, c.depth)

    @classmethod
    def for_model(cls, model, num_candidates: int = 5, depth: int = 2, seed: int | None = None) -> "ChoiceHeads":
        """Heads sized for `model`, on its device and dtype. `seed` makes the init reproducible."""
        cfg = model.config
        conf = ChoiceConfig(cfg.text["hidden_size"], cfg.chunk_len, cfg.action_dim, cfg.state_dim, num_candidates,
                            depth)
        if seed is not None:
            torch.manual_seed(seed)
        p = next(model.parameters())
        return cls(conf).to(p.device, p.dtype)

    @property
    def num_tokens(self) -> int:
        """Tokens appended to each prompt: <state>, [A_1..A_T], [S]."""
        return self.config.chunk_len + 2

    def check(self, model) -> None:
        c, cfg = self.config, model.config
        got = (c.hidden_size, c.chunk_len, c.action_dim, c.state_dim)
        want = (cfg.text["hidden_size"], cfg.chunk_len, cfg.action_dim, cfg.state_dim)
        if got != want:
            raise ValueError(f"choice heads (hidden, T, action_dim, state_dim) = {got} do not fit the model {want}")

    def token_embeddings(self, state: torch.Tensor) -> torch.Tensor:
        """(B, state_dim) -> (B, T + 2, H): [<state>, A_1..A_T, S]."""
        B = state.shape[0]
        dt = self.action_queries.dtype
        s = self.state_proj(state.to(dt))[:, None]
        a = self.action_queries[None].expand(B, -1, -1)
        q = self.score_query[None, None].expand(B, 1, -1)
        return torch.cat([s, a, q], dim=1)

    def forward(self, action_hidden: torch.Tensor, score_hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """VLM outputs at [A_i] (B, T, H) and [S] (B, H) -> candidates (B, N, T, D), scores (B, N), float32."""
        c = self.config
        dt = self.action_queries.dtype
        B, T = action_hidden.shape[:2]
        cand = self.action_head(action_hidden.to(dt)).float().view(B, T, c.num_candidates, c.action_dim)
        return cand.permute(0, 2, 1, 3), self.score_head(score_hidden.to(dt)).float()

    # ---------------------------------------------------------------- checkpoint (next to the model's files)
    def save(self, folder: str | pathlib.Path, state_dict: dict | None = None) -> pathlib.Path:
        """Write `folder/choice_heads.safetensors` (tensors `choice.*`, config in the header). `state_dict`
        overrides this module's own (the trainer passes the gathered one under FSDP)."""
        folder = pathlib.Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        sd = self.state_dict() if state_dict is None else state_dict
        state = {PREFIX + k: v.detach().contiguous().cpu() for k, v in sd.items()}
        return save_head(folder / HEADS_FILE, state, FORMAT, asdict(self.config))

    @classmethod
    def load(cls, path: str | pathlib.Path, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None) -> "ChoiceHeads":
        """Read a folder (or the file) written by `save`; strict: every `choice.*` tensor must match."""
        file, config, state = load_head(path, HEADS_FILE, FORMAT, "choice heads")
        try:
            heads = cls(ChoiceConfig(**config))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{file}: invalid choice-heads config: {e}") from e
        foreign = sorted(k for k in state if not k.startswith(PREFIX))
        if foreign:
            raise ValueError(f"{file}: tensors outside `{PREFIX}*`: {foreign[:10]}")
        state = {k[len(PREFIX):]: v for k, v in state.items()}
        expected = {k: v.shape for k, v in heads.state_dict().items()}
        missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k])
        if missing or unexpected or wrong:
            raise ValueError(f"{file} does not match its config: missing {missing}, unexpected {unexpected}, "
                             f"shape mismatch {wrong}")
        heads.load_state_dict(state, strict=True)
        return heads.to(device=device, dtype=dtype)


# ---------------------------------------------------------------------- stage-1 VLM pass
@dataclass
class Stage1Inputs:
    batch: dict  # the VLM batch with the choice tokens appended (input_ids / attention_mask / mm_token_type_ids)
    inputs_embeds: torch.Tensor  # (B, L + T + 2, H)
    slots: torch.Tensor  # (B, T + 2) positions of <state>, A_1..A_T, S in each row


def _prompt_lengths(attention_mask: torch.Tensor) -> torch.Tensor:
    """Real-token count per row; rows must be right-padded (the Processor's layout)."""
    n = attention_mask.sum(1)
    ar = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    if not torch.equal(attention_mask.bool(), ar[None] < n[:, None]):
        raise ValueError("stage-1 inputs need right-padded prompts (attention_mask = 1...1 0...0 per row)")
    return n


def stage1_inputs(model, heads: ChoiceHeads, batch: dict) -> Stage1Inputs:
    """Append <state>, [A_1..A_T], [S] right after each prompt's last real token (before its padding) and splice
    their embeddings into `inputs_embeds`. The Qwen3-VL text stack is causal, so the prompt's own states are
    unchanged by the appended tokens."""
    heads.check(model)
    batch = model.batch_to_device(batch)
    if "state" not in batch:
        raise ValueError("stage-1 batch needs 'state' (use XR0Policy.make_batch)")
    ids, attn, mm = batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"]
    B, L = ids.shape
    K = heads.num_tokens
    n = _prompt_lengths(attn)
    ar = torch.arange(L + K, device=ids.device)
    slots = n[:, None] + torch.arange(K, device=ids.device)[None]  # (B, K)
    real = ar[None] < (n + K)[:, None]
    new_ids = torch.full((B, L + K), PLACEHOLDER_ID, dtype=ids.dtype, device=ids.device)
    new_ids[:, :L] = ids
    new_ids = torch.where(ar[None] < n[:, None], new_ids, torch.full_like(new_ids, PLACEHOLDER_ID))
    new_mm = torch.zeros((B, L + K), dtype=mm.dtype, device=mm.device)
    new_mm[:, :L] = mm * attn.to(mm.dtype)
    ext = dict(batch, input_ids=new_ids, attention_mask=real.to(attn.dtype), mm_token_type_ids=new_mm)
    emb = model.vlm.model.get_input_embeddings()(new_ids)
    extra = heads.token_embeddings(batch["state"]).to(emb.dtype)  # (B, K, H)
    emb = emb.scatter(1, slots[:, :, None].expand(-1, -1, emb.shape[-1]), extra)
    return Stage1Inputs(ext, emb, slots)


def _text_hidden(model, batch: dict, inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Last hidden states (B, L, H) of one VLM pass with explicit M-RoPE position ids and no cache."""
    vlm = model.vlm
    out = vlm.model(input_ids=None if inputs_embeds is not None else batch["input_ids"], inputs_embeds=inputs_embeds,
                    attention_mask=batch["attention_mask"], pixel_values=batch.get("pixel_values"),
                    image_grid_thw=batch.get("image_grid_thw"), mm_token_type_ids=batch["mm_token_type_ids"],
                    position_ids=vlm_position_ids(vlm, batch), use_cache=False)
    return out.last_hidden_state


def choice_forward(model, heads: ChoiceHeads, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1 VLM pass -> candidates (B, N, T, D) and scores (B, N), in normalised action space, float32."""
    inp = stage1_inputs(model, heads, batch)
    hidden = _text_hidden(model, inp.batch, inp.inputs_embeds)
    H = hidden.shape[-1]
    picked = hidden.gather(1, inp.slots[:, :, None].expand(-1, -1, H))  # (B, T + 2, H)
    return heads(picked[:, 1:-1], picked[:, -1])


def candidate_l1(candidates: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor) -> torch.Tensor:
    """Masked-mean L1 of each candidate chunk: (B, N, T, D) against actions / mask (B, T, D) -> (B, N)."""
    a, m = actions.float()[:, None], action_mask.float()[:, None]  # (B, 1, T, D)
    return ((candidates - a).abs() * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp_min(1.0)


def choice_losses(candidates: torch.Tensor, scores: torch.Tensor, actions: torch.Tensor, action_mask: torch.Tensor,
                  score_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """WTA masked-mean L1 + score MSE. d_n = candidate_l1; only argmin_n d_n gets gradient from the action loss;
    the score target d_n is detached, so the score loss never moves the candidates."""
    d = candidate_l1(candidates, actions, action_mask)  # (B, N)
    wta = d.min(dim=1).values.mean()
    score = F.mse_loss(scores, d.detach())
    return {"loss": wta + score_weight * score, "action": wta, "score": score, "l1_all": d.detach().mean()}


def stage1_loss(model, heads: ChoiceHeads, batch: dict, vl_batch: dict | None = None, *, score_weight: float = 1.0,
                vl_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """The stage-1 objective on a robot batch (XR0Policy.make_batch) and optionally a VL batch (Processor.vl_batch).

    Returns scalar tensors: loss (to backprop) = action + score_weight * score [+ vl_weight * vl], action (WTA L1),
    score (MSE), l1_all (mean L1 over all candidates, for logging) and vl (answer-token cross-entropy) if given.
    The VL:robot ratio (1:6 in the paper) is the caller's choice of batch sizes / sampling.
    """
    dev = next(model.parameters()).device
    cand, scores = choice_forward(model, heads, batch)
    out = choice_losses(cand, scores, batch["actions"].to(dev), batch["action_mask"].to(dev), score_weight)
    if vl_batch is not None:
        out["vl"] = vl_loss(model, vl_batch)
        out["loss"] = out["loss"] + vl_weight * out["vl"]
    return out


@torch.no_grad()
def choose(model, heads: ChoiceHeads, batch: dict) -> torch.Tensor:
    """The best-scored candidate per sample (B, T, D), normalised action space: a coarse action proposal.
    Scores regress each candidate's L1 error, so the best is the lowest score."""
    cand, scores = choice_forward(model, heads, batch)
    best = scores.argmin(dim=1)
    return cand[torch.arange(cand.shape[0], device=cand.device), best]


# ---------------------------------------------------------------------- vision-language co-training
def _answer_logits(model, vl_batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (M, V) at the positions predicting each labelled token, and those M target ids. Applying the tied
    lm_head only there avoids a (B, L, 151936) logit tensor."""
    batch = model.batch_to_device(vl_batch)
    if "labels" not in batch:
        raise ValueError("VL batch needs 'labels' (use Processor.vl_batch)")
    hidden = _text_hidden(model, batch)
    target = batch["labels"][:, 1:]
    sel = target != IGNORE
    if not sel.any():
        raise ValueError("VL batch has no answer tokens to predict")
    return model.vlm.lm_head(hidden[:, :-1][sel]).float(), target[sel]


def vl_loss(model, vl_batch: dict) -> torch.Tensor:
    """Next-token cross-entropy averaged over the answer tokens (+ closing <|im_end|>) of the batch."""
    logits, target = _answer_logits(model, vl_batch)
    return F.cross_entropy(logits, target)


@torch.no_grad()
def vl_correct(model, vl_batch: dict) -> torch.Tensor:
    """(B,) bool: every answer token and the closing <|im_end|> is the full-vocabulary argmax given the true
    prefix. That is exactly "greedy decoding returns the answer and stops" (up to exact logit ties)."""
    logits, target = _answer_logits(model, vl_batch)
    hit = logits.argmax(-1) == target
    sel = vl_batch["labels"][:, 1:].to(hit.device) != IGNORE
    per = torch.ones(sel.shape, dtype=torch.bool, device=hit.device)
    per[sel] = hit
    return per.all(dim=1)


@torch.no_grad()
def vl_generate(model, processor, samples: list[dict], max_new_tokens: int = 8) -> list[str]:
    """Greedy answers (no cache; one full VLM pass per new token: fine for one-word answers in tests/benchmarks).
    `processor`: the model's Processor (xr0.processing), which tokenises and collates."""
    tok = processor.tokenizer
    end_id = tok.convert_tokens_to_ids("<|im_end|>")
    answers = []
    for s in samples:
        ids, images = processor.vl_prompt_ids(s["question"], s["images"])
        out: list[int] = []
        for _ in range(max_new_tokens):
            batch = model.batch_to_device(processor.collate([ids + out], [images] if images is not None else []))
            nxt = int(model.vlm.lm_head(_text_hidden(model, batch)[0, -1]).argmax())
            if nxt == end_id:
                break
            out.append(nxt)
        answers.append(tok.decode(out))
    return answers
