"""Helpers shared by the attention and local_attention tests."""

from __future__ import annotations

import torch
from numerics import rel_err

from archlab.config import ModelConfig


def clone(block, backend: str, model: ModelConfig):
    twin = type(block)(block.params.model_copy(update={"backend": backend}), model)
    twin.load_state_dict(block.state_dict())
    return twin


def run(block, x: torch.Tensor, g: torch.Tensor):
    """Output, input gradient and parameter gradients for upstream gradient g."""
    x = x.detach().clone().requires_grad_(True)
    y = block(x)
    (y * g).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in block.named_parameters()}


def assert_grads_close(grads: dict, grads_ref: dict, tol: float = 1e-5) -> None:
    """Every parameter gradient within `tol`, relative to its norm, floored at 10% of the
    largest one: with one visible key (T = 1, window 1) q and k get exactly zero gradient
    from the reference and rounding noise from sdpa."""
    assert grads.keys() == grads_ref.keys()
    floor = 0.1 * max(g.norm().item() for g in grads_ref.values())
    for name, grad in grads.items():
        assert rel_err(grad, grads_ref[name], floor) < tol, name
