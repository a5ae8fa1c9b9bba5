"""`attention` (A): causal multi-head softmax attention (Vaswani et al. 2017, "Attention Is
All You Need", arXiv:1706.03762) with grouped-query / multi-query heads (Ainslie et al.
2023, "GQA", arXiv:2305.13245), RoPE (Su et al. 2021, "RoFormer", arXiv:2104.09864) and
optional qk-norm (an RMSNorm over each head of q and k).

Backends: `reference` (explicit float32 matmuls and masked softmax), `sdpa` (torch's
scaled_dot_product_attention, any device), `flex` (compiled flex_attention, CUDA only);
`auto` is sdpa. The layer is `archlab.blocks.attention.layer.AttentionBlock`; the cores it
runs are in `archlab.blocks.attention.common`.

The pure cost helpers here are shared with `local_attention`. Costs count FLOPs as 2 per
multiply-add. Matmul-type work is exact: the four projections, and QK^T and PV at
2 * head_dim FLOPs each per visible (query, key) pair per head. `other` uses these
per-element constants:
- softmax: `SOFTMAX_FLOPS` (5) per visible score per head (scale, max, exp, sum, divide);
- RoPE: `ROPE_FLOPS` (3) per element of q and k (two multiplies, one add);
- qk-norm: `QK_NORM_FLOPS` (4) per element of q and k (square, sum, rsqrt scale, weight);
- bias: 1 per output element of each projection.
"""

from __future__ import annotations

from typing import Literal, Protocol

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

BACKENDS = ("sdpa", "reference", "flex")  # in the order `auto` tries them
SOFTMAX_FLOPS = 5
ROPE_FLOPS = 3
QK_NORM_FLOPS = 4
FP32 = 4  # bytes of a float32 (the log-sum-exp kept per head and token)


class Params(BlockParams):
    """Causal softmax attention: q/k/v/o projections, heads sharing kv heads in groups."""

    kind: Literal["attention"] = "attention"
    heads: int = Field(ge=1, le=4096, description="query heads")
    kv_heads: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="key/value heads, dividing heads (default: heads; 1 is multi-query)",
    )
    head_dim: int | None = Field(
        default=None, ge=1, le=4096, description="width of a head (default d_model // heads)"
    )
    rope: bool = Field(default=True, description="rotary position embeddings on q and k")
    rope_theta: float = Field(default=10000.0, gt=0, description="RoPE base frequency")
    qk_norm: bool = Field(default=False, description="RMSNorm over each head of q and k")
    bias: bool = Field(default=False, description="biases on the projections")
    backend: str = backend_field(BACKENDS)
    share_cache: int | None = Field(
        default=None,
        ge=0,
        description="index of the earlier block whose keys/values this block reads (the "
        "compiler resolves `share_cache: N | name` to it); the block then has no k/v "
        "projections and no cache of its own",
    )


class AttentionParams(Protocol):
    """What the cost helpers read (`attention` and `local_attention` params)."""

    kind: str
    heads: int
    kv_heads: int | None
    head_dim: int | None
    rope: bool
    rope_theta: float
    qk_norm: bool
    bias: bool
    share_cache: int | None


def shape_checks(p: AttentionParams, d_model: int) -> Checks:
    """head_dim derivable from d_model, kv_heads dividing heads, head_dim even under RoPE."""
    errors: Checks = []
    if p.head_dim is None and d_model % p.heads:
        errors.append(
            (
                "heads",
                f"d_model ({d_model}) must be divisible by heads ({p.heads}) "
                "when head_dim is not given",
            )
        )
    if p.kv_heads is not None and p.heads % p.kv_heads:
        errors.append(("kv_heads", f"must divide heads ({p.heads}) (got {p.kv_heads})"))
    if p.rope and (p.head_dim or d_model // p.heads) % 2:
        errors.append(("head_dim", "must be even when rope is on"))
    return errors


def check(p: Params, d_model: int) -> Checks:
    """Checks that need the model: the kind has the backend asked for; head_dim
    derivable, kv_heads dividing heads, head_dim even under RoPE."""
    return backend_check(p.kind, BACKENDS, p.backend) + shape_checks(p, d_model)


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


def flops(params: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """Forward FLOPs over batch x seq_len tokens; T(T+1)/2 visible pairs per sequence."""
    return cost(params, d_model, batch, seq_len, visible_pairs(seq_len, None))


def decode_flops(params: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """FLOPs of one new token at position t: it sees t + 1 keys."""
    return cost(params, d_model, batch, 1, t + 1)


def cache_bytes(params: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """k and v for every position: 2 * B * T * kv_heads * head_dim * dtype_bytes (0 for a
    block that reads another block's cache)."""
    K, dh = own_kv_heads(params, d_model), head_dims(params, d_model)[2]
    return 2 * batch * seq_len * K * dh * dtype_bytes


def activations(p: AttentionParams, d_model: int, seq_len: int) -> tuple[int, int]:
    """q, k, v and the output (plus the pre-norm q and k under qk-norm) in the model dtype;
    a float32 log-sum-exp per head and token (fused attention keeps no T x T scores)."""
    H, dh = p.heads, p.head_dim or d_model // p.heads
    K = p.kv_heads or H
    qk_norm = (H + K) * dh if p.qk_norm else 0  # the pre-norm q and k
    return seq_len * (2 * H * dh + 2 * K * dh + qk_norm), FP32 * seq_len * H


def cache_geometry(p: AttentionParams, d_model: int) -> dict:
    """What must agree between a cache's source and a block that reads it (`share_cache`):
    the kv heads, head_dim, RoPE and the window (None for full attention)."""
    return {
        "kind": p.kind,
        "kv_heads": p.kv_heads or p.heads,
        "head_dim": p.head_dim or d_model // p.heads,
        "rope": p.rope,
        "rope_theta": p.rope_theta,
        "window": getattr(p, "window", None),
    }


def _layer():
    from archlab.blocks.attention.layer import AttentionBlock

    return AttentionBlock


KIND = BlockKind(
    name="attention",
    summary="causal multi-head softmax attention: GQA / MQA, RoPE, optional qk-norm, cache sharing",
    symbol="A",
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
    cache_geometry=cache_geometry,
    branchable=True,
    color="#e45756",
    examples=(
        {"kind": "attention", "heads": 4},
        {"kind": "attention", "heads": 4, "kv_heads": 2, "qk_norm": True, "bias": True},
        {"kind": "attention", "heads": 4, "kv_heads": 1, "head_dim": 8, "rope": False},
        {
            "kind": "attention",
            "heads": 2,
            "kv_heads": 1,
            "head_dim": 6,
            "qk_norm": True,
            "bias": True,
        },
    ),
    gpu_examples=({"kind": "attention", "heads": 16, "head_dim": 128},),
)
