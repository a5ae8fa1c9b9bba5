"""`mla`: multi-head latent attention (DeepSeek-AI 2024, "DeepSeek-V2: A Strong,
Economical, and Efficient Mixture-of-Experts Language Model", arXiv:2405.04434), causal.

Keys and values come from a compressed latent: `kv_a_proj_with_mqa` maps x to the latent
c_kv (`kv_lora_rank`, RMS-normed by `kv_a_layernorm`) and one rotary key k_pe
(`qk_rope_head_dim`) that every head shares; `kv_b_proj` expands c_kv to each head's
non-rotary key (`qk_nope_head_dim`) and value (`v_head_dim`). Queries are `q_proj`, or with
`q_lora_rank` the low-rank `q_a_proj` -> `q_a_layernorm` -> `q_b_proj`; each head's query
is its non-rotary part and a rotary part. Scores are scaled by
1 / sqrt(qk_nope_head_dim + qk_rope_head_dim). RoPE uses archlab's rotate-half layout
(DeepSeek's checkpoints interleave; a fixed permutation of the rotary weights' rows maps
one to the other). The parameter names are HF's.

The decode cache holds only c_kv [B, T, kv_lora_rank] and k_pe [B, T, qk_rope_head_dim]
(after the norm and RoPE). Backends: `sdpa` (torch's scaled_dot_product_attention over
the expanded keys and values; decode in the absorbed form: the query is mapped into the
latent space through kv_b_proj's key rows, attends to c_kv and k_pe directly, and the
latent output is mapped to values through its value rows), `reference` (explicit float32
attention; decode recomputes every cached position's keys and values from c_kv). The
layer is `archlab.blocks.mla.layer.MLABlock`.

Costs (2 FLOPs per multiply-add; n = qk_nope_head_dim, p = qk_rope_head_dim,
v = v_head_dim, r = kv_lora_rank, H = heads). Forward: the projections, and per visible
(query, key) pair per head 2 (n + p) for QK^T and 2 v for PV. Decode counts the absorbed
form (what `auto` runs): per token the projections, the absorption 2 H n r, the scores
2 H (r + p) S over the S = t + 1 cached positions, the latent output 2 H r S and its
expansion 2 H r v (`reference_decode_flops` counts the reference's recompute instead).
`other`: softmax 5 per score, RoPE 3 per rotated element (H p of q, p of k), RMSNorm 4 per
element of each latent.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from archlab.blocks.base import (
    BlockKind,
    BlockParams,
    Checks,
    FlopCount,
    backend_check,
    backend_field,
    linear_flops,
)

BACKENDS = ("sdpa", "reference")  # in the order `auto` tries them
SOFTMAX_FLOPS = 5
ROPE_FLOPS = 3
NORM_FLOPS = 4
FP32 = 4


class Params(BlockParams):
    """Multi-head latent attention: keys and values from a cached low-rank latent."""

    kind: Literal["mla"] = "mla"
    heads: int = Field(ge=1, le=4096, description="attention heads")
    kv_lora_rank: int = Field(
        default=512, ge=1, le=1 << 16, description="width of the cached key/value latent c_kv"
    )
    q_lora_rank: int | None = Field(
        default=None,
        ge=1,
        le=1 << 16,
        description="width of the query latent (None: queries projected directly, no "
        "compression; DeepSeek-V2 1536, V2-Lite None)",
    )
    qk_nope_head_dim: int = Field(
        default=128, ge=1, le=4096, description="per-head query/key dims without RoPE"
    )
    qk_rope_head_dim: int = Field(
        default=64,
        ge=0,
        le=4096,
        description="per-head query dims with RoPE, and the width of the one rotary key "
        "that all heads share (cached); 0: no RoPE",
    )
    v_head_dim: int = Field(default=128, ge=1, le=4096, description="per-head value dims")
    rope_theta: float = Field(default=10000.0, gt=0, description="RoPE base frequency")
    backend: str = backend_field(BACKENDS)


def check(p: Params, d_model: int) -> Checks:
    """The backend exists; qk_rope_head_dim even (RoPE rotates pairs)."""
    errors = backend_check(p.kind, BACKENDS, p.backend)
    if p.qk_rope_head_dim % 2:
        errors.append(("qk_rope_head_dim", f"must be even (got {p.qk_rope_head_dim})"))
    return errors


def _dims(p: Params) -> tuple[int, int, int, int, int]:
    return p.heads, p.qk_nope_head_dim, p.qk_rope_head_dim, p.v_head_dim, p.kv_lora_rank


def param_count(p: Params, d_model: int) -> int:
    """q: d_model H (n + p), or d_model q_r + q_r (norm) + q_r H (n + p); kv_a:
    d_model (r + p); its norm r; kv_b: r H (n + v); o: H v d_model."""
    H, n, pr, v, r = _dims(p)
    qk = H * (n + pr)
    q = d_model * qk if p.q_lora_rank is None else p.q_lora_rank * (d_model + 1 + qk)
    return q + d_model * (r + pr) + r + r * H * (n + v) + H * v * d_model


def _projections(p: Params, d_model: int, tokens: int) -> FlopCount:
    """The q and kv_a projections, the norms and RoPE of `tokens` new tokens (per sequence),
    and the output projection."""
    H, n, pr, v, r = _dims(p)
    qk = H * (n + pr)
    if p.q_lora_rank is None:
        q = linear_flops(tokens, d_model, qk)
    else:
        q = linear_flops(tokens, d_model, p.q_lora_rank) + linear_flops(tokens, p.q_lora_rank, qk)
    matmul = q + linear_flops(tokens, d_model, r + pr) + linear_flops(tokens, H * v, d_model)
    norms = r + (p.q_lora_rank or 0)
    other = tokens * (NORM_FLOPS * norms + ROPE_FLOPS * (H + 1) * pr)
    return FlopCount(matmul, other)


def pairs_cost(p: Params, d_model: int, tokens: int, pairs: int) -> FlopCount:
    """`tokens` tokens of one sequence whose queries see `pairs` keys in all, each token's
    keys and values expanded from its latent (the forward)."""
    H, n, pr, v, r = _dims(p)
    base = _projections(p, d_model, tokens)
    matmul = linear_flops(tokens, r, H * (n + v)) + 2 * (n + pr + v) * pairs * H
    return base + FlopCount(matmul, SOFTMAX_FLOPS * pairs * H)


def flops(p: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """Forward FLOPs over batch x seq_len tokens; T (T + 1) / 2 visible pairs."""
    return pairs_cost(p, d_model, seq_len, seq_len * (seq_len + 1) // 2).scale(batch)


def decode_flops(p: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """One new token at position t in the absorbed form; it sees S = t + 1 positions."""
    H, n, pr, v, r = _dims(p)
    S = t + 1
    matmul = 2 * H * n * r + 2 * H * (r + pr) * S + 2 * H * r * S + 2 * H * r * v
    step = _projections(p, d_model, 1) + FlopCount(matmul, SOFTMAX_FLOPS * H * S)
    return step.scale(batch)


def reference_decode_flops(p: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """One new token at position t as the reference backend decodes it: the keys and values
    of all S = t + 1 positions recomputed from c_kv, then one query against them."""
    H, n, pr, v, r = _dims(p)
    S = t + 1
    step = _projections(p, d_model, 1)
    matmul = linear_flops(S, r, H * (n + v)) + 2 * (n + pr + v) * S * H
    return (step + FlopCount(matmul, SOFTMAX_FLOPS * S * H)).scale(batch)


def cache_bytes(p: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """c_kv and k_pe for every position: B * T * (kv_lora_rank + qk_rope_head_dim) *
    dtype_bytes."""
    return batch * seq_len * (p.kv_lora_rank + p.qk_rope_head_dim) * dtype_bytes


def activations(p: Params, d_model: int, seq_len: int) -> tuple[int, int]:
    """q, k (H (n + p) each), v and the output (H v each), the latents before and after
    their norms (2 (r + q_r)) and k_pe in the model dtype; a float32 log-sum-exp per head
    and token (fused attention keeps no T x T scores)."""
    H, n, pr, v, r = _dims(p)
    latents = 2 * (r + (p.q_lora_rank or 0)) + pr
    return seq_len * (2 * H * (n + pr) + 2 * H * v + latents), FP32 * seq_len * H


def scale(data: dict, d_old: int, d_new: int) -> dict:
    """At a smaller d_model: heads and the latent ranks shrink with d_model (ranks to
    multiples of 8, at least 8), the head dims are kept."""
    out = dict(data)
    out["heads"] = max(1, round(out["heads"] * d_new / d_old))
    for key in ("kv_lora_rank", "q_lora_rank"):
        if isinstance(out.get(key), int):
            out[key] = max(8, round(out[key] * d_new / d_old / 8) * 8)
    return out


def _layer():
    from archlab.blocks.mla.layer import MLABlock

    return MLABlock


KIND = BlockKind(
    name="mla",
    summary="multi-head latent attention (DeepSeek-V2): keys and values from a cached "
    "low-rank latent plus one shared rotary key",
    symbol=None,
    is_mixer=True,
    params=Params,
    layer=_layer,
    param_count=param_count,
    flops=flops,
    decode_flops=decode_flops,
    cache_bytes=cache_bytes,
    activations=activations,
    check=check,
    backends=BACKENDS,
    scale=scale,
    branchable=True,
    color="#b279a2",
    examples=(
        {
            "kind": "mla",
            "heads": 4,
            "kv_lora_rank": 8,
            "qk_nope_head_dim": 4,
            "qk_rope_head_dim": 4,
            "v_head_dim": 4,
        },
        {
            "kind": "mla",
            "heads": 2,
            "kv_lora_rank": 6,
            "q_lora_rank": 12,
            "qk_nope_head_dim": 6,
            "qk_rope_head_dim": 2,
            "v_head_dim": 8,
            "rope_theta": 500.0,
        },
        {
            "kind": "mla",
            "heads": 3,
            "kv_lora_rank": 5,
            "qk_nope_head_dim": 3,
            "qk_rope_head_dim": 0,
            "v_head_dim": 5,
            "backend": "reference",
        },
    ),
    gpu_examples=(
        {
            "kind": "mla",
            "heads": 16,
            "kv_lora_rank": 512,
            "q_lora_rank": 1536,
            "qk_nope_head_dim": 128,
            "qk_rope_head_dim": 64,
            "v_head_dim": 128,
        },
    ),
)
