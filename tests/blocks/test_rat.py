"""The `rat` block: the ends of the chunk dial, the reference backend against the loop
reference, the vectorised scan and prefill, backends, and the cost model."""

from __future__ import annotations

import math

import pytest
import torch
from numerics import rel_err
from torch.utils.flop_counter import FlopCounterMode

from archlab.blocks import rat, rnn
from archlab.blocks.base import BackendUnavailable, ModelConfig
from archlab.blocks.rat.layer import RATBlock
from archlab.blocks.rnn.layer import RNNBlock
from archlab.kernels.rat.reference import (
    chunk_scan,
    rat_core_reference,
    rat_prefill_cache_reference,
)
from archlab.kernels.rat.scan import chunk_scan_parallel, rat_prefill_cache_scan

D_MODEL = 32
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=64, max_seq_len=64, dtype="float32")


def make_rat(seed: int = 0, **kw) -> RATBlock:
    torch.manual_seed(seed)
    block = RATBlock(rat.Params(**kw), MODEL)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return block


def split_in_proj(block: RATBlock, x: torch.Tensor):
    """The paper's split of in_proj, written here from the weights: z, v, g, q, k."""
    H, D, G = block.heads, block.head_dim, block.qk_groups
    h = torch.nn.functional.linear(x, block.in_proj.weight, block.in_proj.bias)
    z, v, g, q, k = h.split([H * D, H * D, H * D, G * D, G * D], dim=-1)
    B, T, _ = x.shape
    return z, v.view(B, T, H, D), g.view(B, T, H, D), q.view(B, T, G, D), k.view(B, T, G, D)


def grads(out: torch.Tensor, w: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad((out * w).sum(), tensors))


@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("L", [1, 3, 16, 40])
def test_parallel_scan_matches_loop(T, L):
    torch.manual_seed(T * 100 + L)
    x = torch.randn(2, T, 3, 5)
    g = torch.rand(2, T, 3, 5)
    g[:, ::4, 0] = 0.0  # exact 0 and 1 gates: no logs, no NaN
    g[:, 1::5, 1] = 1.0
    x.requires_grad_(True)
    g.requires_grad_(True)
    w = torch.randn(2, T, 3, 5)
    ref = chunk_scan(x, g, L)
    out = chunk_scan_parallel(x, g, L)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads(out, w, [x, g]), grads(ref, w, [x, g]), strict=True):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


CORE_CASES = [
    dict(heads=4, chunk_size=1),
    dict(heads=4, chunk_size=3),
    dict(heads=4, chunk_size=16, qk_groups=1),
    dict(heads=4, chunk_size=40, qk_groups=4),
    dict(heads=2, head_dim=6, chunk_size=3, rope="none", bias=True),
]


@pytest.mark.parametrize("kw", CORE_CASES)
def test_reference_backend_matches_loop_reference(kw):
    T = 29  # not a multiple of any chunk size above but 1
    block = make_rat(seed=kw["chunk_size"], **kw)
    assert block.backend == "reference"
    x = torch.randn(2, T, D_MODEL, requires_grad=True)
    w = torch.randn(2, T, D_MODEL)
    params = [x, block.in_proj.weight, block.out_proj.weight, block.gate_bias]
    if kw.get("bias"):
        params += [block.in_proj.bias, block.out_proj.bias]

    out = block(x)
    z, v, g, q, k = split_in_proj(block, x)
    y = rat_core_reference(q, k, v, g, block.gate_bias, kw["chunk_size"], kw.get("rope") != "none")
    expected = block.out_proj(torch.sigmoid(z) * y.flatten(-2))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads(out, w, params), grads(expected, w, params), strict=True):
        assert rel_err(a, b) < 1e-5


def rotate(x_BTHD: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """RoPE (rotate-half) at token positions, written out for this test."""
    T, D = x_BTHD.shape[1], x_BTHD.shape[-1]
    inv = theta ** (-torch.arange(0, D, 2, dtype=torch.float32) / D)
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv
    cos, sin = ang.cos().repeat(1, 2)[:, None], ang.sin().repeat(1, 2)[:, None]
    x1, x2 = x_BTHD[..., : D // 2], x_BTHD[..., D // 2 :]
    return x_BTHD * cos + torch.cat([-x2, x1], dim=-1) * sin


@pytest.mark.parametrize("qk_groups", [1, 2, 4])
def test_chunk_one_is_causal_attention_over_gated_keys(qk_groups):
    block = make_rat(seed=qk_groups, heads=4, chunk_size=1, qk_groups=qk_groups)
    H, D = block.heads, block.head_dim
    x = torch.randn(2, 19, D_MODEL)
    with torch.no_grad():
        z, v, g_logits, q, k = split_in_proj(block, x)
        g = torch.sigmoid(g_logits + block.gate_bias.view(H, D))
        k_heads = torch.stack([k[:, :, h % qk_groups] for h in range(H)], dim=2)
        q_heads = torch.stack([q[:, :, h % qk_groups] for h in range(H)], dim=2)
        keys, values = rotate((1 - g) * k_heads), (1 - g) * v
        attn = torch.nn.functional.scaled_dot_product_attention(
            rotate(q_heads).transpose(1, 2),
            keys.transpose(1, 2),
            values.transpose(1, 2),
            is_causal=True,
        ).transpose(1, 2)
        expected = block.out_proj(torch.sigmoid(z) * attn.flatten(-2))
        assert rel_err(block(x), expected) < 1e-5


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk_size", [29, 64])
def test_chunk_spanning_the_sequence_is_the_rnn(bias, chunk_size):
    block = make_rat(seed=3, heads=4, chunk_size=chunk_size, bias=bias)
    recurrent = RNNBlock(rnn.Params(bias=bias), MODEL)
    with torch.no_grad():
        recurrent.in_proj.weight.copy_(block.in_proj.weight[: 3 * D_MODEL])
        recurrent.gate_bias.copy_(block.gate_bias)
        recurrent.out_proj.weight.copy_(block.out_proj.weight)
        if bias:
            recurrent.in_proj.bias.copy_(block.in_proj.bias[: 3 * D_MODEL])
            recurrent.out_proj.bias.copy_(block.out_proj.bias)
    x = torch.randn(2, 29, D_MODEL)
    with torch.no_grad():
        assert rel_err(block(x), recurrent(x)) < 1e-6


@pytest.mark.parametrize("T,L", [(11, 4), (12, 3), (5, 8), (9, 1)])
@pytest.mark.parametrize("rope", [True, False])
def test_vectorised_prefill_fills_the_cache_as_the_reference(T, L, rope):
    torch.manual_seed(T + L)
    B, H, G, D = 2, 4, 2, 8
    k, v, gl = torch.randn(B, T, G, D), torch.randn(B, T, H, D), torch.randn(B, T, H, D)
    bias = torch.randn(H * D)
    C = -(-T // L) + 1  # one slot more than needed: it must stay untouched
    caches = [torch.full((B, C, H, D), float("nan")) for _ in range(4)]
    rat_prefill_cache_reference(k, v, gl, bias, caches[0], caches[1], L, rope)
    rat_prefill_cache_scan(k, v, gl, bias, caches[2], caches[3], L, rope)
    torch.testing.assert_close(caches[2], caches[0], rtol=1e-5, atol=1e-5, equal_nan=True)
    torch.testing.assert_close(caches[3], caches[1], rtol=1e-5, atol=1e-5, equal_nan=True)
    assert torch.isnan(caches[2][:, -1]).all()


def test_long_sequence_on_cpu_matches_loop_reference():
    """T = 4096 runs through the vectorised reference backend (and its backward) on the CPU."""
    block = make_rat(seed=5, heads=4, chunk_size=16)
    x = torch.randn(1, 4096, D_MODEL, requires_grad=True)
    out = block(x)
    out.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        z, v, g, q, k = split_in_proj(block, x)
        y = rat_core_reference(q, k, v, g, block.gate_bias, 16)
        assert rel_err(out, block.out_proj(torch.sigmoid(z) * y.flatten(-2))) < 1e-5


def test_backends_on_cpu(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # triton runs on CPU only under it
    assert make_rat(heads=4, chunk_size=4).backend == "reference"
    for backend in ("flex", "triton"):
        block = make_rat(heads=4, chunk_size=4, backend=backend)
        with pytest.raises(BackendUnavailable):
            block.select_backend(torch.device("cpu"))
        with pytest.raises(BackendUnavailable):
            block(torch.randn(1, 5, D_MODEL))
    with pytest.raises(BackendUnavailable):
        make_rat(heads=4, chunk_size=4, backend="sdpa").select_backend("cpu")


@pytest.mark.parametrize("L", [1, 2, 3, 16])
def test_gate_bias_init(L):
    torch.manual_seed(L)
    bias = RATBlock(rat.Params(heads=4, chunk_size=L), MODEL).gate_bias
    if L <= 2:
        assert (bias == 0).all()
    else:
        assert (bias >= 0).all() and (bias <= math.log(L - 1)).all() and bias.std() > 0


def brute_force_pairs(L: int, T: int) -> int:
    """Scored (query, key) pairs per head: the chunk-causal mask drawn out, plus the diagonal."""
    C = T // L
    chunk_of_t = torch.arange(T) // L
    visible = torch.arange(C)[None, :] < chunk_of_t[:, None]
    return int(visible.sum()) + T


@pytest.mark.parametrize(
    "kw",
    [
        dict(heads=4, chunk_size=1),
        dict(heads=4, chunk_size=3, qk_groups=1),
        dict(heads=2, head_dim=6, chunk_size=5, bias=True, rope="none"),
        dict(heads=4, chunk_size=64),
    ],
)
@pytest.mark.parametrize("B,T", [(1, 1), (2, 17), (3, 40)])
def test_flops_against_counter_and_mask(kw, B, T):
    params = rat.Params(**kw)
    block = make_rat(**kw)
    H, D = block.heads, block.head_dim
    with FlopCounterMode(display=False) as counter:
        block(torch.randn(B, T, D_MODEL))
    counts = counter.get_flop_counts()
    projections = sum(sum(counts[f"RATBlock.{m}"].values()) for m in ("in_proj", "out_proj"))
    attention = 4 * D * H * B * brute_force_pairs(kw["chunk_size"], T)
    f = rat.flops(params, D_MODEL, B, T)
    assert f.matmul == projections + attention
    assert f.other > 5 * H * B * brute_force_pairs(kw["chunk_size"], T)
    for t in (0, T - 1, T, 3 * T + 2):
        pairs = brute_force_pairs(kw["chunk_size"], t + 1) - brute_force_pairs(kw["chunk_size"], t)
        one = rat.decode_flops(params, D_MODEL, B, t)
        assert one.matmul == projections // T + 4 * D * H * B * pairs


def test_param_count_and_cache_bytes_with_explicit_head_dim():
    params = rat.Params(heads=2, head_dim=6, chunk_size=5, qk_groups=1, bias=True)
    block = RATBlock(params, MODEL)
    assert block.in_proj.weight.shape == (3 * 12 + 2 * 6, D_MODEL)
    assert block.out_proj.weight.shape == (D_MODEL, 12)
    assert rat.param_count(params, D_MODEL) == sum(p.numel() for p in block.parameters())
    cache = block.allocate_cache(3, 11, dtype=torch.bfloat16)
    assert cache["k"].shape == (3, 3, 2, 6) and cache["v"].shape == (3, 3, 2, 6)
    assert rat.cache_bytes(params, D_MODEL, 3, 11, 2) == cache.nbytes() == 2 * 3 * 3 * 12 * 2
