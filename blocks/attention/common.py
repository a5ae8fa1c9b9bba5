"""The torch side that `attention` and `local_attention` share: the attention cores
(float32 reference, sdpa, flex), the window mask and the qk-norm. Their torch-free
helpers (head sizes, visible pairs, the analytic costs) are in `archlab.blocks.attention`.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from archlab.kernels.flex_compiled import (
    compiled_create_block_mask,
    compiled_flex,
    kernel_options,
)


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
    q_BTHD: torch.Tensor,
    k_BTKD: torch.Tensor,
    v_BTKD: torch.Tensor,
    window: int | None,
    block_mask=None,
) -> torch.Tensor:
    """Causal (sliding-window when `window` is set) attention with compiled flex_attention;
    `block_mask` is `flex_block_mask(T, window, device)`, made here when not given."""
    if block_mask is None:
        block_mask = flex_block_mask(q_BTHD.shape[1], window, q_BTHD.device)
    out_BHTD = compiled_flex()(
        q_BTHD.transpose(1, 2),
        k_BTKD.transpose(1, 2),
        v_BTKD.transpose(1, 2),
        block_mask=block_mask,
        scale=q_BTHD.shape[-1] ** -0.5,
        enable_gqa=q_BTHD.shape[2] != k_BTKD.shape[2],
        kernel_options=kernel_options(q_BTHD.shape[1]),
    )
    return out_BHTD.transpose(1, 2)
