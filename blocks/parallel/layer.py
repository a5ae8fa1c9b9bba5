"""The `parallel` layer: the nn.Module of `archlab.blocks.parallel`, holding its branches'
layers (each built by its kind's record) and the merge."""

from __future__ import annotations

import torch
from torch import nn

from archlab.blocks.base import ModelConfig
from archlab.blocks.cache import LayerCache
from archlab.blocks.parallel import BRANCHES, Params


class ParallelBlock(nn.Module):
    """The branches of a parallel block and their merge."""

    def __init__(self, params: Params, model: ModelConfig):
        super().__init__()
        self.params = params
        self.branches = nn.ModuleList(BRANCHES[b.kind].layer()(b, model) for b in params.branches)
        n, d = len(params.branches), model.d_model
        self.merge_proj = nn.Linear(n * d, d, bias=False) if params.merge == "concat" else None
        if self.merge_proj is not None:
            nn.init.normal_(self.merge_proj.weight, std=0.02)

    @property
    def backend(self) -> str:
        """The branches' backends, joined by '+'."""
        return "+".join(str(getattr(b, "backend", None)) for b in self.branches)

    def select_backend(self, device: torch.device | str) -> str:
        """Each branch selects its own backend for `device` (see `backend`)."""
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
