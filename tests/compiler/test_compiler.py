"""The compiler's passes: stack forms, defaults, `at`, symbols, expressions, extends."""

from __future__ import annotations

import textwrap

import pytest

import archlab
from archlab import SpecError

MODEL = "model: {d_model: 64, vocab_size: 100, dtype: float32}\n"
DEFAULTS = """defaults:
  rat: {heads: 4, chunk_size: 8}
  local_attention: {heads: 4, window: 8}
  attention: {heads: 4}
  ssm: {d_state: 8, head_dim: 16}
"""


def plan_of(text: str):
    return archlab.compile(MODEL + DEFAULTS + textwrap.dedent(text))


def kinds(plan) -> list[str]:
    return [b.kind for b in plan.order()]


def test_pattern_expands_with_groups_and_repeats():
    plan = plan_of('stack: "(R- L-)x3 A"\n')
    assert kinds(plan) == ["rat", "mlp", "local_attention", "mlp"] * 3 + ["attention"]
    assert [b.index for b in plan.order()] == list(range(13))


def test_every_stack_form_and_nesting():
    plan = plan_of("""
        stack:
          - rat
          - {kind: mlp, hidden: 3 * d_model}
          - {repeat: 2, stack: [{repeat: 2, stack: [rnn]}, mlp]}
          - {pattern: "(NL)x2"}
          - "M*"
        """)
    assert kinds(plan) == [
        "rat",
        "mlp",
        "rnn",
        "rnn",
        "mlp",
        "rnn",
        "rnn",
        "mlp",
        "rnn",
        "local_attention",
        "rnn",
        "local_attention",
        "ssm",
        "attention",
    ]
    assert plan.blocks[1].params.hidden == 192


def test_defaults_fill_and_block_params_override():
    plan = plan_of("stack: [rat, {kind: rat, chunk_size: 32}]\n")
    assert [b.params.chunk_size for b in plan.blocks] == [8, 32]
    assert all(b.params.heads == 4 for b in plan.blocks)


def test_symbols_rebind_and_add():
    plan = plan_of("""
        symbols:
          W: {kind: local_attention, window: 512}
          R: {kind: rat, chunk_size: 64}
        stack: "RW"
        """)
    assert plan.blocks[0].params.chunk_size == 64
    assert plan.blocks[1].params.window == 512 and plan.blocks[1].params.heads == 4


def test_at_patches_merge_or_replace_kind():
    plan = plan_of("""
        stack: "R R R"
        at:
          0: {chunk_size: 2}
          -1: {kind: attention, heads: 2}
        """)
    assert kinds(plan) == ["rat", "rat", "attention"]
    assert plan.blocks[0].params.chunk_size == 2 and plan.blocks[1].params.chunk_size == 8
    assert plan.blocks[2].params.heads == 2


def test_expressions_evaluate_and_must_be_whole():
    plan = plan_of("stack: [{kind: mlp, hidden: 'max(d_model // 3, 7) * 2 + 2 ** 3'}]\n")
    assert plan.blocks[0].params.hidden == 21 * 2 + 8
    with pytest.raises(SpecError, match="must be an integer"):
        plan_of("stack: [{kind: mlp, hidden: d_model / 3}]\n")


@pytest.mark.parametrize(
    "expr,needle",
    [
        ("__import__('os').system('true')", "not allowed"),
        ("d_model.bit_length()", "not allowed"),
        ("abs(-3)", "not allowed"),
        ("10 ** 100", "exponent too large"),
        ("d_model // 0", "division by zero"),
        ("lambda: 1", "not allowed"),
        ("'a' * 3", "only numbers"),
        ("x + 1", "unknown name 'x'"),
    ],
)
def test_expressions_evaluate_nothing_but_arithmetic(expr, needle):
    with pytest.raises(SpecError, match=needle):
        plan_of(f'stack: [{{kind: mlp, hidden: "{expr}"}}]\n')


def test_megatron_star_is_attention():
    assert kinds(plan_of('stack: "M-*-"\n')) == ["ssm", "mlp", "attention", "mlp"]


def test_extends_deep_merges_and_relative_paths(tmp_path):
    (tmp_path / "base").mkdir()
    (tmp_path / "base" / "b.yaml").write_text(MODEL + DEFAULTS + 'stack: "R"\n')
    child = tmp_path / "c.yaml"
    child.write_text(
        "extends: base/b.yaml\nmodel: {d_model: 128}\n"
        "defaults: {rat: {chunk_size: 4}}\nstack: 'RR'\n"
    )
    plan = archlab.compile(str(child))
    assert plan.model.d_model == 128 and plan.model.vocab_size == 100
    assert [b.params.chunk_size for b in plan.blocks] == [4, 4]
    assert plan.blocks[0].params.heads == 4


def test_extends_cycle_and_missing_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n" + MODEL + "stack: R\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(SpecError, match="extends cycle"):
        archlab.compile(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("extends: nope.yaml\n")
    with pytest.raises(SpecError, match="file not found: nope.yaml"):
        archlab.compile(str(tmp_path / "c.yaml"))


def test_block_limit_is_checked_before_expanding():
    with pytest.raises(SpecError, match="more than 10000 blocks"):
        plan_of('stack: "((((R)x100)x100)x100)x100"\n')


def test_dict_and_string_inputs():
    spec = {"model": {"d_model": 32, "vocab_size": 10}, "stack": [{"kind": "mlp"}]}
    assert archlab.compile(spec).blocks[0].kind == "mlp"
    assert archlab.compile(MODEL + "stack: mlp\n").blocks[0].kind == "mlp"


def test_plan_graph_is_a_chain_with_head():
    plan = plan_of('stack: "R-"\n')
    g = plan.graph
    assert list(g.successors("embedding")) == ["block0"]
    assert list(g.successors("block1")) == ["final_norm"]
    assert g.has_edge("final_norm", "lm_head")
