"""The registry contract: every block kind the registry finds, every one of its `examples`,
gets these checks (a new kind is covered by adding its folder, nothing else)."""

from __future__ import annotations

import pytest
import torch
from numerics import rel_err

from archlab.blocks.base import ModelConfig
from archlab.blocks.registry import kinds

D_MODEL = 16
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=64, max_seq_len=64, dtype="float32")
CASES = [
    pytest.param(kind, i, id=f"{kind}-{i}")
    for kind, record in kinds().items()
    for i in range(len(record.examples))
]


def make_block(kind: str, i: int, seed: int = 0) -> tuple[object, torch.nn.Module]:
    record = kinds()[kind]
    params = record.params(**record.examples[i])
    assert record.check(params, D_MODEL) == []
    torch.manual_seed(seed)
    block = record.build(params, MODEL)
    block.select_backend(torch.device("cpu"))
    # Randomize every parameter so that no path hides behind a zero or identity init.
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return params, block


@pytest.mark.parametrize("kind,i", CASES)
def test_forward_backward_shapes_and_grads(kind, i):
    _, block = make_block(kind, i)
    x = torch.randn(2, 11, D_MODEL, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    assert torch.isfinite(y).all()
    (y * torch.randn_like(y)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for name, p in block.named_parameters():
        assert p.grad is not None, f"no gradient reaches {name}"
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("kind,i", CASES)
@pytest.mark.parametrize("seq_len,prompt", [(1, 1), (9, 1), (13, 6), (17, 17), (24, 8)])
def test_prefill_then_step_equals_forward(kind, i, seq_len, prompt):
    _, block = make_block(kind, i, seed=seq_len)
    x = torch.randn(2, seq_len, D_MODEL)
    with torch.no_grad():
        full = block(x)
        cache = block.allocate_cache(2, seq_len, device=torch.device("cpu"), dtype=torch.float32)
        outs = [block.prefill(x[:, :prompt], cache)]
        assert cache.length == prompt
        for t in range(prompt, seq_len):
            outs.append(block.step(x[:, t : t + 1], cache))
        assert cache.length == seq_len
    decoded = torch.cat(outs, dim=1)
    assert decoded.shape == full.shape
    assert rel_err(decoded, full) < 1e-4


@pytest.mark.parametrize("kind,i", CASES)
@pytest.mark.parametrize("batch,seq_len", [(1, 1), (2, 7), (3, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cache_bytes_match_allocation(kind, i, batch, seq_len, dtype):
    params, block = make_block(kind, i)
    cache = block.allocate_cache(batch, seq_len, device=torch.device("cpu"), dtype=dtype)
    expected = kinds()[kind].cache_bytes(params, D_MODEL, batch, seq_len, dtype.itemsize)
    assert cache.nbytes() == expected


@pytest.mark.parametrize("kind,i", CASES)
def test_param_count_matches_module(kind, i):
    params, block = make_block(kind, i)
    assert kinds()[kind].param_count(params, D_MODEL) == sum(p.numel() for p in block.parameters())


@pytest.mark.parametrize("kind,i", CASES)
def test_flops_are_positive_and_grow_with_length(kind, i):
    params, _ = make_block(kind, i)
    f = kinds()[kind].flops
    short, long = f(params, D_MODEL, 2, 16), f(params, D_MODEL, 2, 64)
    assert 0 < short.matmul < long.matmul
    assert kinds()[kind].decode_flops(params, D_MODEL, 2, 16).matmul > 0


def test_every_kind_has_examples():
    for name, record in kinds().items():
        assert record.examples, f"{name} has no examples for the contract tests"
        if not record.composite:  # a composite kind is covered through its branches
            assert record.gpu_examples, f"{name} has no gpu_examples for the GPU tests"


@pytest.mark.parametrize("kind,i", CASES)
def test_activations_estimate_is_positive(kind, i):
    params, _ = make_block(kind, i)
    elems, fp32 = kinds()[kind].activations(params, D_MODEL, 32)
    assert elems > 0 and fp32 >= 0
