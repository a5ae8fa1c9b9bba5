"""The torch side that `attention` and `local_attention` share: the attention cores
(float32 reference, sdpa, flex), the window mask, the qk-norm and partial RoPE. Their
torch-free helpers (head sizes, visible pairs, the analytic costs) are in
`archlab.blocks.attention`.

Soft-capping (`softcap`) and sink logits (`sinks`, [H, n]) are in the reference and in
flex: flex caps through a `score_mod` and adds the sinks after the kernel from its
log-sum-exp (out * sigmoid(lse - logsumexp(sinks)), the same softmax); sdpa has neither.
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
from archlab.kernels.rope import rope

try:
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:  # pragma: no cover - torch without FlexAttention
    AuxRequest = None


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


def partial_rope(
    x_BTHD: torch.Tensor,
    positions_T: torch.Tensor,
    theta: float,
    rotary_dim: int,
    table: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """RoPE on the first `rotary_dim` dims of each head (their own frequencies, as HF's
    partial_rotary_factor), the rest passed through; all of them when rotary_dim = D.
    `table`: `cos_sin_table` rows of rotary_dim columns covering the positions, or None."""
    if rotary_dim == x_BTHD.shape[-1]:
        return rope(x_BTHD, positions_T, theta, table)
    rotated = rope(x_BTHD[..., :rotary_dim], positions_T, theta, table)
    return torch.cat([rotated, x_BTHD[..., rotary_dim:]], dim=-1)


def reference_attention(
    q_BTHD: torch.Tensor,
    k_BSKD: torch.Tensor,
    v_BSKD: torch.Tensor,
    mask_TS: torch.Tensor | None,
    softcap: float | None = None,
    sinks_HN: torch.Tensor | None = None,
) -> torch.Tensor:
    """Softmax attention written out in float32: head h reads kv head h // (H // K).
    `mask_TS` (True = visible) or None for all keys visible; scores (after the 1/sqrt(D)
    scale) capped as softcap * tanh(s / softcap) when `softcap` is set; `sinks_HN`, n
    learned logits per head, join each softmax's denominator and read no value. v may be
    wider or narrower than q and k. Returns [B, T, H, Dv]."""
    group = q_BTHD.shape[2] // k_BSKD.shape[2]
    q_BHTD = q_BTHD.float().transpose(1, 2)
    k_BHSD = k_BSKD.float().repeat_interleave(group, dim=2).transpose(1, 2)
    v_BHSD = v_BSKD.float().repeat_interleave(group, dim=2).transpose(1, 2)
    scores_BHTS = (q_BHTD @ k_BHSD.transpose(2, 3)) * q_BHTD.shape[-1] ** -0.5
    if softcap is not None:
        scores_BHTS = softcap * torch.tanh(scores_BHTS / softcap)
    if mask_TS is not None:
        scores_BHTS = scores_BHTS.masked_fill(~mask_TS, float("-inf"))
    if sinks_HN is None:
        probs_BHTS = scores_BHTS.softmax(dim=-1)
    else:
        B, H, T, S = scores_BHTS.shape
        sinks_BHTN = sinks_HN.float()[None, :, None, :].expand(B, H, T, sinks_HN.shape[1])
        probs_BHTS = torch.cat([scores_BHTS, sinks_BHTN], dim=-1).softmax(dim=-1)[..., :S]
    out_BHTD = probs_BHTS @ v_BHSD
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
def cached_block_mask(seq_len: int, window: int | None, device: torch.device):
    """The causal (or sliding-window) BlockMask for one length, built once per (T, device)."""

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    def sliding(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    mask_mod = causal if window is None else sliding
    return compiled_create_block_mask()(mask_mod, None, None, seq_len, seq_len, device=device)


@torch.compiler.disable
def flex_block_mask(seq_len: int, window: int | None, device: torch.device):
    """`cached_block_mask`, always run eagerly: inside an enclosing torch.compile (a model
    or layer compiled whole) Dynamo would trace through the cache and build the mask in
    the graph, at every call; here the graph breaks and the cached mask enters the next
    graph as an input."""
    return cached_block_mask(seq_len, window, device)


@functools.lru_cache(maxsize=32)
def softcap_score_mod(softcap: float):
    """flex_attention's score_mod for cap * tanh(score / cap): one function object per cap,
    so that the compiled flex_attention is not traced again for every call."""

    def capped(score, b, h, q_idx, kv_idx):
        return softcap * torch.tanh(score / softcap)

    return capped


def flex_core(
    flex,
    q_BTHD: torch.Tensor,
    k_BTKD: torch.Tensor,
    v_BTKD: torch.Tensor,
    block_mask,
    softcap: float | None = None,
    sinks_HN: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention through `flex` (flex_attention, compiled or not) with `block_mask`; the
    logits capped by a score_mod when `softcap` is set, and the sink logits joined to each
    softmax from the kernel's log-sum-exp: softmax over keys and sinks = the keys' softmax
    times sigmoid(lse - logsumexp(sinks))."""
    kwargs = {}
    if softcap is not None:
        kwargs["score_mod"] = softcap_score_mod(float(softcap))
    if sinks_HN is not None:
        kwargs["return_aux"] = AuxRequest(lse=True)
    out = flex(
        q_BTHD.transpose(1, 2),
        k_BTKD.transpose(1, 2),
        v_BTKD.transpose(1, 2),
        block_mask=block_mask,
        scale=q_BTHD.shape[-1] ** -0.5,
        enable_gqa=q_BTHD.shape[2] != k_BTKD.shape[2],
        kernel_options=kernel_options(q_BTHD.shape[1]),
        **kwargs,
    )
    if sinks_HN is None:
        return out.transpose(1, 2)
    out_BHTD, aux = out
    sink_H = torch.logsumexp(sinks_HN.float(), dim=-1)
    keep_BHT = torch.sigmoid(aux.lse.float() - sink_H[None, :, None])
    return (out_BHTD.float() * keep_BHT[..., None]).to(out_BHTD.dtype).transpose(1, 2)


def flex_attention(
    q_BTHD: torch.Tensor,
    k_BTKD: torch.Tensor,
    v_BTKD: torch.Tensor,
    window: int | None,
    block_mask=None,
    softcap: float | None = None,
    sinks_HN: torch.Tensor | None = None,
) -> torch.Tensor:
    """Causal (sliding-window when `window` is set) attention with compiled flex_attention;
    `block_mask` is `flex_block_mask(T, window, device)`, made here when not given;
    `softcap` and `sinks_HN` as in `flex_core`."""
    if block_mask is None:
        block_mask = flex_block_mask(q_BTHD.shape[1], window, q_BTHD.device)
    return flex_core(compiled_flex(), q_BTHD, k_BTKD, v_BTKD, block_mask, softcap, sinks_HN)
