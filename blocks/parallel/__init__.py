"""`parallel`: several mixers side by side on the same normed input, as Hymba's hybrid
heads (Dong et al. 2024, "Hymba: A Hybrid-head Architecture for Small Language Models",
arXiv:2411.13676).

Written in a spec as `{parallel: [branch, ...], merge: mean | sum | concat}`. Every
branch sees the same input and keeps its own params, cost and cache; the outputs merge
into one residual update: their mean, their sum, or (`concat`) a projection
`Linear(n * d_model, d_model)` of their concatenation. A branch of a kind that can share
a cache may read an earlier block's or branch's keys/values (`share_cache`, Hymba's
cross-layer KV sharing): its params then count no key/value projections and no cache,
and the layer takes and hands on keys/values per branch. A branch is any kind whose record
has `branchable=True` (`BRANCHES`, read from the registry); the cost functions, checks
and activations are their branches' plus the merge's. The layer is
`archlab.blocks.parallel.layer.ParallelBlock`.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import Field

from archlab.blocks.base import BlockKind, BlockParams, Checks, FlopCount, linear_flops
from archlab.blocks.registry import branch_kinds

BRANCHES: dict[str, BlockKind] = branch_kinds("parallel")  # kind name -> record
FP32 = 4  # bytes of a float32

Branch = Annotated[
    Union[tuple(k.params for k in BRANCHES.values())],  # noqa: UP007
    Field(discriminator="kind"),
]


class Params(BlockParams):
    """Branches run side by side on the same input; their outputs merged into one."""

    kind: Literal["parallel"] = "parallel"
    branches: list[Branch] = Field(
        min_length=1,
        max_length=64,
        description="the mixers run side by side, each a block of a branchable kind",
    )
    merge: Literal["mean", "sum", "concat"] = Field(
        default="mean",
        description="how the outputs combine: their mean, their sum, or a projection of "
        "their concatenation (Linear(n * d_model, d_model))",
    )


def check(p: Params, d_model: int) -> Checks:
    """Every branch's checks, each message prefixed with the branch's index and kind."""
    return [
        ("branches", f"branch {i} ({b.kind}): {msg}")
        for i, b in enumerate(p.branches)
        for _, msg in BRANCHES[b.kind].check(b, d_model)
    ]


def _merge_flops(p: Params, d_model: int, tokens: int) -> FlopCount:
    n = len(p.branches)
    if p.merge == "concat":
        return FlopCount(linear_flops(tokens, n * d_model, d_model), 0)
    return FlopCount(0, n * tokens * d_model)  # n - 1 adds (+ a scale for mean) per element


def param_count(p: Params, d_model: int) -> int:
    """The branches' parameters, plus the n * d_model x d_model projection of `concat`."""
    own = len(p.branches) * d_model * d_model if p.merge == "concat" else 0
    return own + sum(BRANCHES[b.kind].param_count(b, d_model) for b in p.branches)


def flops(p: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """The branches' forward FLOPs plus the merge's."""
    total = _merge_flops(p, d_model, batch * seq_len)
    for b in p.branches:
        total = total + BRANCHES[b.kind].flops(b, d_model, batch, seq_len)
    return total


def decode_flops(p: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """The branches' decode FLOPs plus the merge's, for one token."""
    total = _merge_flops(p, d_model, batch)
    for b in p.branches:
        total = total + BRANCHES[b.kind].decode_flops(b, d_model, batch, t)
    return total


def cache_bytes(p: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """The branches' caches (`LayerCache.children`)."""
    return sum(
        BRANCHES[b.kind].cache_bytes(b, d_model, batch, seq_len, dtype_bytes) for b in p.branches
    )


def activations(p: Params, d_model: int, seq_len: int) -> tuple[int, int]:
    """Every branch's, plus the concatenation that a `concat` merge projects."""
    parts = [BRANCHES[b.kind].activations(b, d_model, seq_len) for b in p.branches]
    concat = seq_len * len(p.branches) * d_model if p.merge == "concat" else 0
    return sum(e for e, _ in parts) + concat, sum(f for _, f in parts)


def breakpoints(p: Params) -> tuple[set[int], int]:
    """The union of the branches' windows; the lcm of their periods."""
    windows: set[int] = set()
    period = 1
    for b in p.branches:
        w, q = BRANCHES[b.kind].breakpoints(b)
        windows |= w
        period = math.lcm(period, q)
    return windows, period


def _layer():
    from archlab.blocks.parallel.layer import ParallelBlock

    return ParallelBlock


KIND = BlockKind(
    name="parallel",
    summary="several mixers side by side on the same input (Hymba-style), merged by their "
    "mean, sum or a projection of their concatenation",
    symbol=None,
    is_mixer=True,
    composite=True,
    branchable=False,
    params=Params,
    layer=_layer,
    param_count=param_count,
    flops=flops,
    decode_flops=decode_flops,
    cache_bytes=cache_bytes,
    activations=activations,
    check=check,
    backends=(),
    breakpoints=breakpoints,
    color="#eeeeee",
    examples=(
        {
            "kind": "parallel",
            "branches": [
                {"kind": "attention", "heads": 4},
                {"kind": "ssm", "d_state": 8, "head_dim": 8, "chunk_size": 4},
            ],
        },
        {
            "kind": "parallel",
            "merge": "concat",
            "branches": [{"kind": "rat", "heads": 2, "chunk_size": 3}, {"kind": "rnn"}],
        },
        {
            "kind": "parallel",
            "merge": "sum",
            "branches": [
                {"kind": "local_attention", "heads": 2, "window": 4},
                {"kind": "rat", "heads": 4, "chunk_size": 5},
            ],
        },
    ),
)
