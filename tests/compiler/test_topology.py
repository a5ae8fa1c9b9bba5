"""Graph topologies in the compiler: parallel blocks, names, share_cache checks."""

from __future__ import annotations

import textwrap

import pytest
import torch

import archlab
from archlab import SpecError

HEAD = """\
model: {d_model: 64, vocab_size: 100, dtype: float32}
defaults:
  attention: {heads: 4}
  local_attention: {heads: 4, window: 8}
  rat: {heads: 4, chunk_size: 4}
  ssm: {d_state: 8, head_dim: 16}
"""


def compile_text(text: str):
    return archlab.compile(HEAD + textwrap.dedent(text))


def errors_of(text: str) -> str:
    with pytest.raises(SpecError) as info:
        compile_text(text)
    return "\n".join(map(str, info.value.errors))


def test_parallel_block_plan_and_graph():
    plan = compile_text("""
        stack:
          - {parallel: [attention, {kind: ssm, expand: 1}], merge: concat}
          - mlp
        """)
    first = plan.blocks[0]
    assert first.kind == "parallel" and first.params.merge == "concat"
    assert [b.kind for b in first.params.branches] == ["attention", "ssm"]
    assert first.params.branches[0].heads == 4 and first.params.branches[1].expand == 1
    g = plan.graph
    assert g.has_edge("embedding", "block0.0") and g.has_edge("block0.1", "block0")
    assert g.edges["embedding", "block0"]["kind"] == "residual"
    assert [b.kind for b in plan.order()] == ["parallel", "mlp"]


def test_parallel_model_builds_and_counts():
    plan = compile_text("stack: [{parallel: [rat, rnn, local_attention], merge: sum}, mlp]\n")
    model = archlab.build(plan)
    assert archlab.cost(plan).params == sum(p.numel() for p in model.parameters())
    assert model(torch.randint(0, 100, (2, 9))).shape == (2, 9, 100)


def test_parallel_in_symbols_repeats_and_patches():
    plan = compile_text("""
        symbols:
          H: {parallel: [attention, ssm]}
        stack: "(H-)x2"
        at:
          -2: {merge: sum}
          0: {parallel: [rat], merge: mean}
        """)
    assert [b.kind for b in plan.blocks] == ["parallel", "mlp"] * 2
    assert [b.kind for b in plan.blocks[0].params.branches] == ["rat"]
    assert plan.blocks[2].params.merge == "sum"


@pytest.mark.parametrize(
    "stack,needle",
    [
        ("[{parallel: []}]", "needs a non-empty list of branches"),
        ("[{parallel: [mlp]}]", "a parallel branch is a mixer, not 'mlp'"),
        ("[{parallel: [{parallel: [rat]}]}]", "parallel blocks do not nest"),
        ("[{parallel: [rat], merge: max}]", "must be one of 'mean', 'sum' or 'concat'"),
        ("[{parallel: [rat], merj: sum}]", "did you mean 'merge'"),
        ("[parallel]", "write a parallel block as"),
        ("[{parallel: [{kind: rat, chunk_size: 0}]}]", "stack[0].parallel[0].chunk_size: must be"),
        (  # a branch may share a cache, but only an earlier block's
            "[{parallel: [{kind: attention, heads: 4, share_cache: 0}]}]",
            "stack[0].parallel[0].share_cache: must name an earlier block (this is branch 0",
        ),
    ],
)
def test_parallel_errors(stack, needle):
    assert needle in errors_of(f"stack: {stack}\n")


@pytest.mark.parametrize(
    "stack,needle",
    [
        ("[{kind: rat, name: a}, {kind: rat, name: a}]", "block name 'a' is already used"),
        ("[{kind: rat, name: 3a}]", "a block name is an identifier"),
        ("[mlp, {kind: mlp, share_cache: 0}]", "`share_cache` is for attention"),
        ("[{kind: attention, share_cache: 1}, attention]", "must name an earlier block"),
        ("[{kind: attention, share_cache: 0}]", "must name an earlier block"),
        (
            "[{kind: attention, name: src}, {kind: attention, share_cache: scr}]",
            "no block is named 'scr'; did you mean 'src'",
        ),
        ("[attention, {kind: attention, share_cache: true}]", "must be a block index or a block"),
        ("[mlp, {kind: attention, share_cache: 0}]", "it is a mlp block, this one attention"),
        ("[rat, {kind: attention, share_cache: 0}]", "it is a rat block, this one attention"),
        ("[{parallel: [rat]}, {kind: rat, share_cache: 0}]", "it is a parallel block"),
    ],
)
def test_sharing_errors(stack, needle):
    assert needle in errors_of(f"stack: {stack}\n")


def test_graph_drawings_show_sharing_and_branches(tmp_path):
    from pathlib import Path

    from archlab.report.graph import write_graph

    root = Path(__file__).resolve().parents[2] / "specs" / "tiny"
    shared = archlab.compile(str(root / "shared.yaml"))
    assert sum(d["kind"] == "cache_share" for *_, d in shared.graph.edges(data=True)) == 4
    write_graph(shared, tmp_path / "s.svg")
    svg = (tmp_path / "s.svg").read_text()
    assert svg.count("stroke-dasharray") == 4  # one dashed edge per sharer
    parallel = archlab.compile(str(root / "parallel.yaml"))
    write_graph(parallel, tmp_path / "p.svg")
    assert "2.1: rat (heads=4, chunk_size=4)" in (tmp_path / "p.svg").read_text()
    write_graph(parallel, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
