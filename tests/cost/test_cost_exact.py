"""Parameters and cache bytes of the cost model against the built model, and the
identities that hold between the cost figures."""

from __future__ import annotations

from pathlib import Path

import pytest

import archlab
from archlab.blocks.registry import kind
from archlab.cost.analytic import METRICS, metric_function, spec_cost

ROOT = Path(__file__).resolve().parents[2]
ALL_SPECS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "specs").rglob("*.yaml"))
TINY_SPECS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "specs" / "tiny").glob("*.yaml"))


def test_the_spec_folders_are_found():
    assert len(ALL_SPECS) >= 10 and len(TINY_SPECS) >= 4


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_params_equal_built_model(spec):
    plan = archlab.compile(ROOT / spec)
    model = archlab.build(plan, device="meta")
    assert archlab.cost(plan).params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("spec", TINY_SPECS)
def test_cache_bytes_equal_allocation(spec):
    plan = archlab.compile(ROOT / spec)
    model = archlab.build(plan, device="cpu")
    for batch, T in [(1, 1), (2, 7), (1, 16), (3, 17), (2, 100), (1, 257)]:
        cache = model.allocate_cache(batch, T)
        assert spec_cost(plan, batch, T).cache_bytes == cache.nbytes(), (batch, T)


def test_cache_bytes_with_tied_embeddings_and_layernorm():
    spec = {
        "name": "tied",
        "model": {"d_model": 32, "vocab_size": 50, "norm": "layernorm", "tie_embeddings": True},
        "stack": [{"kind": "attention", "heads": 4}, "mlp"],
    }
    plan = archlab.compile(spec)
    model = archlab.build(plan, device="meta")
    c = spec_cost(plan, 2, 9)
    assert c.params == sum(p.numel() for p in model.parameters())
    # tied: the LM head is the embedding table, read whole by a decode step
    assert c.weight_bytes == c.params * 2


@pytest.mark.parametrize("spec", ALL_SPECS)
@pytest.mark.parametrize("batch,T", [(1, 1), (3, 1000), (2, 4096)])
def test_parts_sum_to_totals(spec, batch, T):
    plan = archlab.compile(ROOT / spec)
    c = spec_cost(plan, batch, T)
    for name in (
        "params",
        "fwd_flops",
        "fwd_other_flops",
        "cache_bytes",
        "decode_flops",
        "decode_other_flops",
        "decode_bytes",
    ):
        total = getattr(c, name)
        assert sum(getattr(b, name) for b in c.by_block) + getattr(c.head, name) == total
        assert sum(getattr(k, name) for k in c.by_kind.values()) + getattr(c.head, name) == total
    assert c.train_flops == 3 * c.fwd_flops == c.fwd_flops + c.bwd_flops
    # a block (or a parallel branch) with share_cache reads its source's cache too
    by_index, m = {b.index: b for b in plan.blocks}, plan.model
    shared = sum(
        kind(src.kind).cache_bytes(src, m.d_model, batch, T, m.dtype_bytes)
        for b in plan.blocks
        for s, branch in b.cache_reads().values()
        for src in [by_index[s].mixer(branch)]
    )
    assert c.decode_bytes == c.weight_bytes + c.cache_bytes + shared
    assert sum(k.blocks for k in c.by_kind.values()) == len(plan.blocks)
    for metric in METRICS:
        assert metric_function(plan, metric, batch)(T) == getattr(c, metric)


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_costs_are_linear_in_batch_and_non_decreasing_in_T(spec):
    plan = archlab.compile(ROOT / spec)
    prev = None
    for T in [1, 2, 3, 15, 16, 17, 255, 256, 257, 1024, 1025, 1026, 5000]:
        one, three = spec_cost(plan, 1, T), spec_cost(plan, 3, T)
        assert three.fwd_flops == 3 * one.fwd_flops
        assert three.cache_bytes == 3 * one.cache_bytes
        assert three.decode_bytes - three.weight_bytes == 3 * (one.decode_bytes - one.weight_bytes)
        if prev is not None:
            for name in METRICS:
                assert getattr(one, name) >= getattr(prev, name), (name, T)
        prev = one


def test_api_fields_and_default_length():
    c = archlab.cost(ROOT / "specs/paper/rat.yaml")
    assert c.seq_len == 4096 and c.batch == 1
    for name in (
        "params",
        "fwd_flops",
        "train_flops",
        "cache_bytes",
        "decode_flops",
        "decode_bytes",
    ):
        assert isinstance(getattr(c, name), int) and getattr(c, name) > 0
    d = c.to_dict()
    assert d["train_flops"] == c.train_flops and set(d["by_kind"]) == {"rat", "mlp"}


def test_bad_sizes_raise():
    plan = archlab.compile(ROOT / "specs/tiny/rat.yaml")
    with pytest.raises(ValueError):
        spec_cost(plan, 0, 16)
    with pytest.raises(ValueError):
        metric_function(plan, "speed")


PARALLEL = {
    "name": "parallel-hybrid",
    "model": {"d_model": 32, "vocab_size": 64, "max_seq_len": 64, "dtype": "float32"},
    "stack": [
        {
            "parallel": [
                {"kind": "local_attention", "heads": 4, "window": 6},
                {"kind": "ssm", "d_state": 8, "head_dim": 8, "chunk_size": 4},
            ],
            "merge": "concat",
        },
        "mlp",
        {"parallel": [{"kind": "rat", "heads": 2, "chunk_size": 3}, {"kind": "rnn"}]},
    ],
}


def test_parallel_blocks_params_and_cache():
    plan = archlab.compile(PARALLEL)
    model = archlab.build(plan, device="cpu")
    assert spec_cost(plan).params == sum(p.numel() for p in model.parameters())
    for batch, T in [(1, 1), (2, 7), (3, 40)]:
        assert spec_cost(plan, batch, T).cache_bytes == model.allocate_cache(batch, T).nbytes()


def test_parallel_crossover_and_memory():
    from archlab.cost.crossover import crossovers, structure
    from archlab.cost.memory import train_memory

    plan, other = archlab.compile(PARALLEL), archlab.compile(ROOT / "specs/tiny/attention.yaml")
    assert structure(plan) == ({6}, 12)
    for metric in ("train_flops", "cache_bytes", "decode_bytes"):
        runs = crossovers(plan, other, metric)
        fa, fb = metric_function(plan, metric), metric_function(other, metric)
        for T in range(1, 400):
            s = next(r.sign for r in runs if r.start <= T and (r.end is None or T <= r.end))
            d = fa(T) - fb(T)
            assert s == (d > 0) - (d < 0), (metric, T)
    assert train_memory(plan, 2, 64).activations > 0


def test_shared_cache_is_read_not_owned():
    from archlab.blocks import attention

    if "share_cache" not in attention.Params.model_fields:
        pytest.skip("share_cache is not supported by the attention block yet")
    spec = {
        "name": "shared",
        "model": {"d_model": 32, "vocab_size": 64, "dtype": "float32"},
        "stack": [
            {"kind": "attention", "heads": 4, "name": "src"},
            "mlp",
            {"kind": "attention", "heads": 4, "share_cache": "src"},
            "mlp",
        ],
    }
    plan = archlab.compile(spec)
    model = archlab.build(plan, device="cpu")
    c = spec_cost(plan, 2, 16)
    assert c.params == sum(p.numel() for p in model.parameters())
    assert c.cache_bytes == model.allocate_cache(2, 16).nbytes() == 2 * 2 * 16 * 32 * 4
    # the sharer's decode step reads the source's cache as well
    assert c.decode_bytes == c.weight_bytes + 2 * c.cache_bytes
