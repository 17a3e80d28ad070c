"""Attention mask and RoPE positions of the DiT tokens [sink, state, a_0 .. a_{T-1}] (spec §2.4-2.5)."""

from __future__ import annotations

import torch

SINK, STATE, FIRST_ACTION = 0, 1, 2  # token slots


def expert_mask(chunk_len: int, prefix_len: int = 0, window: int | None = 4,
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


def sample_hidden_prefix(prefix_len: int, prob: float = 0.5, keep_last: int = 2,
                         generator: torch.Generator | None = None) -> torch.Tensor | None:
    """Prefix dropout: each prefix token except the last `keep_last` is hidden with probability `prob` (one draw per batch)."""
    if prefix_len <= keep_last or prob <= 0:
        return None
    hidden = torch.rand(prefix_len, generator=generator) < prob
    hidden[prefix_len - keep_last:] = False
    return hidden


def expert_positions(max_position: torch.Tensor, chunk_len: int, prefix_len: int = 0,
                     rope_offset: int = 10) -> torch.Tensor:
    """M-RoPE position ids (3, B, S) of the DiT tokens, continuing after the VLM prompt.

    max_position: (3, B), the per-axis maximum of the prompt's position ids (P). sink = P+1, state = P+2,
    action j = P+3+j, and every noisy action (j >= prefix_len) is shifted by a further `rope_offset`.
    """
    offsets = torch.arange(chunk_len + FIRST_ACTION, device=max_position.device) + 1
    offsets[FIRST_ACTION + prefix_len:] += rope_offset
    return max_position[:, :, None] + offsets
