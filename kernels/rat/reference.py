"""Plain-PyTorch reference of RAT's core, written for clarity (the float32 ground truth).

Shapes: B batch, T tokens, H heads, G qk groups, D head_dim, L chunk_size, C chunks.

Given q, k [B, T, G, D], v [B, T, H, D] and the forget gate g [B, T, H, D] (already
sigmoid-ed, values in (0, 1)), for every head h (using group h mod G):

1. Within each chunk of L tokens, the gated recurrence
   s_t = g_t * s_{t-1} + (1 - g_t) * x_t, reset at each chunk start, runs over the values
   and over the keys expanded to heads (key channels share the value gate).
2. If `rope`, q and the recurrent keys are rotated by RoPE at position t // L.
3. Token t in chunk c attends, with one softmax (scale D**-0.5), over the chunk-end keys
   and values of chunks 0..c-1 plus its own running key and value.
"""

from __future__ import annotations

import math

import torch

from archlab.blocks.rope import apply_rope, rope_cos_sin


def expand_groups(x_BTGD: torch.Tensor, heads: int) -> torch.Tensor:
    """[B, T, G, D] -> [B, T, H, D] with head h reading group h mod G."""
    groups = x_BTGD.shape[2]
    return x_BTGD.repeat(1, 1, heads // groups, 1)


def chunk_scan(x_BTHD: torch.Tensor, g_BTHD: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """s_t = g_t * s_{t-1} + (1 - g_t) * x_t, with s reset to 0 at every chunk start."""
    s = torch.zeros_like(x_BTHD[:, 0])
    out = []
    for t in range(x_BTHD.shape[1]):
        if t % chunk_size == 0:
            s = torch.zeros_like(s)
        s = g_BTHD[:, t] * s + (1 - g_BTHD[:, t]) * x_BTHD[:, t]
        out.append(s)
    return torch.stack(out, dim=1)


def chunk_ends(x_BTHD: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """The states at the last token of every complete chunk: [B, T // L, H, D]."""
    return x_BTHD[:, chunk_size - 1 :: chunk_size]


def rat_core_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    chunk_size: int,
    rope: bool = True,
    rope_theta: float = 10000.0,
) -> torch.Tensor:
    """RAT's mixing of one layer. q, k: [B, T, G, D]; v, g: [B, T, H, D] -> y [B, T, H, D].

    Computed in float32 (inputs are upcast); the output is returned in float32.
    """
    B, T, H, D = v.shape
    q, k, v, g = q.float(), k.float(), v.float(), g.float()
    k_run = chunk_scan(expand_groups(k, H), g, chunk_size)
    v_run = chunk_scan(v, g, chunk_size)
    qh = expand_groups(q, H)
    if rope:
        cos, sin = rope_cos_sin(torch.arange(T, device=v.device) // chunk_size, D, rope_theta)
        qh, k_run = apply_rope(qh, cos, sin), apply_rope(k_run, cos, sin)
    k_end, v_end = chunk_ends(k_run, chunk_size), chunk_ends(v_run, chunk_size)  # [B, C, H, D]
    scale = 1.0 / math.sqrt(D)
    scores_inter = torch.einsum("bthd,bchd->bhtc", qh, k_end) * scale
    chunk_of_t = torch.arange(T, device=v.device) // chunk_size
    visible = torch.arange(k_end.shape[1], device=v.device)[None, :] < chunk_of_t[:, None]
    scores_inter = scores_inter.masked_fill(~visible, float("-inf"))
    score_self = torch.einsum("bthd,bthd->bht", qh, k_run)[..., None] * scale
    probs = torch.softmax(torch.cat([scores_inter, score_self], dim=-1), dim=-1)
    y = torch.einsum("bhtc,bchd->bthd", probs[..., :-1], v_end)
    return y + probs[..., -1].permute(0, 2, 1)[..., None] * v_run
