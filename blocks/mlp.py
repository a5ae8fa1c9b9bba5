"""`mlp` (-): the channel mixer. Gated activations (swiglu, geglu) have three matrices.

FLOPs: matmul-type work is 2 * d_model * hidden per token per matrix (two matrices, three
when gated). `other` counts per hidden element `ACTIVATION_FLOPS[activation]` (gelu 8,
silu 4, relu2 2, swiglu 5 = silu + gating multiply, geglu 9 = gelu + gating multiply),
plus 1 per output element of each projection when `bias` is on.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from archlab.blocks.base import BlockParams, FlopCount, LayerCache, linear_flops, resolve_backend
from archlab.config import ModelConfig

KIND = "mlp"
SYMBOL = "-"
IS_MIXER = False
GATED = ("swiglu", "geglu")
ACTIVATION_FLOPS = {"gelu": 8, "silu": 4, "relu2": 2, "swiglu": 5, "geglu": 9}


class Params(BlockParams):
    kind: Literal["mlp"] = "mlp"
    hidden: int | None = Field(default=None, ge=1, le=1 << 24)  # None: 4 * d_model
    activation: Literal["gelu", "silu", "relu2", "swiglu", "geglu"] = "gelu"
    bias: bool = False


def check(p: Params, d_model: int) -> list[tuple[str, str]]:
    """No checks need the model."""
    return []


def hidden_size(p: Params, d_model: int) -> int:
    """The inner width: `hidden`, or 4 * d_model when it is not given."""
    return 4 * d_model if p.hidden is None else p.hidden


EXAMPLES = [
    {"kind": "mlp"},
    {"kind": "mlp", "hidden": 24, "activation": "swiglu", "bias": True},
    {"kind": "mlp", "hidden": 20, "activation": "relu2"},
    {"kind": "mlp", "activation": "geglu"},
    {"kind": "mlp", "activation": "silu"},
]


class Block(nn.Module):
    """Position-wise MLP over x [B, T, d_model]: down(act(up(x))), or down(act(gate(x)) * up(x))
    when gated. It keeps no decode state; `step` and `prefill` are `forward`."""

    def __init__(self, params: Params, model: ModelConfig) -> None:
        super().__init__()
        self.params = params
        d, hidden = model.d_model, hidden_size(params, model.d_model)
        self.up_proj = nn.Linear(d, hidden, bias=params.bias)
        if params.activation in GATED:
            self.gate_proj = nn.Linear(d, hidden, bias=params.bias)
        self.down_proj = nn.Linear(hidden, d, bias=params.bias)
        self.reset_parameters()
        self.select_backend(torch.device("cpu"))

    def reset_parameters(self) -> None:
        """Weights ~ N(0, 0.02), biases 0."""
        for proj in self.children():
            nn.init.normal_(proj.weight, std=0.02)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)

    def select_backend(self, device: torch.device | str) -> str:
        """The MLP is plain PyTorch: `reference` runs on every device."""
        device = torch.device(device)
        self.backend = resolve_backend("reference", device, {"reference": True})
        return self.backend

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] -> [B, T, d_model]."""
        act = self.params.activation
        up_BTF = self.up_proj(x_BTD)
        if act == "swiglu":
            h_BTF = F.silu(self.gate_proj(x_BTD)) * up_BTF
        elif act == "geglu":
            h_BTF = F.gelu(self.gate_proj(x_BTD)) * up_BTF
        elif act == "gelu":
            h_BTF = F.gelu(up_BTF)
        elif act == "silu":
            h_BTF = F.silu(up_BTF)
        else:
            h_BTF = F.relu(up_BTF).square()
        return self.down_proj(h_BTF)

    def allocate_cache(
        self,
        batch: int,
        max_len: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LayerCache:
        """An empty cache: the MLP keeps no state, only the token count."""
        return LayerCache()

    def prefill(self, x_BTD: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """`forward`, counting the prompt's tokens into `cache.length`."""
        cache.length += x_BTD.shape[1]
        return self(x_BTD)

    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """`forward` on one token; advances `cache.length`."""
        cache.length += x_B1D.shape[1]
        return self(x_B1D)


def param_count(params: Params, d_model: int) -> int:
    """Two (three when gated) d_model x hidden matrices, plus their biases if `bias`."""
    hidden = hidden_size(params, d_model)
    n_in = 2 if params.activation in GATED else 1
    biases = n_in * hidden + d_model if params.bias else 0
    return (n_in + 1) * d_model * hidden + biases


def flops(params: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """Forward FLOPs over batch x seq_len tokens (constants in the module docstring)."""
    tokens, hidden = batch * seq_len, hidden_size(params, d_model)
    n_in = 2 if params.activation in GATED else 1
    matmul = (n_in + 1) * linear_flops(tokens, d_model, hidden)
    other = tokens * hidden * ACTIVATION_FLOPS[params.activation]
    other += tokens * (n_in * hidden + d_model) if params.bias else 0
    return FlopCount(matmul, other)


def decode_flops(params: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """One new token per sequence: the forward cost of one token, whatever t."""
    return flops(params, d_model, batch, 1)


def cache_bytes(params: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """The MLP keeps no decode state."""
    return 0
