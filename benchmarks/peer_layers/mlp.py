"""The mlp peer: up/down projections (and a gate for swiglu / geglu) around the
activation, the whole layer under torch.compile."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import VariantPeer, _copy_named, _wrap, compiled_variants
from .run_setup import Setup

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "relu2": lambda h: F.relu(h).square()}


class MLPPeer(VariantPeer):
    """down(act(up(x))) (or down(act(gate(x)) * up(x)) when gated), compiled."""

    def __init__(self, setup: Setup, hidden: int, activation: str = "gelu") -> None:
        super().__init__()
        d = setup.d_model
        self.activation = activation
        self.up_proj = nn.Linear(d, hidden, bias=False)
        if activation in ("swiglu", "geglu"):
            self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)
        self.use_variants(setup.compile, compiled_variants(setup.compile))

    @property
    def impl(self) -> str:
        return f"up/down projections + {self.activation}, {self.variant_name}"

    def _build(self) -> None:
        self._fn = self._compiled(self._mlp)

    def _mlp(self, x):
        up = self.up_proj(x)
        if self.activation == "swiglu":
            h = F.silu(self.gate_proj(x)) * up
        elif self.activation == "geglu":
            h = F.gelu(self.gate_proj(x)) * up
        else:
            h = ACTIVATIONS[self.activation](up)
        return self.down_proj(h)

    def forward(self, x):
        return self._fn(x)

    def allocate_cache(self, batch: int, max_len: int) -> dict:
        return {}

    def prefill(self, x, cache):
        return self._fn(x)

    @torch.no_grad()
    def step(self, x_B1D, cache, pos):
        return self._mlp(x_B1D)


def load_mlp(peer: MLPPeer, block: nn.Module) -> None:
    mixer, _ = _wrap("mlp", block)
    names = {f"{p}.weight": f"{p}.weight" for p in ("up_proj", "gate_proj", "down_proj")}
    _copy_named(peer, mixer, {k: v for k, v in names.items() if k in peer.state_dict()})
