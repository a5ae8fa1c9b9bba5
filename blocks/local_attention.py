"""`local_attention` (L): sliding-window causal attention; a token sees itself and the
`window - 1` tokens before it (HF/Mistral `sliding_window` convention)."""

from __future__ import annotations

from typing import Literal

from archlab.blocks import attention
from archlab.blocks.base import Backend, BlockParams
from pydantic import Field

KIND = "local_attention"
SYMBOL = "L"
IS_MIXER = True


class Params(BlockParams):
    kind: Literal["local_attention"] = "local_attention"
    heads: int = Field(ge=1, le=4096)
    window: int = Field(ge=1, le=1 << 30)
    kv_heads: int | None = Field(default=None, ge=1, le=4096)
    head_dim: int | None = Field(default=None, ge=1, le=4096)
    rope: bool = True
    rope_theta: float = Field(default=10000.0, gt=0)
    qk_norm: bool = False
    bias: bool = False
    backend: Backend = "auto"


def check(p: Params, d_model: int) -> list[tuple[str, str]]:
    return attention.check(p, d_model)


EXAMPLES = [
    {"kind": "local_attention", "heads": 4, "window": 3},
    {"kind": "local_attention", "heads": 4, "kv_heads": 2, "window": 8, "qk_norm": True},
    {"kind": "local_attention", "heads": 2, "window": 1},
]
