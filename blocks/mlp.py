"""`mlp` (-): the channel mixer. Gated activations (swiglu, geglu) have three matrices."""

from __future__ import annotations

from typing import Literal

from archlab.blocks.base import BlockParams
from pydantic import Field

KIND = "mlp"
SYMBOL = "-"
IS_MIXER = False
GATED = ("swiglu", "geglu")


class Params(BlockParams):
    kind: Literal["mlp"] = "mlp"
    hidden: int | None = Field(default=None, ge=1, le=1 << 24)  # None: 4 * d_model
    activation: Literal["gelu", "silu", "relu2", "swiglu", "geglu"] = "gelu"
    bias: bool = False


def check(p: Params, d_model: int) -> list[tuple[str, str]]:
    return []


EXAMPLES = [
    {"kind": "mlp"},
    {"kind": "mlp", "hidden": 24, "activation": "swiglu", "bias": True},
    {"kind": "mlp", "hidden": 20, "activation": "relu2"},
    {"kind": "mlp", "activation": "geglu"},
    {"kind": "mlp", "activation": "silu"},
]
