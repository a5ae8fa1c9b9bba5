"""Errors: every problem in one run, each with file:line:col, path, message and hints."""

from __future__ import annotations

import pytest

import archlab
from archlab import SpecError

BAD = """\
model:
  d_model: 64
  vocab_size: 100
  dtype: float33
defaults:
  rat: {heads: 4, chunk: 16}
  local_attention: {heads: 3, window: 0}
stack:
  - "(R- L-)x2"
  - {kind: rat, heads: 4, chunk_size: 0}
  - {kind: attenton, heads: 4}
  - {pattern: "(R- Q-)x2"}
at:
  99: {chunk_size: 4}
"""


def errors_of(text: str, tmp_path) -> list:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        archlab.compile(str(path))
    return info.value.errors


def test_all_errors_reported_with_positions(tmp_path):
    errs = errors_of(BAD, tmp_path)
    by_path = {e.path: e for e in errs}
    assert by_path["model.dtype"].line == 4
    assert "float33" in by_path["model.dtype"].message
    chunk = by_path["defaults.rat.chunk"]
    assert (chunk.line, chunk.col) == (6, 19)
    assert "did you mean 'chunk_size'" in chunk.message
    kind = by_path["stack[2].kind"]
    assert kind.line == 11 and "did you mean 'attention'" in kind.message
    pattern = by_path["stack[3].pattern"]
    assert pattern.line == 12 and "unknown symbol 'Q'" in pattern.message
    # the caret sits under the Q
    lines = pattern.message.splitlines()
    assert lines[-1].index("^") == lines[-2].index("Q")
    assert all(e.file.endswith("bad.yaml") for e in errs)
    assert str(chunk).startswith(f"{chunk.file}:6:19: defaults.rat.chunk: unknown field")


def test_range_and_cross_field_checks(tmp_path):
    errs = errors_of(
        "model: {d_model: 64, vocab_size: 10}\n"
        "stack:\n"
        "  - {kind: rat, heads: 4, chunk_size: 0}\n"
        "  - {kind: rat, heads: 4, chunk_size: 4, qk_groups: 3}\n"
        "  - {kind: attention, heads: 5}\n"
        "  - {kind: attention, heads: 4, kv_heads: 3}\n"
        "  - {kind: local_attention, heads: 4, window: 0}\n",
        tmp_path,
    )
    text = "\n".join(map(str, errs))
    assert "stack[0].chunk_size: must be >= 1 (got 0)" in text
    assert "stack[1].qk_groups: must divide heads (4) (got 3)" in text
    assert "d_model (64) must be divisible by heads (5)" in text
    assert "stack[3].kv_heads: must divide heads (4) (got 3)" in text
    assert "stack[4].window: must be >= 1 (got 0)" in text


def test_at_index_out_of_range(tmp_path):
    errs = errors_of(
        "model: {d_model: 8, vocab_size: 10}\nstack: [mlp]\nat: {3: {hidden: 2}}\n", tmp_path
    )
    assert "index 3 is out of range: the stack has 1 blocks" in errs[0].message
    assert errs[0].line == 3


@pytest.mark.parametrize(
    "text,needle",
    [
        ("model: {d_model: 8, vocab_size: 10}\nstack: [mlp\n", "YAML syntax error"),
        ("- just\n- a list\n", "must be a mapping"),
        ("model: {d_model: 8, vocab_size: 10}\n", "missing required key `stack`"),
        ("model: {d_model: 8, vocab_size: 10}\nstack: [mlp]\nstak: 1\n", "did you mean 'stack'"),
        ("archlab: 2\nmodel: {d_model: 8, vocab_size: 10}\nstack: [mlp]\n", "version 2"),
        ("model: {d_model: 8, vocab_size: 10}\nstack: '(R-'\n", "unclosed '('"),
        ("model: {d_model: 8, vocab_size: 10}\nstack: '(-)x0'\n", "repeat count must be >= 1"),
        ("model: {d_model: 8, vocab_size: 10}\nstack: []\n", "the stack is empty"),
        (
            "model: {d_model: 8, vocab_size: 10}\nstack: [{repeat: 0, stack: [mlp]}]\n",
            "must be an integer from 1",
        ),
        ("model: {d_model: 8, vocab_size: 10}\nstack: [mlp]\na: 1\na: 2\n", "duplicate key"),
        ("model: !!python/object/apply:os.system ['true']\nstack: [mlp]\n", "unsupported YAML tag"),
    ],
)
def test_bad_input_messages(text, needle, tmp_path):
    errs = errors_of(text, tmp_path)
    assert any(needle in str(e) for e in errs), [str(e) for e in errs]


@pytest.mark.parametrize(
    "block,needle",
    [
        ("{kind: attention, heads: 4, backend: triton}", "attention has no backend 'triton'"),
        (
            "{kind: local_attention, heads: 4, window: 4, backend: triton}",
            "local_attention has no backend 'triton'",
        ),
        ("{kind: rat, heads: 4, chunk_size: 4, backend: sdpa}", "rat has no backend 'sdpa'"),
        ("{kind: rnn, backend: flex}", "rnn has no backend 'flex'"),
    ],
)
def test_backend_the_kind_does_not_have(block, needle, tmp_path):
    errs = errors_of(f"model: {{d_model: 64, vocab_size: 10}}\nstack: [{block}]\n", tmp_path)
    assert errs[0].path == "stack[0].backend" and needle in errs[0].message


M = "model: {d_model: 64, vocab_size: 10}\n"


@pytest.mark.parametrize(
    "text,needle",
    [
        (M + "stack: [{kind: rat, heads: true, chunk_size: 4}]\n", "must be an integer"),
        ("model: {d_model: '64', vocab_size: 10}\nstack: [mlp]\n", "must be an integer"),
        (
            "model: {d_model: 64, vocab_size: 10, tie_embeddings: 'yes'}\nstack: [mlp]\n",
            "must be true or false",
        ),
        (M + "stack: [{kind: mlp, hidden: '1e15 ** 64'}]\n", "value out of range"),
        (M + "defaults: []\nstack: [mlp]\n", "must be a mapping"),
        (M + "symbols: ''\nstack: [mlp]\n", "must be a mapping"),
        (M + "at: false\nstack: [mlp]\n", "must be a mapping"),
        (
            M + "defaults: {attention: {heads: 4, share_cache: 0}}\nstack: A\n",
            "`share_cache` belongs on a block, not in defaults",
        ),
        (
            M + "stack: [mlp, mlp]\nat: {0: {hidden: 8}, -2: {hidden: 16}}\n",
            "block 0 is already patched by at[0]",
        ),
        (M + "stack: [{parallel: [{kind: rnn, name: 1n}]}]\n", "a branch name is an identifier"),
        (M + "stack: [{pattern: 5}]\n", "a pattern item has only the key `pattern`, and it is"),
    ],
)
def test_review_cases(text, needle, tmp_path):
    errs = errors_of(text, tmp_path)
    assert any(needle in str(e) for e in errs), [str(e) for e in errs]


def test_yaml_merge_keys_override_and_plain_floats():
    plan = archlab.compile(
        "model: {d_model: 64, vocab_size: 10, norm_eps: 1e-5}\n"
        "symbols: {V: &r {kind: rat, heads: 4, chunk_size: 8}, W: {<<: *r, chunk_size: 64}}\n"
        'stack: "(V)x 2 W"\n'
    )
    assert plan.model.norm_eps == 1e-5
    assert [b.params.chunk_size for b in plan.blocks] == [8, 8, 64]


def test_alias_bombs_and_long_yaml_strings():
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    for i in range(8):
        bomb += f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]\n"
    with pytest.raises(SpecError, match="expands to more than"):
        archlab.compile(bomb + M + "stack: [mlp]\n")
    long = "{model: {d_model: 8, vocab_size: 4}, stack: [mlp], description: '" + "a" * 300 + "'}"
    assert archlab.compile(long).description == "a" * 300


def test_a_bad_stack_item_does_not_hide_the_others(tmp_path):
    errs = errors_of(
        M + 'stack:\n  - "(R Q)x2"\n  - {kind: rat, heads: 4, chunk_size: 0}\n'
        "  - {kind: mlp, hidden: -1}\n  - {parallel: [rnn], merge: max}\nat: {two: {}}\n",
        tmp_path,
    )
    paths = {e.path for e in errs}
    assert {
        "stack[0]",
        "stack[1].chunk_size",
        "stack[2].hidden",
        "stack[3].merge",
        "at.two",
    } <= paths, paths
