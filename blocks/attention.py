"""`attention` (A): causal multi-head softmax attention with GQA/MQA, RoPE, optional qk-norm."""

from __future__ import annotations

from typing import Literal

from archlab.blocks.base import Backend, BlockParams
from pydantic import Field

KIND = "attention"
SYMBOL = "A"
IS_MIXER = True


class Params(BlockParams):
    kind: Literal["attention"] = "attention"
    heads: int = Field(ge=1, le=4096)
    kv_heads: int | None = Field(default=None, ge=1, le=4096)
    head_dim: int | None = Field(default=None, ge=1, le=4096)
    rope: bool = True
    rope_theta: float = Field(default=10000.0, gt=0)
    qk_norm: bool = False
    bias: bool = False
    backend: Backend = "auto"


def check(p: Params, d_model: int) -> list[tuple[str, str]]:
    """Checks that need the model: head_dim derivable, kv_heads dividing heads."""
    errors = []
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


EXAMPLES = [
    {"kind": "attention", "heads": 4},
    {"kind": "attention", "heads": 4, "kv_heads": 2, "qk_norm": True, "bias": True},
    {"kind": "attention", "heads": 4, "kv_heads": 1, "head_dim": 8, "rope": False},
]
