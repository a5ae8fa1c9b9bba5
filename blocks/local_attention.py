"""`local_attention` (L): sliding-window causal attention; a token sees itself and the
`window - 1` tokens before it (HF/Mistral `sliding_window` convention).

Backends: `reference` (explicit float32), `sdpa` (with an explicit boolean window mask),
`flex` (compiled flex_attention with a sliding-window block mask, CUDA only); `auto` is
flex on CUDA and sdpa elsewhere. The decode cache is a ring buffer of
min(max_len, window) positions: position p lives in slot p % slots. FLOP conventions are
in `_attention_common`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from archlab.blocks import _attention_common as common
from archlab.blocks import attention
from archlab.blocks.base import FlopCount

KIND = "local_attention"
SYMBOL = "L"
IS_MIXER = True


class Params(attention.Params):
    """`attention`'s params plus `window` (the token itself and window - 1 before it)."""

    kind: Literal["local_attention"] = "local_attention"
    window: int = Field(ge=1, le=1 << 30)


def check(p: Params, d_model: int) -> list[tuple[str, str]]:
    """The same checks as `attention`."""
    return attention.check(p, d_model)


EXAMPLES = [
    {"kind": "local_attention", "heads": 4, "window": 3},
    {"kind": "local_attention", "heads": 4, "kv_heads": 2, "window": 8, "qk_norm": True},
    {"kind": "local_attention", "heads": 2, "window": 1},
    {"kind": "local_attention", "heads": 4, "kv_heads": 1, "window": 5, "bias": True},
]


class Block(attention.Block):
    """Sliding-window causal attention over x [B, T, d_model] (the mixer alone); see
    `attention.Block`, which reads `params.window`."""

    PREFERENCE = ("flex", "sdpa", "reference")


def param_count(params: Params, d_model: int) -> int:
    """Exact parameters (the same as `attention`: the window adds none)."""
    return common.param_count(params, d_model)


def flops(params: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """Forward FLOPs; each token t sees min(t + 1, window) keys."""
    pairs = common.visible_pairs(seq_len, params.window)
    return common.cost(params, d_model, batch, seq_len, pairs)


def decode_flops(params: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """FLOPs of one new token at position t: it sees min(t + 1, window) keys."""
    return common.cost(params, d_model, batch, 1, min(t + 1, params.window))


def cache_bytes(params: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """k and v ring buffers: 2 * B * min(T, window) * kv_heads * head_dim * dtype_bytes
    (0 for a block that reads another block's cache)."""
    K, dh = common.own_kv_heads(params, d_model), common.head_dims(params, d_model)[2]
    return 2 * batch * min(seq_len, params.window) * K * dh * dtype_bytes
