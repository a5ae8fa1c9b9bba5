"""Plain-PyTorch reference of RAT's core, written for clarity (the float32 ground truth).

Shapes: B batch, T tokens, H heads, G qk groups, D head_dim, L chunk_size, C chunks.

Given q, k [B, T, G, D], v [B, T, H, D], the gate logits [B, T, H, D] and the learned
gate bias [H * D], the forget gate is g = sigmoid(gate_logits + gate_bias) in float32, and
for every head h (using group h mod G):

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

from archlab.kernels.rope import apply_rope, rope_cos_sin


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


def forget_gate(gate_logits: torch.Tensor, gate_bias: torch.Tensor) -> torch.Tensor:
    """g = sigmoid(logits + bias) in float32; logits [..., H, D], bias [H * D]."""
    H, D = gate_logits.shape[-2:]
    return torch.sigmoid(gate_logits.float() + gate_bias.float().view(H, D))


def rat_core_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    gate_bias: torch.Tensor,
    chunk_size: int,
    rope: bool = True,
    rope_theta: float = 10000.0,
) -> torch.Tensor:
    """RAT's mixing of one layer. q, k: [B, T, G, D]; v, gate_logits: [B, T, H, D];
    gate_bias: [H * D] -> y [B, T, H, D].

    Computed in float32 (inputs are upcast); the output is returned in float32.
    """
    H = v.shape[2]
    g = forget_gate(gate_logits, gate_bias)
    k_run = chunk_scan(expand_groups(k.float(), H), g, chunk_size)
    v_run = chunk_scan(v.float(), g, chunk_size)
    return rat_attend(q, k_run, v_run, chunk_size, rope, rope_theta)


def rat_attend(
    q: torch.Tensor,
    k_run: torch.Tensor,
    v_run: torch.Tensor,
    chunk_size: int,
    rope: bool = True,
    rope_theta: float = 10000.0,
    attn_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Token t in chunk c attends over the chunk ends of chunks < c and its own running
    key/value. q [B, T, G, D]; k_run, v_run [B, T, H, D] (un-rotated) -> y [B, T, H, D].

    RoPE is applied in float32; the products and the softmax run in `attn_dtype`
    (float32 for the reference; a lower one gives the low-precision baseline of tests)."""
    B, T, H, D = v_run.shape
    qh = expand_groups(q.float(), H)
    if rope:
        cos, sin = rope_cos_sin(torch.arange(T, device=q.device) // chunk_size, D, rope_theta)
        qh, k_run = apply_rope(qh, cos, sin), apply_rope(k_run.float(), cos, sin)
    qh, k_run, v_run = qh.to(attn_dtype), k_run.to(attn_dtype), v_run.to(attn_dtype)
    k_end, v_end = chunk_ends(k_run, chunk_size), chunk_ends(v_run, chunk_size)  # [B, C, H, D]
    scale = 1.0 / math.sqrt(D)
    scores = torch.einsum("bthd,bchd->bhtc", qh, k_end) * scale
    chunk_of_t = torch.arange(T, device=q.device) // chunk_size
    visible = torch.arange(k_end.shape[1], device=q.device)[None, :] < chunk_of_t[:, None]
    scores = scores.masked_fill(~visible, float("-inf"))
    score_self = torch.einsum("bthd,bthd->bht", qh, k_run)[..., None] * scale
    probs = torch.softmax(torch.cat([scores, score_self], dim=-1), dim=-1)
    y = torch.einsum("bhtc,bchd->bthd", probs[..., :-1], v_end)
    return y + probs[..., -1].permute(0, 2, 1)[..., None] * v_run


# --- Decode. The cache of one layer is two tensors k_cache, v_cache [B, C_max, H, D]
# (C_max = ceil(max_len / L)). Slot c holds the final key/value of chunk c once that chunk
# is complete (keys stored RoPE-rotated at position c), and the running, un-rotated
# key/value of the chunk in progress, so that the recurrence can go on from it.


def rat_prefill_cache_reference(
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
    """Fill the cache slots 0..ceil(T/L)-1 from a whole prompt (k [B, T, G, D], v, gate
    logits [B, T, H, D]), in the layout described above."""
    B, T, H, D = v.shape
    g = forget_gate(gate_logits, gate_bias)
    k_run = chunk_scan(expand_groups(k.float(), H), g, chunk_size)
    v_run = chunk_scan(v.float(), g, chunk_size)
    ends = list(range(chunk_size - 1, T, chunk_size))
    if T % chunk_size:
        ends.append(T - 1)  # the chunk in progress: its running state
    ends_t = torch.tensor(ends, device=v.device)
    k_slots, v_slots = k_run[:, ends_t], v_run[:, ends_t]
    n_full = T // chunk_size
    if rope and n_full:
        cos, sin = rope_cos_sin(torch.arange(n_full, device=v.device), D, rope_theta)
        k_slots[:, :n_full] = apply_rope(k_slots[:, :n_full], cos, sin)
    k_cache[:, : len(ends)] = k_slots.to(k_cache.dtype)
    v_cache[:, : len(ends)] = v_slots.to(v_cache.dtype)


def rat_decode_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    gate_bias: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: int,
    chunk_size: int,
    rope: bool = True,
    rope_theta: float = 10000.0,
) -> torch.Tensor:
    """One decode step for the token at position `pos` (pos tokens already cached).
    q, k: [B, G, D]; v, gate_logits: [B, H, D]. Updates slot pos // L of the cache in place
    and returns y [B, H, D] in float32."""
    B, H, D = v.shape
    c, first = pos // chunk_size, pos % chunk_size == 0
    g = forget_gate(gate_logits, gate_bias)
    k_new, v_new = (1 - g) * expand_groups(k.float()[:, None], H)[:, 0], (1 - g) * v.float()
    if not first:
        k_new = k_new + g * k_cache[:, c].float()
        v_new = v_new + g * v_cache[:, c].float()
    qh, k_self = expand_groups(q.float()[:, None], H)[:, 0], k_new
    if rope:
        cos, sin = rope_cos_sin(torch.arange(c, c + 1, device=v.device), D, rope_theta)
        qh = apply_rope(qh[:, None], cos, sin)[:, 0]
        k_self = apply_rope(k_new[:, None], cos, sin)[:, 0]
    complete = (pos + 1) % chunk_size == 0
    k_cache[:, c] = (k_self if complete else k_new).to(k_cache.dtype)
    v_cache[:, c] = v_new.to(v_cache.dtype)
    return _attend_cache(qh, k_cache, v_cache, c, k_self, v_new)


def rat_decode_shared_reference(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    pos: int,
    chunk_size: int,
    rope: bool = True,
    rope_theta: float = 10000.0,
) -> torch.Tensor:
    """One decode step of a block that reads another block's cache (`share_cache`): the
    source has already stored position `pos` in slot pos // L (see the layout above), so
    only the query is new. q [B, G, D] -> y [B, H, D] in float32; the cache is not changed."""
    B, _, H, D = k_cache.shape
    c, complete = pos // chunk_size, (pos + 1) % chunk_size == 0
    qh, k_self = expand_groups(q.float()[:, None], H)[:, 0], k_cache[:, c].float()
    if rope:
        cos, sin = rope_cos_sin(torch.arange(c, c + 1, device=q.device), D, rope_theta)
        qh = apply_rope(qh[:, None], cos, sin)[:, 0]
        if not complete:  # a chunk in progress is stored un-rotated
            k_self = apply_rope(k_self[:, None], cos, sin)[:, 0]
    return _attend_cache(qh, k_cache, v_cache, c, k_self, v_cache[:, c].float())


def _attend_cache(qh, k_cache, v_cache, c: int, k_self, v_self) -> torch.Tensor:
    """One query per head [B, H, D] over the ends of chunks 0..c-1 in the cache and the
    token's own (rotated) key and value -> y [B, H, D] float32."""
    keys = torch.cat([k_cache[:, :c].float(), k_self[:, None]], dim=1)  # [B, c + 1, H, D]
    values = torch.cat([v_cache[:, :c].float(), v_self[:, None]], dim=1)
    scale = 1.0 / math.sqrt(qh.shape[-1])
    probs = torch.softmax(torch.einsum("bhd,bchd->bhc", qh, keys) * scale, dim=-1)
    return torch.einsum("bhc,bchd->bhd", probs, values)
