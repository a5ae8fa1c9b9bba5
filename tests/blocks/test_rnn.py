"""The `rnn` block against a loop written here, its init, backends and cost model."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from archlab.blocks import rnn
from archlab.blocks.base import BackendUnavailable, ModelConfig
from archlab.blocks.rnn.layer import RNNBlock

D_MODEL = 16
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=64, max_seq_len=256, dtype="float32")


def make_rnn(seed: int = 0, **kw) -> RNNBlock:
    torch.manual_seed(seed)
    block = RNNBlock(rnn.Params(**kw), MODEL)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return block


def loop_rnn(block: RNNBlock, x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """s_t = g_t s_{t-1} + (1 - g_t) v_t, one token at a time, in `dtype`."""
    W, b = block.in_proj.weight.to(dtype), block.in_proj.bias
    h = x.to(dtype) @ W.T + (b.to(dtype) if b is not None else 0)
    z, v, g = h.split(D_MODEL, dim=-1)
    g = torch.sigmoid(g + block.gate_bias.to(dtype))
    s, states = torch.zeros_like(v[:, 0]), []
    for t in range(x.shape[1]):
        s = g[:, t] * s + (1 - g[:, t]) * v[:, t]
        states.append(s)
    out = torch.sigmoid(z) * torch.stack(states, dim=1)
    Wo, bo = block.out_proj.weight.to(dtype), block.out_proj.bias
    return out @ Wo.T + (bo.to(dtype) if bo is not None else 0)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("T", [1, 5, 37])
def test_matches_loop_with_gradients(bias, T):
    block = make_rnn(seed=T, bias=bias)
    x = torch.randn(3, T, D_MODEL, requires_grad=True)
    w = torch.randn(3, T, D_MODEL)
    params = [x, *block.parameters()]
    out, ref = block(x), loop_rnn(block, x)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad((out * w).sum(), params)
    want = torch.autograd.grad((ref * w).sum(), params)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_long_sequence_with_slow_gates_is_accurate():
    """T = 4096 with forget gates near 1: the parallel scan keeps float32 accuracy."""
    block = make_rnn(seed=1)
    with torch.no_grad():
        block.gate_bias.fill_(8.0)  # g ~ 0.9997: memory over thousands of steps
    x = torch.randn(1, 4096, D_MODEL)
    with torch.no_grad():
        out, ref = block(x), loop_rnn(block, x, torch.float64)
    assert ((out.double() - ref).norm() / ref.norm()).item() < 1e-5


def test_gate_bias_init():
    torch.manual_seed(0)
    bias = RNNBlock(rnn.Params(), MODEL).gate_bias
    assert (bias >= 0).all() and (bias <= math.log(MODEL.max_seq_len - 1)).all()
    assert bias.std() > 0
    tiny = ModelConfig(d_model=D_MODEL, vocab_size=8, max_seq_len=2, dtype="float32")
    assert (RNNBlock(rnn.Params(), tiny).gate_bias == 0).all()


def test_backends():
    assert make_rnn().backend == "reference"  # auto on the CPU: triton needs CUDA
    block = make_rnn(backend="flex")  # rnn has no such backend
    with pytest.raises(BackendUnavailable):
        block.select_backend("cpu")
    with pytest.raises(BackendUnavailable):
        block(torch.randn(1, 3, D_MODEL))


def test_triton_backend_needs_cuda_or_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="CUDA"):
        make_rnn(backend="triton").select_backend("cpu")


def test_bf16_decode_follows_forward():
    block = make_rnn(seed=2)
    x = torch.randn(2, 12, D_MODEL)
    with torch.no_grad():
        full = block(x)
        cache = block.allocate_cache(2, 12, dtype=torch.bfloat16)
        assert cache["state"].dtype == torch.bfloat16 and cache.nbytes() == 2 * D_MODEL * 2
        outs = [block.prefill(x[:, :5], cache)] + [
            block.step(x[:, t : t + 1], cache) for t in range(5, 12)
        ]
    assert ((torch.cat(outs, 1) - full).norm() / full.norm()).item() < 2e-2


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("B,T", [(1, 1), (2, 9), (3, 40)])
def test_flops_against_counter(bias, B, T):
    params = rnn.Params(bias=bias)
    with FlopCounterMode(display=False) as counter:
        make_rnn(bias=bias)(torch.randn(B, T, D_MODEL))
    f = rnn.flops(params, D_MODEL, B, T)
    assert f.matmul == counter.get_total_flops()
    assert f.other == 8 * B * T * D_MODEL
    assert rnn.decode_flops(params, D_MODEL, B, 1000) == rnn.flops(params, D_MODEL, B, 1)
