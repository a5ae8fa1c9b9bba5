"""`share_cache` inside parallel blocks: branch names, `[block, branch]` references, the
errors (each at its path), the resolved plan, its graph, its summary and the schema."""

from __future__ import annotations

import textwrap

import pytest

import archlab
from archlab import SpecError

HEAD = """\
model: {d_model: 64, vocab_size: 100, dtype: float32}
defaults:
  attention: {heads: 4, kv_heads: 2}
  local_attention: {heads: 4, kv_heads: 2, window: 8}
  rat: {heads: 4, chunk_size: 4}
  ssm: {d_state: 8, head_dim: 16}
"""

GOOD = """
stack:
  - {parallel: [{kind: local_attention, name: swa}, ssm]}
  - mlp
  - {parallel: [{kind: local_attention, share_cache: swa}, ssm]}
  - mlp
  - {parallel: [ssm, {kind: attention, name: full}, {kind: rat, name: r}], merge: concat}
  - {kind: attention, heads: 8, head_dim: 16, share_cache: full}
  - {parallel: [{kind: rat, share_cache: [4, 2]}, {kind: attention, share_cache: 5}]}
  - {kind: local_attention, share_cache: [2, 0]}
  - {kind: rat, share_cache: r}
"""


def compile_text(text: str):
    return archlab.compile(HEAD + textwrap.dedent(text))


def errors_of(text: str) -> str:
    with pytest.raises(SpecError) as info:
        compile_text(text)
    return "\n".join(map(str, info.value.errors))


def test_branch_sharing_resolves_to_sources():
    plan = compile_text(GOOD)
    reads = {b.index: b.cache_reads() for b in plan.blocks if b.cache_reads()}
    assert reads == {
        2: {0: (0, 0)},  # by the branch's name
        5: {None: (4, 1)},  # a plain block reading a branch
        6: {0: (4, 2), 1: (4, 1)},  # [block, branch]; a chain through block 5 to its source
        7: {None: (0, 0)},  # a chain through branch 0 of block 2
        8: {None: (4, 2)},
    }
    # the source's block index is the reader's `share_cache` param; the branch is the plan's
    assert plan.blocks[2].params.branches[0].share_cache == 0
    assert plan.blocks[2].source_branches == ((0, 0),)
    assert plan.blocks[6].params.branches[1].share_cache == 4
    assert plan.blocks[0].branch_names == ("swa", None)
    assert plan.blocks[4].branch_names == (None, "full", "r")


def test_graph_edges_run_from_branch_to_branch():
    plan = compile_text(GOOD)
    shares = {(a, b) for a, b, d in plan.edges if d["kind"] == "cache_share"}
    assert shares == {
        ("block0.0", "block2.0"),
        ("block4.1", "block5"),
        ("block4.2", "block6.0"),
        ("block4.1", "block6.1"),
        ("block0.0", "block7"),
        ("block4.2", "block8"),
    }
    assert plan.graph.nodes["block0.0"]["name"] == "swa"
    assert len(plan.order()) == len(plan.blocks)


def test_summary_and_resolved_show_the_source_branch():
    plan = compile_text(GOOD)
    assert "share_cache=[0, 0]" in plan.blocks[2].summary()["branches"]
    assert plan.blocks[5].summary()["share_cache"] == [4, 1]
    assert plan.blocks[6].resolved()["branches"][0]["share_cache"] == [4, 2]
    assert plan.blocks[8].resolved()["share_cache"] == [4, 2]


def test_graph_drawing_labels_named_and_sharing_branches(tmp_path):
    from archlab.report.graph import draw_svg

    svg = draw_svg(compile_text(GOOD))
    assert "0.0 swa: local_attention" in svg
    assert "2.0: local_attention (" in svg and "share_cache=[0, 0]" in svg
    assert "5: attention (" in svg and "share_cache=[4, 1]" in svg


def test_symbols_with_named_branches_and_patches():
    plan = compile_text("""
        symbols:
          S: {parallel: [{kind: local_attention, name: src}, ssm]}
          R: {parallel: [{kind: local_attention, share_cache: src}, ssm]}
        stack: "S- R- R-"
        at:
          -2: {parallel: [{kind: local_attention, share_cache: [2, 0]}, ssm], merge: sum}
        """)
    assert [b.cache_reads() for b in plan.blocks if b.kind == "parallel"] == [
        {},
        {0: (0, 0)},
        {0: (0, 0)},  # a chain through block 2
    ]
    assert plan.blocks[4].params.merge == "sum"


def test_a_parallel_source_in_a_plain_stack_item_by_name():
    plan = compile_text("""
        stack:
          - {parallel: [ssm, {kind: rat, name: src}], name: both}
          - {kind: rat, qk_groups: 4, share_cache: [both, 1]}
        """)
    assert plan.blocks[1].cache_reads() == {None: (0, 1)}


P = "stack[2].parallel[0].share_cache"  # the path of the reader in most cases below


@pytest.mark.parametrize(
    "stack,needle",
    [
        (  # window
            "[{parallel: [{kind: local_attention, name: s}, ssm]}, mlp,"
            " {parallel: [{kind: local_attention, window: 4, share_cache: s}, ssm]}]",
            f"{P}: cannot share the cache of branch 0 of block 0: window 4 vs 8",
        ),
        (  # kv_heads
            "[{parallel: [{kind: attention, name: s}, ssm]}, mlp,"
            " {parallel: [{kind: attention, kv_heads: 4, share_cache: s}, ssm]}]",
            f"{P}: cannot share the cache of branch 0 of block 0: kv_heads 4 vs 2",
        ),
        (  # head_dim
            "[{parallel: [{kind: attention, name: s}, ssm]}, mlp,"
            " {parallel: [{kind: attention, head_dim: 8, share_cache: s}, ssm]}]",
            f"{P}: cannot share the cache of branch 0 of block 0: head_dim 8 vs 16",
        ),
        (  # rat's geometry
            "[{parallel: [{kind: rat, name: s}, ssm]}, mlp,"
            " {parallel: [{kind: rat, chunk_size: 8, share_cache: s}, ssm]}]",
            f"{P}: cannot share the cache of branch 0 of block 0: chunk_size 8 vs 4",
        ),
        (  # a forward reference
            "[mlp, mlp, {parallel: [{kind: attention, share_cache: 3}, ssm]}, attention]",
            f"{P}: must name an earlier block (this is branch 0 of block 2; got 3)",
        ),
        (  # a forward reference by name
            "[mlp, mlp, {parallel: [{kind: attention, share_cache: s}, ssm]},"
            " {parallel: [{kind: attention, name: s}]}]",
            f"{P}: must name an earlier block (this is branch 0 of block 2; got 's')",
        ),
        (  # a branch of its own parallel block
            "[mlp, mlp, {parallel: [{kind: attention, share_cache: [2, 1]}, attention]}]",
            f"{P}: must name an earlier block (this is branch 0 of block 2; got [2, 1])",
        ),
        (  # a non-attention branch as the source
            "[{parallel: [attention, {kind: ssm, name: s}]}, mlp,"
            " {parallel: [{kind: attention, share_cache: s}]}]",
            f"{P}: cannot share the cache of branch 1 of block 0: it is a ssm branch, "
            "this one attention",
        ),
        (  # another attention kind
            "[{parallel: [{kind: local_attention, name: s}]}, mlp,"
            " {parallel: [{kind: attention, share_cache: s}]}]",
            "it is a local_attention branch, this one attention",
        ),
        (  # a parallel block, not one of its branches
            "[{parallel: [attention, ssm]}, mlp, {parallel: [{kind: attention, share_cache: 0}]}]",
            f"{P}: cannot share the cache of block 0: it is a parallel block, this one "
            "attention (name one of its branches: [0, j] or the branch's `name`)",
        ),
        (  # a branch that does not exist
            "[{parallel: [attention, ssm]}, mlp,"
            " {parallel: [{kind: attention, share_cache: [0, 5]}]}]",
            f"{P}: block 0 has 2 branches (0..1); got branch 5",
        ),
        (  # a branch of a plain block
            "[attention, mlp, {parallel: [{kind: attention, share_cache: [1, 0]}]}]",
            f"{P}: block 1 is a mlp block: it has no branch 0",
        ),
        (  # [name, j] with a branch's name
            "[{parallel: [{kind: attention, name: s}]}, mlp,"
            " {parallel: [{kind: attention, share_cache: [s, 0]}]}]",
            f"{P}: 's' names branch 0 of block 0, not a block (write share_cache: s)",
        ),
        (  # an unknown name, with a suggestion
            "[{parallel: [{kind: attention, name: swa}]}, mlp,"
            " {parallel: [{kind: attention, share_cache: sw}]}]",
            f"{P}: no block is named 'sw'; did you mean 'swa'?",
        ),
        (  # a branch kind that cannot share
            "[{parallel: [{kind: attention, name: s}]}, mlp, {parallel: [{kind: ssm,"
            " share_cache: s}]}]",
            f"{P}: `share_cache` is for attention, local_attention, rat branches, not ssm",
        ),
        (  # on the parallel block itself
            "[{parallel: [{kind: attention, name: s}]}, mlp, {parallel: [attention],"
            " share_cache: s}]",
            "stack[2].share_cache: `share_cache` belongs on a branch of a parallel block",
        ),
        (  # the value's type
            "[attention, mlp, {parallel: [{kind: attention, share_cache: [0]}]}]",
            f"{P}: must be a block index or a block name, or [block, branch] for a branch "
            "of a parallel block (got [0])",
        ),
        (
            "[attention, mlp, {parallel: [{kind: attention, share_cache: 0.5}]}]",
            f"{P}: must be a block index or a block name",
        ),
        (  # names: one namespace for blocks and branches
            "[{kind: attention, name: s}, {parallel: [{kind: attention, name: s}]}]",
            "stack[1].parallel[0].name: branch name 's' is already used by block 0",
        ),
        (
            "[{parallel: [{kind: attention, name: s}, {kind: rat, name: s}]}]",
            "stack[0].parallel[1].name: branch name 's' is already used by branch 0 of block 0",
        ),
        (
            "[{parallel: [{kind: attention, name: 2s}]}]",
            "stack[0].parallel[0].name: a branch name is an identifier",
        ),
    ],
)
def test_sharing_errors_in_parallel_blocks(stack, needle):
    assert needle in errors_of(f"stack: {stack}\n")


def test_the_schema_accepts_branch_names_and_branch_references():
    import jsonschema
    import yaml

    from archlab.lang.spec import json_schema

    data = yaml.safe_load(HEAD + GOOD)
    jsonschema.Draft202012Validator(json_schema()).validate(data)
    bad = yaml.safe_load(HEAD + "stack: [{parallel: [{kind: attention, share_cache: [0, a]}]}]")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft202012Validator(json_schema()).validate(bad)
