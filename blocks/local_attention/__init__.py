"""`local_attention` (L): sliding-window causal attention; a token sees itself and the
`window - 1` tokens before it (the HF/Mistral `sliding_window` convention: Beltagy et al.
2020, "Longformer", arXiv:2004.05150; Jiang et al. 2023, "Mistral 7B", arXiv:2310.06825).

Backends: `reference` (explicit float32), `sdpa` (with an explicit boolean window mask),
`flex` (compiled flex_attention with a sliding-window block mask, CUDA only); `auto` is
flex on CUDA and sdpa elsewhere. The decode cache is a ring buffer of
min(max_len, window) positions: position p lives in slot p % slots. The layer is
`archlab.blocks.local_attention.layer.LocalAttentionBlock` (attention's, reading the
window); the FLOP conventions are attention's (`archlab.blocks.attention`), and so are
the extras `attn_softcap`, `sinks` (gpt-oss's sliding-window layers have them) and
`partial_rotary`: with soft-capping or sinks `auto` is flex on CUDA and reference elsewhere.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from archlab.blocks import attention
from archlab.blocks.attention import (
    cost,
    extras_checks,
    head_dims,
    own_kv_heads,
    shape_checks,
    visible_pairs,
)
from archlab.blocks.base import BlockKind, Checks, FlopCount, backend_check, backend_field

BACKENDS = ("flex", "sdpa", "reference")  # in the order `auto` tries them


class Params(attention.Params):
    """`attention`'s params plus `window` (the token itself and window - 1 before it)."""

    kind: Literal["local_attention"] = "local_attention"
    backend: str = backend_field(BACKENDS)
    window: int = Field(
        ge=1, le=1 << 30, description="keys a token sees: itself and the window - 1 before it"
    )


def check(p: Params, d_model: int) -> Checks:
    """The same checks as `attention` (the backend among local_attention's)."""
    return (
        backend_check(p.kind, BACKENDS, p.backend)
        + shape_checks(p, d_model)
        + extras_checks(p, d_model)
    )


def param_count(params: Params, d_model: int) -> int:
    """Exact parameters (the same as `attention`: the window adds none)."""
    return attention.param_count(params, d_model)


def flops(params: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """Forward FLOPs; each token t sees min(t + 1, window) keys."""
    pairs = visible_pairs(seq_len, params.window)
    return cost(params, d_model, batch, seq_len, pairs)


def decode_flops(params: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """FLOPs of one new token at position t: it sees min(t + 1, window) keys."""
    return cost(params, d_model, batch, 1, min(t + 1, params.window))


def cache_bytes(params: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """k and v ring buffers: 2 * B * min(T, window) * kv_heads * head_dim * dtype_bytes
    (0 for a block that reads another block's cache)."""
    K, dh = own_kv_heads(params, d_model), head_dims(params, d_model)[2]
    return 2 * batch * min(seq_len, params.window) * K * dh * dtype_bytes


def breakpoints(p: Params) -> tuple[set[int], int]:
    """The cost's min(T, window) pieces change form at T = window."""
    return {p.window}, 1


def _layer():
    from archlab.blocks.local_attention.layer import LocalAttentionBlock

    return LocalAttentionBlock


KIND = BlockKind(
    name="local_attention",
    summary="sliding-window causal attention: each token sees itself and the window - 1 "
    "tokens before it",
    symbol="L",
    is_mixer=True,
    params=Params,
    layer=_layer,
    param_count=param_count,
    flops=flops,
    decode_flops=decode_flops,
    cache_bytes=cache_bytes,
    activations=attention.activations,
    check=check,
    backends=BACKENDS,
    breakpoints=breakpoints,
    cache_geometry=attention.cache_geometry,
    branchable=True,
    color="#f58518",
    examples=(
        {"kind": "local_attention", "heads": 4, "window": 3},
        {"kind": "local_attention", "heads": 4, "kv_heads": 2, "window": 8, "qk_norm": True},
        {"kind": "local_attention", "heads": 2, "window": 1},
        {"kind": "local_attention", "heads": 4, "kv_heads": 1, "window": 5, "bias": True},
        {"kind": "local_attention", "heads": 4, "kv_heads": 2, "window": 4, "sinks": 1},
        {
            "kind": "local_attention",
            "heads": 2,
            "window": 6,
            "attn_softcap": 1.5,
            "partial_rotary": 0.5,
        },
    ),
    gpu_examples=({"kind": "local_attention", "heads": 16, "head_dim": 128, "window": 1025},),
)
