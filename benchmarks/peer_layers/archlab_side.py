"""archlab's side of each row: its one-block model built through the public API
(`build_archlab`), and its block with the peers' interface (forward, allocate_cache,
prefill, step), eager (`ArchlabSide`) or compiled as `archlab profile --compile` runs it
(`ArchlabCompiledSide`)."""

from __future__ import annotations

import torch
from torch import nn

import archlab

from .common import compiled
from .run_setup import Setup


def build_archlab(kind: str, setup: Setup):
    """(model, block) of a one-block archlab model of `kind` (public API only)."""
    model = archlab.build(setup.spec(kind), device=setup.device)
    block = model.blocks[0]
    block.mixer.select_backend(setup.device)
    return model, block


class ArchlabSide:
    """archlab's block as a layer: the mixer alone, or for rat x + mixer(norm(x))."""

    def __init__(self, kind: str, block: nn.Module) -> None:
        self.kind, self.block = kind, block
        self.mixer, self.norm = block.mixer, block.norm
        self.residual = kind == "rat"

    @property
    def backend(self) -> str | None:
        b = getattr(self.mixer, "backend", None)
        return None if b is None else str(b)

    def parameters(self):
        return self.block.parameters() if self.residual else self.mixer.parameters()

    def forward(self, x):
        return x + self.mixer(self.norm(x)) if self.residual else self.mixer(x)

    def allocate_cache(self, batch: int, max_len: int):
        return self.mixer.allocate_cache(batch, max_len)

    def prefill(self, x, cache):
        _set_length(cache, 0)
        return self._prefill(x, cache)

    def step(self, x, cache, pos):
        _set_length(cache, pos)
        with torch.no_grad():
            return self._step(x, cache)

    def _prefill(self, x, cache):
        if self.residual:
            return x + self.mixer.prefill(self.norm(x), cache)
        return self.mixer.prefill(x, cache)

    def _step(self, x, cache):
        return (
            x + self.mixer.step(self.norm(x), cache) if self.residual else self.mixer.step(x, cache)
        )


class ArchlabCompiledSide(ArchlabSide):
    """archlab's layer as `archlab profile --compile` runs it: the forward (train), the
    prefill and the decode step each under torch.compile with static shapes (the run's
    --compile backend); the cache's length is set outside the compiled code."""

    def __init__(self, kind: str, block: nn.Module, mode: str) -> None:
        super().__init__(kind, block)
        self._forward = compiled(super().forward, mode, False)
        self._prefill = compiled(self._prefill, mode, False)
        self._step = compiled(self._step, mode, False)

    def forward(self, x):
        return self._forward(x)


def _set_length(cache, n: int) -> None:
    if hasattr(cache, "set_length"):
        cache.set_length(n)
    else:
        cache.length = n
