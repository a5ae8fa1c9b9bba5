"""Attention's compiled sequence path (on CUDA for sdpa) computes what the eager path
does: forced on here on the CPU with the aot_eager backend, outputs and every gradient,
two lengths (dynamic shapes), prefill's cache included."""

from __future__ import annotations

import pytest
import torch
from numerics import rel_err

import archlab.blocks.attention.layer as attention_layer
from archlab.blocks.attention import Params
from archlab.blocks.base import ModelConfig

MODEL = ModelConfig(d_model=32, vocab_size=16, max_seq_len=64, dtype="float32")


@pytest.fixture
def forced(monkeypatch):
    monkeypatch.setattr(attention_layer, "fuses_on", lambda x, backend: backend == "sdpa")
    monkeypatch.setattr(
        attention_layer, "COMPILE_OPTIONS", {"backend": "aot_eager", "dynamic": True}
    )
    monkeypatch.setattr(attention_layer, "_compiled_sequence", None)


def run(block, x):
    x = x.clone().requires_grad_()
    y = block(x)
    y.backward(torch.ones_like(y))
    return [y, x.grad, *(p.grad for p in block.parameters())]


@pytest.mark.parametrize("qk_norm", [False, True])
def test_compiled_sequence_equals_eager(forced, monkeypatch, qk_norm):
    torch.manual_seed(0)
    block = attention_layer.AttentionBlock(Params(heads=4, kv_heads=2, qk_norm=qk_norm), MODEL)
    assert block.backend == "sdpa"
    for T in (5, 12):
        x = torch.randn(2, T, 32)
        fused = run(block, x)
        block.zero_grad()
        monkeypatch.setattr(attention_layer, "fuses_on", lambda x, backend: False)
        eager = run(block, x)
        block.zero_grad()
        monkeypatch.setattr(attention_layer, "fuses_on", lambda x, backend: backend == "sdpa")
        for a, b in zip(fused, eager, strict=True):
            assert rel_err(a, b) < 1e-5
    assert attention_layer._compiled_sequence is not None  # the compiled path did run


def test_compiled_prefill_fills_the_cache(forced):
    torch.manual_seed(1)
    block = attention_layer.AttentionBlock(Params(heads=4), MODEL)
    x = torch.randn(2, 9, 32)
    with torch.no_grad():
        full = block(x)
        cache = block.allocate_cache(2, 9)
        out = [block.prefill(x[:, :6], cache)]
        out += [block.step(x[:, t : t + 1], cache) for t in range(6, 9)]
    assert rel_err(torch.cat(out, 1), full) < 1e-5


def test_whole_compiled_block_reads_the_rope_table():
    """Inside an enclosing torch.compile the RoPE angles come from the table made before
    (one graph, no break), and the block computes what it does eagerly; without a table
    the angles are computed in the graph, the same function."""
    from torch._dynamo.testing import CompileCounterWithBackend

    from archlab.kernels import rope as rope_module

    torch.manual_seed(2)
    block = attention_layer.AttentionBlock(Params(heads=4, rope_theta=777.0), MODEL)
    x = torch.randn(2, 11, 32)
    eager = run(block, x)  # makes the table for (head_dim 8, theta 777) on the CPU
    assert rope_module.existing_table(11, 8, 777.0, x.device) is not None
    block.zero_grad()
    counter = CompileCounterWithBackend("aot_eager")
    compiled = run(torch.compile(block, backend=counter, fullgraph=True), x)
    assert counter.frame_count == 1
    placeholders = [n.target for n in counter.graphs[0].graph.nodes if n.op == "placeholder"]
    graph_ops = {str(n.target) for n in counter.graphs[0].graph.nodes}
    assert not any("cos" in op for op in graph_ops), graph_ops  # read, not computed
    assert len(placeholders) >= 3  # x, the weights and the table
    for a, b in zip(compiled, eager, strict=True):
        assert rel_err(a, b) < 1e-5


def test_flex_block_mask_is_made_outside_an_enclosing_compile(monkeypatch):
    """Inside a torch.compile'd model the flex BlockMask comes from the cache, made eagerly
    once per length (Dynamo would trace through the cache and build it in the graph)."""
    from archlab.blocks.attention import common

    class Mask:
        pass

    made = []

    def fake_create(mask_mod, b, h, q_len, kv_len, device):
        made.append(q_len)
        return Mask()

    monkeypatch.setattr(common, "compiled_create_block_mask", lambda: fake_create)
    common.cached_block_mask.cache_clear()
    try:

        def layer(x):
            return x * 2, common.flex_block_mask(x.shape[1], 4, x.device)

        compiled = torch.compile(layer, backend="eager")
        x = torch.randn(2, 11)
        masks = [compiled(x)[1] for _ in range(3)]
        assert made == [11]
        assert all(m is common.cached_block_mask(11, 4, x.device) for m in masks)
    finally:
        common.cached_block_mask.cache_clear()
