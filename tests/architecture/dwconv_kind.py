"""A block kind written as a user would add one: `blocks/dwconv/__init__.py` (this text's
RECORD) and `blocks/dwconv/layer.py` (LAYER). The new-kind test copies them into a
temporary copy of the package, touching no other file, and runs every command on it."""

RECORD = '''"""`dwconv`: a causal depthwise convolution over time, then an output projection."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from archlab.blocks.base import BlockKind, BlockParams, FlopCount, linear_flops


class Params(BlockParams):
    """Each channel mixes its own last `width` inputs; then a d_model x d_model projection."""

    kind: Literal["dwconv"] = "dwconv"
    width: int = Field(default=4, ge=1, le=64, description="taps of the convolution")


def param_count(p: Params, d_model: int) -> int:
    return d_model * p.width + d_model * d_model


def flops(p: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    tokens = batch * seq_len
    return FlopCount(linear_flops(tokens, d_model, d_model), 2 * tokens * d_model * p.width)


def decode_flops(p: Params, d_model: int, batch: int, t: int) -> FlopCount:
    return flops(p, d_model, batch, 1)


def cache_bytes(p: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    return batch * d_model * (p.width - 1) * dtype_bytes


def activations(p: Params, d_model: int, seq_len: int) -> tuple[int, int]:
    return 2 * seq_len * d_model, 0


def _layer():
    from archlab.blocks.dwconv.layer import DWConvBlock

    return DWConvBlock


KIND = BlockKind(
    name="dwconv",
    summary="causal depthwise convolution (a test kind)",
    symbol="C",
    params=Params,
    layer=_layer,
    param_count=param_count,
    flops=flops,
    decode_flops=decode_flops,
    cache_bytes=cache_bytes,
    activations=activations,
    branchable=True,
    color="#9467bd",
    examples=({"kind": "dwconv"}, {"kind": "dwconv", "width": 1}),
    gpu_examples=({"kind": "dwconv"},),
)
'''

LAYER = '''"""The `dwconv` layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlab.blocks.base import resolve_backend, runs_anywhere
from archlab.blocks.cache import LayerCache


class DWConvBlock(nn.Module):
    BACKENDS = {"reference": runs_anywhere}

    def __init__(self, params, model) -> None:
        super().__init__()
        self.params, self.width = params, params.width
        self.weight = nn.Parameter(0.5 * torch.randn(model.d_model, params.width))
        self.out_proj = nn.Linear(model.d_model, model.d_model, bias=False)
        self.cache_dtype = model.torch_dtype
        self.select_backend("cpu")

    def select_backend(self, device) -> str:
        self.backend = resolve_backend("dwconv", "reference", torch.device(device), self.BACKENDS)
        return self.backend

    def _conv(self, x_BTD: torch.Tensor, past_BKD: torch.Tensor) -> torch.Tensor:
        full = torch.cat([past_BKD.to(x_BTD.dtype), x_BTD], dim=1).transpose(1, 2)
        w = self.weight.to(x_BTD.dtype)[:, None, :]
        return F.conv1d(full, w, groups=w.shape[0]).transpose(1, 2)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        B, _, D = x_BTD.shape
        past = x_BTD.new_zeros(B, self.width - 1, D)
        return self.out_proj(self._conv(x_BTD, past))

    def allocate_cache(self, batch, max_len, device=None, dtype=None) -> LayerCache:
        dtype = dtype or self.cache_dtype
        past = torch.zeros(batch, self.width - 1, self.weight.shape[0], device=device, dtype=dtype)
        return LayerCache({"past": past})

    def prefill(self, x_BTD: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        return self.step(x_BTD, cache)

    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        past = cache["past"]
        y = self.out_proj(self._conv(x_B1D, past))
        if self.width > 1:
            both = torch.cat([past, x_B1D.to(past.dtype)], dim=1)
            past.copy_(both[:, both.shape[1] - past.shape[1] :])
        cache.length += x_B1D.shape[1]
        return y
'''
