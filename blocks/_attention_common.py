"""What `attention` and `local_attention` share: head sizes, the attention cores (float32
reference, sdpa, flex) and the analytic costs.

Costs count FLOPs as 2 per multiply-add. Matmul-type work is exact: the four projections,
and QK^T and PV at 2 * head_dim FLOPs each per visible (query, key) pair per head.
`other` uses these per-element constants:
- softmax: `SOFTMAX_FLOPS` (5) per visible score per head (scale, max, exp, sum, divide);
- RoPE: `ROPE_FLOPS` (3) per element of q and k (two multiplies, one add);
- qk-norm: `QK_NORM_FLOPS` (4) per element of q and k (square, sum, rsqrt scale, weight);
- bias: 1 per output element of each projection.
"""

from __future__ import annotations

import functools
from typing import Protocol

import torch
import torch.nn.functional as F

from archlab.blocks.base import FlopCount, linear_flops
from archlab.kernels.flex_compiled import (
    compiled_create_block_mask,
    compiled_flex,
    kernel_options,
)

SOFTMAX_FLOPS = 5
ROPE_FLOPS = 3
QK_NORM_FLOPS = 4


class AttentionParams(Protocol):
    heads: int
    kv_heads: int | None
    head_dim: int | None
    rope: bool
    qk_norm: bool
    bias: bool
    share_cache: int | None


def head_dims(p: AttentionParams, d_model: int) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim) with the defaults filled in."""
    return p.heads, p.kv_heads or p.heads, p.head_dim or d_model // p.heads


def visible_pairs(seq_len: int, window: int | None) -> int:
    """(query, key) pairs that a causal mask, optionally limited to `window` keys, allows."""
    if window is None or window >= seq_len:
        return seq_len * (seq_len + 1) // 2
    return window * (window + 1) // 2 + (seq_len - window) * window


def own_kv_heads(p: AttentionParams, d_model: int) -> int:
    """kv heads this block projects itself: none when it reads another block's (sharing)."""
    return 0 if p.share_cache is not None else head_dims(p, d_model)[1]


def param_count(p: AttentionParams, d_model: int) -> int:
    """Parameters of the q/(k/v)/o projections, their biases and the qk-norm weights; a
    block that shares another's cache has no k/v projections and no k-norm weight."""
    H, _, dh = head_dims(p, d_model)
    K = own_kv_heads(p, d_model)
    weights = 2 * d_model * H * dh + 2 * d_model * K * dh
    biases = (H * dh + 2 * K * dh + d_model) if p.bias else 0
    norms = dh * (2 if K else 1) if p.qk_norm else 0
    return weights + biases + norms


def cost(p: AttentionParams, d_model: int, batch: int, tokens: int, pairs: int) -> FlopCount:
    """FLOPs for `tokens` new tokens per sequence whose queries see `pairs` keys in all."""
    H, _, dh = head_dims(p, d_model)
    K = own_kv_heads(p, d_model)
    proj = 2 * linear_flops(tokens, d_model, H * dh) + 2 * linear_flops(tokens, d_model, K * dh)
    products = 2 * 2 * dh * pairs * H
    qk_elems = tokens * (H + K) * dh
    other = SOFTMAX_FLOPS * pairs * H
    other += ROPE_FLOPS * qk_elems if p.rope else 0
    other += QK_NORM_FLOPS * qk_elems if p.qk_norm else 0
    other += tokens * (H * dh + 2 * K * dh + d_model) if p.bias else 0
    return FlopCount(batch * (proj + products), batch * other)


def window_mask(seq_len: int, window: int | None, device: torch.device) -> torch.Tensor:
    """Boolean [T, T] mask, True where query i may see key j: j <= i and i - j < window."""
    i = torch.arange(seq_len, device=device)[:, None]
    j = torch.arange(seq_len, device=device)[None, :]
    visible = j <= i
    return visible if window is None else visible & (i - j < window)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, computed in float32, returned in x's dtype."""
    y = F.rms_norm(x.float(), (x.shape[-1],), weight.float(), eps)
    return y.to(x.dtype)


def reference_attention(
    q_BTHD: torch.Tensor, k_BSKD: torch.Tensor, v_BSKD: torch.Tensor, mask_TS: torch.Tensor | None
) -> torch.Tensor:
    """Softmax attention written out in float32: head h reads kv head h // (H // K).
    `mask_TS` (True = visible) or None for all keys visible. Returns [B, T, H, D]."""
    group = q_BTHD.shape[2] // k_BSKD.shape[2]
    q_BHTD = q_BTHD.float().transpose(1, 2)
    k_BHSD = k_BSKD.float().repeat_interleave(group, dim=2).transpose(1, 2)
    v_BHSD = v_BSKD.float().repeat_interleave(group, dim=2).transpose(1, 2)
    scores_BHTS = (q_BHTD @ k_BHSD.transpose(2, 3)) * q_BHTD.shape[-1] ** -0.5
    if mask_TS is not None:
        scores_BHTS = scores_BHTS.masked_fill(~mask_TS, float("-inf"))
    out_BHTD = scores_BHTS.softmax(dim=-1) @ v_BHSD
    return out_BHTD.transpose(1, 2).to(q_BTHD.dtype)


def sdpa_attention(
    q_BTHD: torch.Tensor,
    k_BSKD: torch.Tensor,
    v_BSKD: torch.Tensor,
    mask_TS: torch.Tensor | None = None,
    causal: bool = False,
) -> torch.Tensor:
    """torch's scaled_dot_product_attention on [B, T, H, D] tensors (GQA through enable_gqa)."""
    out_BHTD = F.scaled_dot_product_attention(
        q_BTHD.transpose(1, 2),
        k_BSKD.transpose(1, 2),
        v_BSKD.transpose(1, 2),
        attn_mask=mask_TS,
        is_causal=causal,
        scale=q_BTHD.shape[-1] ** -0.5,
        enable_gqa=q_BTHD.shape[2] != k_BSKD.shape[2],
    )
    return out_BHTD.transpose(1, 2)


@functools.lru_cache(maxsize=32)
def flex_block_mask(seq_len: int, window: int | None, device: torch.device):
    """The causal (or sliding-window) BlockMask for one length, built once per (T, device)."""

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    def sliding(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    mask_mod = causal if window is None else sliding
    return compiled_create_block_mask()(mask_mod, None, None, seq_len, seq_len, device=device)


def flex_attention(
    q_BTHD: torch.Tensor, k_BTKD: torch.Tensor, v_BTKD: torch.Tensor, window: int | None
) -> torch.Tensor:
    """Causal (sliding-window when `window` is set) attention with compiled flex_attention."""
    out_BHTD = compiled_flex()(
        q_BTHD.transpose(1, 2),
        k_BTKD.transpose(1, 2),
        v_BTKD.transpose(1, 2),
        block_mask=flex_block_mask(q_BTHD.shape[1], window, q_BTHD.device),
        scale=q_BTHD.shape[-1] ** -0.5,
        enable_gqa=q_BTHD.shape[2] != k_BTKD.shape[2],
        kernel_options=kernel_options(q_BTHD.shape[1]),
    )
    return out_BHTD.transpose(1, 2)
