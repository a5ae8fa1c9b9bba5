"""`ssm` (M): a Mamba-2 (SSD) block."""

from __future__ import annotations

from typing import Literal

from archlab.blocks.base import Backend, BlockParams
from pydantic import Field

KIND = "ssm"
SYMBOL = "M"
IS_MIXER = True


class Params(BlockParams):
    kind: Literal["ssm"] = "ssm"
    d_state: int = Field(default=128, ge=1, le=4096)
    expand: int = Field(default=2, ge=1, le=64)
    head_dim: int = Field(default=64, ge=1, le=4096)
    n_groups: int = Field(default=1, ge=1, le=4096)
    conv_kernel: int = Field(default=4, ge=1, le=64)
    chunk_size: int = Field(default=256, ge=1, le=1 << 20)
    backend: Backend = "auto"


def check(p: Params, d_model: int) -> list[tuple[str, str]]:
    errors = []
    inner = p.expand * d_model
    if inner % p.head_dim:
        errors.append(("head_dim", f"must divide expand * d_model ({inner}) (got {p.head_dim})"))
    elif (inner // p.head_dim) % p.n_groups:
        errors.append(
            (
                "n_groups",
                f"must divide the number of heads ({inner // p.head_dim}) (got {p.n_groups})",
            )
        )
    return errors


EXAMPLES = [
    {"kind": "ssm", "d_state": 8, "head_dim": 8, "chunk_size": 4},
    {"kind": "ssm", "d_state": 4, "head_dim": 4, "n_groups": 2, "conv_kernel": 3, "chunk_size": 3},
]
