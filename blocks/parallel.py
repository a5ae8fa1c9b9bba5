"""`parallel`: several mixers side by side on the same normed input (Hymba-style).

Written in a spec as `{parallel: [branch, ...], merge: mean | sum | concat}`. Every
branch sees the same input and keeps its own params, cost and cache; the outputs merge
into one residual update: their mean, their sum, or (`concat`) a projection
`Linear(n * d_model, d_model)` of their concatenation.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

import torch
from pydantic import Field
from torch import nn

from archlab.blocks import attention, local_attention, rat, rnn, ssm
from archlab.blocks.base import BlockParams, FlopCount, LayerCache, linear_flops
from archlab.config import ModelConfig

KIND = "parallel"
SYMBOL = None  # no built-in symbol; bind one with `symbols:`
IS_MIXER = True
BRANCH_KINDS = {m.KIND: m for m in (attention, local_attention, rat, rnn, ssm)}

Branch = Annotated[
    Union[tuple(m.Params for m in BRANCH_KINDS.values())],  # noqa: UP007
    Field(discriminator="kind"),
]


class Params(BlockParams):
    kind: Literal["parallel"] = "parallel"
    branches: list[Branch] = Field(min_length=1, max_length=64)
    merge: Literal["mean", "sum", "concat"] = "mean"


def check(p: Params, d_model: int) -> list[tuple[str, str]]:
    return [
        ("branches", f"branch {i} ({b.kind}): {msg}")
        for i, b in enumerate(p.branches)
        for _, msg in BRANCH_KINDS[b.kind].check(b, d_model)
    ]


EXAMPLES = [
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
]


class Block(nn.Module):
    """The branches of a parallel block and their merge."""

    def __init__(self, params: Params, model: ModelConfig):
        super().__init__()
        self.params = params
        self.branches = nn.ModuleList(BRANCH_KINDS[b.kind].Block(b, model) for b in params.branches)
        n, d = len(params.branches), model.d_model
        self.merge_proj = nn.Linear(n * d, d, bias=False) if params.merge == "concat" else None
        if self.merge_proj is not None:
            nn.init.normal_(self.merge_proj.weight, std=0.02)

    @property
    def backend(self) -> str:
        return "+".join(str(getattr(b, "backend", None)) for b in self.branches)

    def select_backend(self, device: torch.device | str) -> str:
        for b in self.branches:
            b.select_backend(device)
        return self.backend

    def _merge(self, outs: list[torch.Tensor]) -> torch.Tensor:
        if self.merge_proj is not None:
            return self.merge_proj(torch.cat(outs, dim=-1))
        total = torch.stack(outs).sum(0)
        return total / len(outs) if self.params.merge == "mean" else total

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        return self._merge([b(x_BTD) for b in self.branches])

    def allocate_cache(self, batch: int, max_len: int, device=None, dtype=None) -> LayerCache:
        return LayerCache(
            children=[
                b.allocate_cache(batch, max_len, device=device, dtype=dtype) for b in self.branches
            ]
        )

    def prefill(self, x_BTD: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        outs = [b.prefill(x_BTD, c) for b, c in zip(self.branches, cache.children, strict=True)]
        cache.length += x_BTD.shape[1]
        return self._merge(outs)

    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        outs = [b.step(x_B1D, c) for b, c in zip(self.branches, cache.children, strict=True)]
        cache.length += 1
        return self._merge(outs)


def _merge_flops(p: Params, d_model: int, tokens: int) -> FlopCount:
    n = len(p.branches)
    if p.merge == "concat":
        return FlopCount(linear_flops(tokens, n * d_model, d_model), 0)
    return FlopCount(0, n * tokens * d_model)  # n - 1 adds (+ a scale for mean) per element


def param_count(p: Params, d_model: int) -> int:
    own = len(p.branches) * d_model * d_model if p.merge == "concat" else 0
    return own + sum(BRANCH_KINDS[b.kind].param_count(b, d_model) for b in p.branches)


def flops(p: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    total = _merge_flops(p, d_model, batch * seq_len)
    for b in p.branches:
        total = total + BRANCH_KINDS[b.kind].flops(b, d_model, batch, seq_len)
    return total


def decode_flops(p: Params, d_model: int, batch: int, t: int) -> FlopCount:
    total = _merge_flops(p, d_model, batch)
    for b in p.branches:
        total = total + BRANCH_KINDS[b.kind].decode_flops(b, d_model, batch, t)
    return total


def cache_bytes(p: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    return sum(
        BRANCH_KINDS[b.kind].cache_bytes(b, d_model, batch, seq_len, dtype_bytes)
        for b in p.branches
    )
