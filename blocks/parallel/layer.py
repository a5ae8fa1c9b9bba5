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

    def _run(self, call, shared_kv, return_kv) -> tuple[list[torch.Tensor], dict]:
        """Every branch through `call(j, branch, kwargs)`: branch j takes `shared_kv[j]`
        (the keys/values of the cache it reads) or, when j is in `return_kv`, hands its own
        on; returns the outputs and the handed-on keys/values by branch."""
        outs, kvs = [], {}
        for j, branch in enumerate(self.branches):
            kwargs = {}
            if shared_kv and j in shared_kv:
                kwargs["shared_kv"] = shared_kv[j]
            elif j in return_kv:
                kwargs["return_kv"] = True
            out = call(j, branch, kwargs)
            if "return_kv" in kwargs:
                out, kvs[j] = out
            outs.append(out)
        return outs, kvs

    def forward(self, x_BTD: torch.Tensor, shared_kv: dict | None = None, return_kv=()):
        """The merged branches. Cache sharing by branch: `shared_kv` maps a reading branch
        to the keys/values it reads; with `return_kv` (branch indices) also returns
        {branch: its keys/values} for the branches that later blocks read."""
        outs, kvs = self._run(lambda j, b, kw: b(x_BTD, **kw), shared_kv, return_kv)
        y = self._merge(outs)
        return (y, kvs) if return_kv else y

    def allocate_cache(self, batch: int, max_len: int, device=None, dtype=None) -> LayerCache:
        return LayerCache(
            children=[
                b.allocate_cache(batch, max_len, device=device, dtype=dtype) for b in self.branches
            ]
        )

    def prefill(
        self, x_BTD: torch.Tensor, cache: LayerCache, shared_kv: dict | None = None, return_kv=()
    ):
        """Every branch's prefill into its cache; `shared_kv` and `return_kv` as `forward`."""
        children = cache.children
        outs, kvs = self._run(
            lambda j, b, kw: b.prefill(x_BTD, children[j], **kw), shared_kv, return_kv
        )
        cache.length += x_BTD.shape[1]
        y = self._merge(outs)
        return (y, kvs) if return_kv else y

    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        outs = [b.step(x_B1D, c) for b, c in zip(self.branches, cache.children, strict=True)]
        cache.length += 1
        return self._merge(outs)
