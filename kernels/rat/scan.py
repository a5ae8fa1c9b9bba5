"""Vectorised PyTorch forms of RAT's core (the reference backend of the `rat` and `rnn` blocks).

Same maths as `reference.py` (the loop version, which stays the ground truth), computed
without a Python loop over tokens:

- the gated recurrence s_t = g_t * s_{t-1} + (1 - g_t) * x_t is an associative scan over
  pairs (a, b) = (g_t, (1 - g_t) x_t) with (a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2).
  It runs as a Hillis-Steele scan: log2(chunk_size) full-tensor steps, all chunks at once.
  It multiplies gates only (no logs, no divisions), so g = 0 or g = 1 is as safe here as in
  the loop;
- the attention over chunk ends plus the token's own running key is one masked softmax.

Shapes: B batch, T tokens, H heads, G qk groups, D head_dim, L chunk_size, C chunks.
"""

from __future__ import annotations

import torch

from archlab.kernels.rat.reference import chunk_ends, expand_groups, forget_gate, rat_attend
from archlab.kernels.rope import apply_rope, rope_cos_sin


def _shift(x: torch.Tensor, offset: int, fill: float, dim: int) -> torch.Tensor:
    """x moved `offset` places forward along `dim`; the first `offset` entries are `fill`."""
    kept = x.narrow(dim, 0, x.shape[dim] - offset)
    shape = list(x.shape)
    shape[dim] = offset
    return torch.cat([x.new_full(shape, fill), kept], dim=dim)


def linear_scan(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Inclusive scan s_t = a_t * s_{t-1} + b_t along `dim`, from s_{-1} = 0.

    `a` broadcasts against `b` (so one gate can drive several streams); log-depth."""
    n, offset = b.shape[dim], 1
    while offset < n:
        b = a * _shift(b, offset, 0.0, dim) + b
        if 2 * offset < n:  # the last step needs no new products of gates
            a = a * _shift(a, offset, 1.0, dim)
        offset *= 2
    return b


def chunk_scan_parallel(x: torch.Tensor, g: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """s_t = g_t * s_{t-1} + (1 - g_t) * x_t along dim 1 (time), reset at every chunk start.

    x: [B, T, ...]; g: [B, T, ...] broadcastable to x. Equals `reference.chunk_scan`."""
    B, T = x.shape[:2]
    if T == 0:
        return (1 - g) * x
    L = min(chunk_size, T)
    C = -(-T // L)
    pad = C * L - T
    if pad:  # padded tail tokens come after every real one, so they change nothing
        x = torch.cat([x, x.new_zeros(B, pad, *x.shape[2:])], dim=1)
        g = torch.cat([g, g.new_ones(B, pad, *g.shape[2:])], dim=1)
    b = (1 - g) * x
    s = linear_scan(g.reshape(B, C, L, *g.shape[2:]), b.reshape(B, C, L, *b.shape[2:]), dim=2)
    return s.reshape(B, C * L, *s.shape[3:])[:, :T]


def rat_scan_states(
    k: torch.Tensor,
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    gate_bias: torch.Tensor,
    chunk_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The running keys and values (un-rotated), float32: k [B, T, G, D], v and gate logits
    [B, T, H, D], gate bias [H * D] -> k_run, v_run [B, T, H, D]."""
    H = v.shape[2]
    g = forget_gate(gate_logits, gate_bias)
    kv = torch.stack([expand_groups(k.float(), H), v.float()], dim=2)  # [B, T, 2, H, D]
    kv_run = chunk_scan_parallel(kv, g[:, :, None], chunk_size)
    return kv_run[:, :, 0], kv_run[:, :, 1]


def rat_core_scan(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    gate_bias: torch.Tensor,
    chunk_size: int,
    rope: bool = True,
    rope_theta: float = 10000.0,
    attn_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """`reference.rat_core_reference` without the loop over tokens (same arguments and
    result: q, k [B, T, G, D]; v, gate_logits [B, T, H, D]; gate_bias [H * D] -> y
    [B, T, H, D] in float32, or in `attn_dtype` when that is lower)."""
    k_run, v_run = rat_scan_states(k, v, gate_logits, gate_bias, chunk_size)
    return rat_attend(q, k_run, v_run, chunk_size, rope, rope_theta, attn_dtype)


def rat_prefill_cache_scan(
    k: torch.Tensor,
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    gate_bias: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    chunk_size: int,
    rope: bool = True,
    rope_theta: float = 10000.0,
) -> None:
    """`reference.rat_prefill_cache_reference` without the loop over tokens: fills cache
    slots 0..ceil(T/L)-1 (complete chunks: final key RoPE-rotated at the chunk index, and
    final value; a chunk in progress: its running, un-rotated key and value)."""
    T = v.shape[1]
    k_run, v_run = rat_scan_states(k, v, gate_logits, gate_bias, chunk_size)
    n_full = T // chunk_size
    k_slots, v_slots = chunk_ends(k_run, chunk_size), chunk_ends(v_run, chunk_size)
    if rope and n_full:
        cos, sin = rope_cos_sin(torch.arange(n_full, device=v.device), k.shape[-1], rope_theta)
        k_slots = apply_rope(k_slots, cos, sin)
    if T % chunk_size:
        k_slots = torch.cat([k_slots, k_run[:, -1:]], dim=1)
        v_slots = torch.cat([v_slots, v_run[:, -1:]], dim=1)
    k_cache[:, : k_slots.shape[1]] = k_slots.to(k_cache.dtype)
    v_cache[:, : v_slots.shape[1]] = v_slots.to(v_cache.dtype)
