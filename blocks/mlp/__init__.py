"""`mlp` (-): the channel mixer. Gated activations (swiglu, geglu) have three matrices.

FLOPs: matmul-type work is 2 * d_model * hidden per token per matrix (two matrices, three
when gated). `other` counts per hidden element `ACTIVATION_FLOPS[activation]` (gelu 8,
silu 4, relu2 2, swiglu 5 = silu + gating multiply, geglu 9 = gelu + gating multiply),
plus 1 per output element of each projection when `bias` is on.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from archlab.blocks.base import BlockKind, BlockParams, FlopCount, linear_flops

GATED = ("swiglu", "geglu")
ACTIVATION_FLOPS = {"gelu": 8, "silu": 4, "relu2": 2, "swiglu": 5, "geglu": 9}


class Params(BlockParams):
    """An MLP: up (and gate) projection to `hidden`, activation, down projection."""

    kind: Literal["mlp"] = "mlp"
    hidden: int | None = Field(
        default=None, ge=1, le=1 << 24, description="inner width (default 4 * d_model)"
    )
    activation: Literal["gelu", "silu", "relu2", "swiglu", "geglu"] = Field(
        default="gelu", description="swiglu and geglu are gated (three matrices)"
    )
    bias: bool = Field(default=False, description="biases on the projections")


def hidden_size(p: Params, d_model: int) -> int:
    """The inner width: `hidden`, or 4 * d_model when it is not given."""
    return 4 * d_model if p.hidden is None else p.hidden


def param_count(params: Params, d_model: int) -> int:
    """Two (three when gated) d_model x hidden matrices, plus their biases if `bias`."""
    hidden = hidden_size(params, d_model)
    n_in = 2 if params.activation in GATED else 1
    biases = n_in * hidden + d_model if params.bias else 0
    return (n_in + 1) * d_model * hidden + biases


def flops(params: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """Forward FLOPs over batch x seq_len tokens (constants in the module docstring)."""
    tokens, hidden = batch * seq_len, hidden_size(params, d_model)
    n_in = 2 if params.activation in GATED else 1
    matmul = (n_in + 1) * linear_flops(tokens, d_model, hidden)
    other = tokens * hidden * ACTIVATION_FLOPS[params.activation]
    other += tokens * (n_in * hidden + d_model) if params.bias else 0
    return FlopCount(matmul, other)


def decode_flops(params: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """One new token per sequence: the forward cost of one token, whatever t."""
    return flops(params, d_model, batch, 1)


def cache_bytes(params: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """The MLP keeps no decode state."""
    return 0


def activations(p: Params, d_model: int, seq_len: int) -> tuple[int, int]:
    """The up (and gate) outputs and the activation (and gating product)."""
    gated = p.activation in GATED
    return seq_len * hidden_size(p, d_model) * (4 if gated else 2), 0


def _layer():
    from archlab.blocks.mlp.layer import MLPBlock

    return MLPBlock


KIND = BlockKind(
    name="mlp",
    summary="position-wise MLP (gelu, silu, relu2, or gated swiglu / geglu)",
    symbol="-",
    is_mixer=False,
    params=Params,
    layer=_layer,
    param_count=param_count,
    flops=flops,
    decode_flops=decode_flops,
    cache_bytes=cache_bytes,
    activations=activations,
    color="#bab0ac",
    examples=(
        {"kind": "mlp"},
        {"kind": "mlp", "hidden": 24, "activation": "swiglu", "bias": True},
        {"kind": "mlp", "hidden": 20, "activation": "relu2"},
        {"kind": "mlp", "activation": "geglu"},
        {"kind": "mlp", "activation": "silu"},
    ),
    gpu_examples=({"kind": "mlp", "activation": "swiglu"},),
)
