"""`rat` (R): RAT, chunked gated recurrence with softmax attention across chunks.

Wei, Yadav, Pascanu and Gulcehre, "RAT: Bridging RNN Efficiency and Attention Accuracy in
Language Modeling" (2025), arXiv:2507.04416. The sequence is cut into chunks of
`chunk_size` tokens; a gated linear recurrence runs within each chunk, and every token
attends (softmax) to the ends of the earlier chunks plus its own running key. chunk_size 1
is causal attention over gated keys, a chunk as long as the sequence the `rnn` block.

The layer (`layer.RATBlock`) maps one to one onto the paper's: in_proj to z, v, g, q, k;
forget gate sigmoid(g + gate_bias); output out_proj(sigmoid(z) * y). The cost functions
below are pure (see `_cost` for the FLOP constants).
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
from archlab.kernels.rat.shapes import scored_pairs

BACKENDS = ("triton", "flex", "reference")  # in the order `auto` tries them
FP32 = 4  # bytes of the float32 tensors in the activation estimate


class Params(BlockParams):
    """The `rat` params of the spec language (docs/language.md)."""

    kind: Literal["rat"] = "rat"
    heads: int = Field(ge=1, le=4096, description="heads (each with its own values and gates)")
    chunk_size: int = Field(
        ge=1,
        le=1 << 30,
        description="tokens per chunk: the recurrence runs within a chunk, attention across "
        "chunks (1: causal attention over gated keys; the sequence length: the rnn)",
    )
    head_dim: int | None = Field(
        default=None, ge=1, le=4096, description="width of a head (default d_model // heads)"
    )
    qk_groups: int = Field(
        default=2,
        ge=1,
        le=4096,
        description="query/key groups shared among the heads (must divide heads)",
    )
    rope: Literal["inter_chunk", "none"] = Field(
        default="inter_chunk",
        description="RoPE at the chunk index on queries and chunk-end keys (theta 10000)",
    )
    bias: bool = Field(default=False, description="biases on in_proj and out_proj")
    backend: str = backend_field(BACKENDS)
    share_cache: int | None = Field(
        default=None,
        ge=0,
        description="index of the earlier rat block whose running keys/values and cache "
        "this block reads (resolved by the compiler); the block then projects only z and q",
    )


def check(p: Params, d_model: int) -> Checks:
    """Checks that need the model: head_dim derivable and even under RoPE, groups dividing;
    and that the kind has the backend asked for."""
    errors = backend_check("rat", BACKENDS, p.backend)
    if p.head_dim is None and d_model % p.heads:
        errors.append(
            (
                "heads",
                f"d_model ({d_model}) must be divisible by heads ({p.heads}) "
                "when head_dim is not given",
            )
        )
    if p.heads % p.qk_groups:
        errors.append(("qk_groups", f"must divide heads ({p.heads}) (got {p.qk_groups})"))
    if p.rope != "none" and (p.head_dim or d_model // p.heads) % 2:
        errors.append(("head_dim", "must be even when rope is on"))
    return errors


def dims(p: Params, d_model: int) -> tuple[int, int, int]:
    """(heads, head_dim, qk_groups) of a RAT block."""
    return p.heads, p.head_dim or d_model // p.heads, p.qk_groups


def _proj_out(p: Params, d_model: int) -> int:
    """Width of in_proj: z, v, g, q, k; z and q only when the block shares a cache."""
    H, D, G = dims(p, d_model)
    return H * D + G * D if p.share_cache is not None else 3 * H * D + 2 * G * D


def param_count(p: Params, d_model: int) -> int:
    """Exact parameter count of `RATBlock` (a sharing block has no v, g, k rows, no gate
    bias)."""
    H, D, _ = dims(p, d_model)
    inner, proj_out = H * D, _proj_out(p, d_model)
    biases = (proj_out + d_model) if p.bias else 0
    gate_bias = 0 if p.share_cache is not None else inner
    return d_model * proj_out + gate_bias + inner * d_model + biases


def _cost(p: Params, d_model: int, tokens: int, pairs: int) -> FlopCount:
    """FLOPs of `tokens` tokens that together score `pairs` (query, key) pairs per head.

    matmul: in_proj and out_proj (2 per multiply-add, bias adds not counted) plus the QK
    and PV products, 2 * head_dim each per scored pair and head.
    other, per token with E = heads * head_dim: forget gate 3E (bias add, sigmoid, 1 - g);
    the two scans 3E each (g * s + (1 - g) * x); RoPE 3E on q and 3E on the keys when on;
    output gate 2E (sigmoid, product); plus the softmax, 5 per scored pair and head
    (scale, max, exp, sum, divide)."""
    H, D, _ = dims(p, d_model)
    E = H * D
    proj = linear_flops(tokens, d_model, _proj_out(p, d_model)) + linear_flops(tokens, E, d_model)
    rope = 3 * E if p.rope != "none" else 0
    if p.share_cache is not None:  # no gate, no scans, keys rotated by the source
        per_token = rope + 2 * E
    else:
        per_token = 3 * E + 6 * E + 2 * rope + 2 * E
    return FlopCount(proj + 4 * D * H * pairs, tokens * per_token + 5 * H * pairs)


def flops(p: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """Forward FLOPs of a batch of sequences of seq_len tokens (see `_cost`)."""
    return _cost(p, d_model, batch * seq_len, batch * scored_pairs(seq_len, p.chunk_size))


def decode_flops(p: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """FLOPs of one new token at position t: t // chunk_size chunk ends plus itself."""
    return _cost(p, d_model, batch, batch * (t // p.chunk_size + 1))


def cache_bytes(p: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """2 * B * ceil(T / chunk_size) * heads * head_dim * dtype_bytes (chunk-end k and v);
    0 for a block that reads another block's cache."""
    if p.share_cache is not None:
        return 0
    H, D, _ = dims(p, d_model)
    return 2 * batch * -(-seq_len // p.chunk_size) * H * D * dtype_bytes


def activations(p: Params, d_model: int, seq_len: int) -> tuple[int, int]:
    """What one sequence keeps for backward: the in_proj output (z, v, g, q, k), the
    running k and v, y and the gated y in the model dtype; the gate and the attention's
    log-sum-exp in float32."""
    H, D, G = dims(p, d_model)
    E, T = H * D, seq_len
    return T * (3 * E + 2 * G * D + 2 * E + 2 * E), FP32 * T * (E + H)


def breakpoints(p: Params) -> tuple[set[int], int]:
    """No window; the ceil(T / chunk_size) pieces of the cost repeat every chunk_size."""
    return set(), p.chunk_size


def cache_geometry(p: Params, d_model: int) -> dict:
    """What must agree between a cache's source and a block that reads it."""
    return {
        "kind": "rat",
        "heads": p.heads,
        "head_dim": p.head_dim or d_model // p.heads,
        "chunk_size": p.chunk_size,
        "rope": p.rope,
    }


def _layer():
    from archlab.blocks.rat.layer import RATBlock

    return RATBlock


KIND = BlockKind(
    name="rat",
    summary="RAT: gated linear recurrence within chunks, softmax attention across chunks",
    symbol="R",
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
    breakpoints=breakpoints,
    cache_geometry=cache_geometry,
    branchable=True,
    color="#4c78a8",
    examples=(
        {"kind": "rat", "heads": 4, "chunk_size": 4},
        {"kind": "rat", "heads": 4, "chunk_size": 1, "qk_groups": 1},
        {"kind": "rat", "heads": 4, "chunk_size": 5, "qk_groups": 4, "rope": "none", "bias": True},
        {"kind": "rat", "heads": 2, "chunk_size": 64},
        {"kind": "rat", "heads": 2, "head_dim": 6, "chunk_size": 3, "qk_groups": 1},
    ),
    gpu_examples=({"kind": "rat", "heads": 16, "head_dim": 128, "chunk_size": 16},),
)
