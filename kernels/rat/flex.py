"""RAT's core with FlexAttention: the paper's own method (CUDA only).

1. The intra-chunk scan of keys and values (float32, `scan.rat_scan_states`), RoPE at the
   chunk index, casts to the input dtype.
2. `flex_attention` (compiled) of every token over the chunk-end keys/values, with the
   chunk-causal block mask (query in chunk c sees chunk ends < c) and `return_lse=True`.
3. The token's own running key/value merged in through the log-sum-exp:
   y = exp(lse_inter - lse) * y_inter + exp(s_self - lse) * v_run, lse = logaddexp(both).
   Rows of chunk 0 see no chunk end: their inter term is forced to weight exactly zero,
   so y is exactly the own value there.
"""

from __future__ import annotations

import functools
import math

import torch

from archlab.kernels.flex_compiled import (
    compiled_create_block_mask,
    compiled_flex,
    create_block_mask,
    flex_available,
    kernel_options,
)
from archlab.kernels.rat.reference import chunk_ends, expand_groups
from archlab.kernels.rat.scan import rat_scan_states
from archlab.kernels.rope import apply_rope, rope_cos_sin

try:  # newer torch asks for the log-sum-exp this way; `return_lse` is deprecated there
    from torch.nn.attention.flex_attention import AuxRequest
except ImportError:  # pragma: no cover
    AuxRequest = None


@functools.lru_cache(maxsize=32)
def _chunk_causal_mask(seq_len: int, n_chunks: int, chunk_size: int, device: str):
    def mask_mod(b, h, q_idx, kv_idx):
        return q_idx // chunk_size > kv_idx

    build = compiled_create_block_mask() if device != "cpu" else create_block_mask
    return build(mask_mod, None, None, seq_len, n_chunks, device=device)


def rat_core_flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    gate_bias: torch.Tensor,
    chunk_size: int,
    rope: bool = True,
    rope_theta: float = 10000.0,
) -> torch.Tensor:
    """Same arguments and maths as `reference.rat_core_reference` (q, k [B, T, G, D];
    v, gate_logits [B, T, H, D]; gate_bias [H * D] -> y [B, T, H, D]); the attention
    runs in v's dtype (bf16 in practice) and y is returned in v's dtype."""
    if not flex_available(v.device):
        raise RuntimeError("rat_core_flex needs FlexAttention on a CUDA device")
    args = (q, k, v, gate_logits, gate_bias, chunk_size, rope, rope_theta)
    return rat_core_flex_with(compiled_flex(), *args)


def rat_core_flex_with(
    attend,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gate_logits: torch.Tensor,
    gate_bias: torch.Tensor,
    chunk_size: int,
    rope: bool = True,
    rope_theta: float = 10000.0,
) -> torch.Tensor:
    """`rat_core_flex` with the attention function given (`flex_attention` itself, compiled
    or eager), on any device: what lets the CPU tests check the method and the merge."""
    B, T, H, D = v.shape
    dtype = v.dtype
    k_run, v_run = rat_scan_states(k, v, gate_logits, gate_bias, chunk_size)
    qh = expand_groups(q.float(), H)
    if rope:
        cos, sin = rope_cos_sin(torch.arange(T, device=v.device) // chunk_size, D, rope_theta)
        qh, k_run = apply_rope(qh, cos, sin), apply_rope(k_run, cos, sin)
    qh, k_run = qh.to(dtype), k_run.to(dtype)
    scale = 1.0 / math.sqrt(D)
    score_self = (qh.float() * k_run.float()).sum(-1) * scale  # [B, T, H]
    n_chunks = T // chunk_size
    if n_chunks == 0:  # no chunk end anywhere: softmax over the own key alone
        return v_run.to(dtype)
    k_end = chunk_ends(k_run, chunk_size).transpose(1, 2).contiguous()  # [B, H, C, D]
    v_end = chunk_ends(v_run.to(dtype), chunk_size).transpose(1, 2).contiguous()
    mask = _chunk_causal_mask(T, n_chunks, chunk_size, str(v.device))
    q_BHTD = qh.transpose(1, 2).contiguous()
    kw = dict(block_mask=mask, scale=scale, kernel_options=kernel_options(T))
    if AuxRequest is not None:
        y_inter, aux = attend(q_BHTD, k_end, v_end, return_aux=AuxRequest(lse=True), **kw)
        lse_inter = aux.lse
    else:
        y_inter, lse_inter = attend(q_BHTD, k_end, v_end, return_lse=True, **kw)
    has_inter = (torch.arange(T, device=v.device) >= chunk_size)[None, :, None]  # [1, T, 1]
    lse_inter = torch.where(has_inter, lse_inter.transpose(1, 2).float(), float("-inf"))
    y_inter = torch.where(has_inter[..., None], y_inter.transpose(1, 2).float(), 0.0)
    lse = torch.logaddexp(lse_inter, score_self)
    w_inter, w_self = torch.exp(lse_inter - lse), torch.exp(score_self - lse)
    return (w_inter[..., None] * y_inter + w_self[..., None] * v_run).to(dtype)
