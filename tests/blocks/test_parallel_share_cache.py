"""Parallel branches that share caches, built: decode (prefill + token-by-token steps)
equals the forward in float32, the cost model's cache bytes equal the allocated cache's,
its parameters the built model's, a reader's decode reads its source's cache, and a scaled
copy keeps the sharing."""

from __future__ import annotations

import pytest
import torch

import archlab
from archlab.cost.analytic import METRICS, metric_function, spec_cost
from archlab.measure.scale import Scale, kept_blocks, scale_plan

SPEC = """
name: tiny-parallel-sharing
model: {d_model: 64, vocab_size: 256, max_seq_len: 128, dtype: float32}
defaults:
  attention: {heads: 4, kv_heads: 2}
  local_attention: {heads: 4, kv_heads: 2, window: 6}
  rat: {heads: 4, chunk_size: 4}
  ssm: {d_state: 8, head_dim: 16, chunk_size: 8}
  mamba: {d_state: 4}
  mlp: {hidden: 2 * d_model}
stack:
  - {parallel: [{kind: local_attention, name: swa}, mamba]}
  - mlp
  - {parallel: [{kind: local_attention, share_cache: swa}, ssm]}
  - mlp
  - {parallel: [ssm, {kind: attention, name: full}, {kind: rat, name: r}], merge: concat}
  - {kind: attention, heads: 8, head_dim: 16, share_cache: full}
  - {parallel: [{kind: rat, qk_groups: 4, share_cache: r}, {kind: attention, share_cache: 5}],
     merge: sum}
  - {kind: local_attention, share_cache: [2, 0]}
  - {kind: rat, share_cache: [4, 2]}
"""


@pytest.fixture(scope="module")
def plan():
    return archlab.compile(SPEC)


def randomize(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))


def decode_error(model, T: int = 21, prompt: int = 9) -> float:
    """Relative error of prefill(prompt) + token-by-token steps against the forward."""
    ids = torch.randint(0, model.plan.model.vocab_size, (2, T))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2, T)
        outs = [model.prefill(ids[:, :prompt], cache)]
        for t in range(prompt, T):
            outs.append(model.step(ids[:, t : t + 1], cache))
    assert cache.length == T
    decoded = torch.cat(outs, dim=1)
    return ((decoded - full).norm() / full.norm()).item()


def test_prefill_then_step_equals_forward(plan):
    torch.manual_seed(0)
    model = archlab.build(plan, dtype=torch.float32)
    randomize(model)
    assert decode_error(model) < 1e-4


def test_readers_read_their_sources_caches(plan):
    model = archlab.build(plan, dtype=torch.float32)
    cache = model.allocate_cache(1, 8)
    layers = cache.layers
    assert layers[2].children[0].source is layers[0].children[0]
    assert layers[5].source is layers[4].children[1]
    assert layers[6].children[0].source is layers[4].children[2]
    assert layers[6].children[1].source is layers[4].children[1]  # chain through block 5
    assert layers[7].source is layers[0].children[0]
    assert not layers[2].children[0].tensors and not layers[5].tensors  # no cache of their own
    assert model.blocks[0].exports == {0} and model.blocks[4].exports == {1, 2}
    assert model.blocks[6].reads == {0: (4, 2), 1: (4, 1)}


def test_a_readers_output_depends_on_its_sources_keys():
    """Changing the source branch's key projection changes the reader's output."""
    plan = archlab.compile(SPEC)
    torch.manual_seed(0)
    model = archlab.build(plan, dtype=torch.float32)
    ids = torch.randint(0, 256, (1, 7))
    source, reader = model.blocks[0].mixer.branches[0], model.blocks[2].mixer.branches[0]
    assert not hasattr(reader, "k_proj") and not hasattr(reader, "v_proj")
    x = torch.randn(1, 7, 64)
    with torch.no_grad():
        _, kv = source(x, return_kv=True)
        before = reader(x, shared_kv=kv)
        source.k_proj.weight.mul_(2)
        _, kv = source(x, return_kv=True)
        after = reader(x, shared_kv=kv)
        assert not torch.allclose(before, after)
        assert model(ids).shape == (1, 7, 256)


@pytest.mark.parametrize("batch,T", [(1, 1), (2, 7), (1, 16), (3, 17), (2, 100)])
def test_cache_bytes_equal_the_allocated_cache(plan, batch, T):
    model = archlab.build(plan, dtype=torch.float32)
    cache = model.allocate_cache(batch, T)
    assert spec_cost(plan, batch, T).cache_bytes == cache.nbytes()


def test_params_and_decode_bytes(plan):
    model = archlab.build(plan, dtype=torch.float32)
    c = spec_cost(plan, 2, 16)
    assert c.params == sum(p.numel() for p in model.parameters())
    by_block = c.by_block

    def cache_of(block: int, branch: int | None) -> int:
        mixer = plan.blocks[block].mixer(branch)
        kind = archlab.blocks.registry.kind(mixer.kind)
        return kind.cache_bytes(mixer, 64, 2, 16, 4)

    # a reader owns no cache; its decode step reads its source's
    reads = {b.index: b.cache_reads() for b in plan.blocks}
    for i, one in enumerate(by_block):
        read = sum(cache_of(*ref) for ref in reads[i].values())
        assert one.decode_bytes == one.params * 4 + one.cache_bytes + read, i
    assert by_block[5].cache_bytes == by_block[7].cache_bytes == by_block[8].cache_bytes == 0
    assert by_block[2].cache_bytes == cache_of(2, 1)  # only its ssm branch's
    shared = sum(cache_of(*ref) for r in reads.values() for ref in r.values())
    assert c.decode_bytes == c.weight_bytes + c.cache_bytes + shared
    for metric in METRICS:
        assert metric_function(plan, metric, 2)(16) == getattr(c, metric), metric


def test_a_scaled_copy_keeps_the_sharing(plan):
    small, text = scale_plan(plan, Scale(d_model=32, vocab_size=64), "float32")
    assert [b.cache_reads() for b in small.blocks] == [b.cache_reads() for b in plan.blocks]
    assert small.blocks[2].params.branches[0].share_cache == 0
    torch.manual_seed(0)
    model = archlab.build(small, dtype=torch.float32)
    randomize(model)
    assert decode_error(model, T=12, prompt=5) < 1e-4
    assert spec_cost(small, 1, 9).cache_bytes == model.allocate_cache(1, 9).nbytes()


def test_a_scaled_copy_keeps_and_renumbers_a_branch_source():
    spec = """
name: deep
model: {d_model: 64, vocab_size: 256, dtype: float32}
defaults:
  local_attention: {heads: 4, window: 4}
  ssm: {d_state: 8, head_dim: 16, chunk_size: 8}
symbols:
  H: {parallel: [local_attention, ssm]}
stack:
  - "(H-)x3"
  - {parallel: [{kind: local_attention, name: src}, ssm]}
  - mlp
  - "(H-)x6"
  - {parallel: [{kind: local_attention, share_cache: src}, ssm]}
  - mlp
"""
    plan = archlab.compile(spec)
    depth = kept_blocks(plan, 4)
    assert 6 in depth.keep and "1 cache source of kept blocks kept" in depth.text
    small, _ = scale_plan(plan, Scale(d_model=32, vocab_size=64, min_blocks=4), "float32")
    reader = next(b for b in small.blocks if b.cache_reads())
    source = depth.keep.index(6)
    assert reader.cache_reads() == {0: (source, 0)}
    assert reader.params.branches[0].share_cache == source
    torch.manual_seed(0)
    model = archlab.build(small, dtype=torch.float32)
    randomize(model)
    assert decode_error(model, T=10, prompt=3) < 1e-4
