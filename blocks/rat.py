"""`rat` (R): RAT, chunked gated recurrence with softmax attention across chunks."""

from __future__ import annotations

from typing import Literal

from archlab.blocks.base import Backend, BlockParams
from pydantic import Field

KIND = "rat"
SYMBOL = "R"
IS_MIXER = True


class Params(BlockParams):
    kind: Literal["rat"] = "rat"
    heads: int = Field(ge=1, le=4096)
    chunk_size: int = Field(ge=1, le=1 << 30)
    head_dim: int | None = Field(default=None, ge=1, le=4096)
    qk_groups: int = Field(default=2, ge=1, le=4096)
    rope: Literal["inter_chunk", "none"] = "inter_chunk"
    bias: bool = False
    backend: Backend = "auto"


def check(p: Params, d_model: int) -> list[tuple[str, str]]:
    errors = []
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


EXAMPLES = [
    {"kind": "rat", "heads": 4, "chunk_size": 4},
    {"kind": "rat", "heads": 4, "chunk_size": 1, "qk_groups": 1},
    {"kind": "rat", "heads": 4, "chunk_size": 5, "qk_groups": 4, "rope": "none", "bias": True},
    {"kind": "rat", "heads": 2, "chunk_size": 64},
]
