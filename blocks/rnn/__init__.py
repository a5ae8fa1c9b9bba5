"""`rnn` (N): the gated linear RNN of the RAT paper (RAT with one chunk over the sequence).

Wei, Yadav, Pascanu and Gulcehre, "RAT: Bridging RNN Efficiency and Attention Accuracy in
Language Modeling" (2025), arXiv:2507.04416: the paper's RNN baseline. in_proj to z, v, g
[d_model each]; g = sigmoid(g + gate_bias); s_t = g_t * s_{t-1} + (1 - g_t) * v_t over
the whole sequence; output out_proj(sigmoid(z) * s). The cost functions below are pure
(see `_cost` for the FLOP constants).
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

BACKENDS = ("triton", "reference")  # in the order `auto` tries them
FP32 = 4  # bytes of the float32 tensors in the activation estimate


class Params(BlockParams):
    """The `rnn` params of the spec language (docs/language.md)."""

    kind: Literal["rnn"] = "rnn"
    bias: bool = Field(default=False, description="biases on in_proj and out_proj")
    backend: str = backend_field(BACKENDS)


def check(p: Params, d_model: int) -> Checks:
    """Only that the kind has the backend asked for."""
    return backend_check("rnn", BACKENDS, p.backend)


def _cost(d_model: int, tokens: int) -> FlopCount:
    """matmul: in_proj (d -> 3d) and out_proj (d -> d), bias adds not counted.
    other, per token: forget gate 3d (bias add, sigmoid, 1 - g), scan 3d
    (g * s + (1 - g) * v), output gate 2d (sigmoid, product)."""
    matmul = linear_flops(tokens, d_model, 3 * d_model) + linear_flops(tokens, d_model, d_model)
    return FlopCount(matmul, tokens * 8 * d_model)


def param_count(p: Params, d_model: int) -> int:
    """Exact parameter count of `RNNBlock`."""
    return 4 * d_model * d_model + d_model + (4 * d_model if p.bias else 0)


def flops(p: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """Forward FLOPs (see `_cost`); linear in seq_len."""
    return _cost(d_model, batch * seq_len)


def decode_flops(p: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """FLOPs of one new token, at any position."""
    return _cost(d_model, batch)


def cache_bytes(p: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """B * d_model * dtype_bytes: the one recurrent state."""
    return batch * d_model * dtype_bytes


def activations(p: Params, d_model: int, seq_len: int) -> tuple[int, int]:
    """What one sequence keeps for backward: the in_proj output and the gated y in the
    model dtype; the gate and the state in float32."""
    T, d = seq_len, d_model
    return T * (3 * d + d), FP32 * T * 2 * d


def _layer():
    from archlab.blocks.rnn.layer import RNNBlock

    return RNNBlock


KIND = BlockKind(
    name="rnn",
    summary="gated linear RNN: RAT with one chunk spanning the sequence (O(1) decode state)",
    symbol="N",
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
    branchable=True,
    color="#72b7b2",
    examples=({"kind": "rnn"}, {"kind": "rnn", "bias": True}),
    gpu_examples=({"kind": "rnn"},),
)
