"""The `mlp` layer: the nn.Module of `archlab.blocks.mlp`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archlab.blocks.base import ModelConfig, resolve_backend, runs_anywhere
from archlab.blocks.cache import LayerCache
from archlab.blocks.mlp import GATED, Params, hidden_size


class MLPBlock(nn.Module):
    """Position-wise MLP over x [B, T, d_model]: down(act(up(x))), or down(act(gate(x)) * up(x))
    when gated. It keeps no decode state; `step` and `prefill` are `forward`."""

    BACKENDS = {"reference": runs_anywhere}

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
        self.backend = resolve_backend("mlp", "reference", torch.device(device), self.BACKENDS)
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
