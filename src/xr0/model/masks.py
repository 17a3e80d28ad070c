"""Attention mask and RoPE positions of the DiT tokens [sink, state, a_0 .. a_{T-1}] (spec §2.4-2.5)."""

from __future__ import annotations

import torch

SINK, STATE, FIRST_ACTION = 0, 1, 2  # token slots


def expert_mask(chunk_len: int, prefix_len: int, window: int | None,
                hidden_prefix: torch.Tensor | None = None, device=None) -> torch.Tensor:
    """Boolean (S, S) self-attention mask, S = 2 + T; True = the query (row) may attend to the key (column).

    sink sees itself; state sees sink + state; action i sees sink, state and actions j with i - window <= j <= i
    (the Λ-shape band; window=None = all j <= i). Sink and state never see actions. `hidden_prefix` (bool (p,))
    hides those prefix tokens from every noisy (non-prefix) query: the prefix dropout of async training.
    """
    T, S = chunk_len, chunk_len + FIRST_ACTION
    if not 0 <= prefix_len <= T:
        raise ValueError(f"prefix_len {prefix_len} must be within [0, chunk_len={T}]")
    m = torch.zeros(S, S, dtype=torch.bool, device=device)
    m[SINK, SINK] = True
    m[STATE, SINK] = m[STATE, STATE] = True
    m[FIRST_ACTION:, SINK] = m[FIRST_ACTION:, STATE] = True
    i = torch.arange(T, device=device)
    band = i[None, :] <= i[:, None]
    if window is not None:
        band &= i[None, :] >= i[:, None] - window
    m[FIRST_ACTION:, FIRST_ACTION:] = band
    if hidden_prefix is not None:
        if hidden_prefix.shape != (prefix_len,):
            raise ValueError(f"hidden_prefix must have shape ({prefix_len},), got {tuple(hidden_prefix.shape)}")
        cols = FIRST_ACTION + torch.nonzero(hidden_prefix.to(device), as_tuple=True)[0]
        rows = slice(FIRST_ACTION + prefix_len, S)
        m[rows, cols] = False
    return m


def sample_hidden_prefix(prefix_len: int, prob: float, keep_last: int,
                         generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Prefix dropout: each prefix token except the last `keep_last` is hidden with probability `prob` (one draw per
    batch), from prefix_len - keep_last uniform draws as the official `_random_mask_prefix`; None if none can hide."""
    if prefix_len <= keep_last or prob <= 0:
        return None
    return hidden_prefix_from_draws(torch.rand(prefix_len - keep_last, generator=generator), prob, keep_last)


def hidden_prefix_from_draws(draws: torch.Tensor, prob: float, keep_last: int) -> torch.Tensor:
    """(p - keep_last,) uniform draws -> the bool (p,) hidden-prefix mask: draw < prob hides, the last kept."""
    return torch.cat([draws < prob, torch.zeros(keep_last, dtype=torch.bool, device=draws.device)])


def expert_positions(max_position: torch.Tensor, chunk_len: int, prefix_len: int, rope_offset: int) -> torch.Tensor:
    """M-RoPE position ids (3, B, S) of the DiT tokens, continuing after the VLM prompt.

    max_position: (3, B), the per-axis maximum of the prompt's position ids (P). sink = P+1, state = P+2,
    action j = P+3+j, and every noisy action (j >= prefix_len) is shifted by a further `rope_offset`.
    """
    offsets = torch.arange(chunk_len + FIRST_ACTION, device=max_position.device) + 1
    offsets[FIRST_ACTION + prefix_len:] += rope_offset
    return max_position[:, :, None] + offsets
