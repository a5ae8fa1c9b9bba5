"""The `rnn` block on its `triton` backend (under Triton's interpreter on the CPU) against
the `reference` backend with the same weights: output, every gradient, and decode."""

from __future__ import annotations

import pytest
import torch
from numerics import rel_err

from archlab.blocks.base import ModelConfig
from archlab.blocks.rnn import Params
from archlab.blocks.rnn.layer import RNNBlock
from archlab.kernels.runtime import triton_interpreted

pytestmark = pytest.mark.skipif(
    not (torch.cuda.is_available() or triton_interpreted()), reason="needs CUDA or the interpreter"
)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
MODEL = ModelConfig(d_model=24, vocab_size=16, max_seq_len=64, dtype="float32")


def pair(bias: bool, seed: int) -> tuple[RNNBlock, RNNBlock]:
    torch.manual_seed(seed)
    fast = RNNBlock(Params(backend="triton", bias=bias), MODEL).to(DEVICE)
    ref = RNNBlock(Params(backend="reference", bias=bias), MODEL).to(DEVICE)
    with torch.no_grad():
        for p in fast.parameters():
            p.add_(0.3 * torch.randn_like(p))
    ref.load_state_dict(fast.state_dict())
    for block in (fast, ref):
        block.select_backend(DEVICE)
    assert (fast.backend, ref.backend) == ("triton", "reference")
    return fast, ref


@pytest.mark.parametrize("T", [1, 17, 40])
@pytest.mark.parametrize("bias", [False, True])
def test_triton_block_equals_reference_with_every_gradient(T, bias):
    fast, ref = pair(bias, seed=T)
    x = torch.randn(2, T, 24, device=DEVICE)
    dy = torch.randn(2, T, 24, device=DEVICE)
    grads = []
    for block in (fast, ref):
        xi = x.clone().requires_grad_()
        y = block(xi)
        y.backward(dy)
        grads.append([y, xi.grad, *(p.grad for p in block.parameters())])
    for a, b in zip(*grads, strict=True):
        assert rel_err(a, b) < 1e-5


def test_triton_prefill_and_steps_equal_the_forward():
    fast, ref = pair(False, seed=3)
    x = torch.randn(3, 21, 24, device=DEVICE)
    with torch.no_grad():
        full = ref(x)
        cache = fast.allocate_cache(3, 21)
        out = [fast.prefill(x[:, :6], cache)]
        out += [fast.step(x[:, t : t + 1], cache) for t in range(6, 21)]
    assert cache.length == 21
    assert rel_err(torch.cat(out, 1), full) < 1e-5
