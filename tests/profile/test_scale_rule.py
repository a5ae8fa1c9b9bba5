"""The depth rule of scaled-down copies (`archlab.measure.scale.kept_blocks`): whole
repeating units, every patched unit and every cache source kept, every kind kept, one
line that says so. Compile and scale only (no timing): fast."""

from __future__ import annotations

from pathlib import Path

import pytest

import archlab
from archlab.measure.scale import Scale, kept_blocks, repeating_unit, scale_plan

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "specs" / "paper"
HEAD = """archlab: 1
name: {name}
model: {{d_model: 1024, vocab_size: 32000, max_seq_len: 4096, dtype: bfloat16}}
defaults:
  attention: {{heads: 8, kv_heads: 2}}
  local_attention: {{heads: 8, window: 513}}
  rat: {{heads: 8, chunk_size: 16}}
  ssm: {{d_state: 64, head_dim: 64, chunk_size: 64}}
  mlp: {{hidden: 4 * d_model}}
"""


def spec(tmp_path: Path, name: str, body: str):
    path = tmp_path / f"{name}.yaml"
    path.write_text(HEAD.format(name=name) + body)
    return archlab.compile(path)


def kinds(plan) -> list[str]:
    return [b.kind for b in plan.order()]


def test_jamba_like_keeps_one_unit_with_its_attention(tmp_path):
    plan = spec(tmp_path, "jamba", 'stack: "(M- M- M- A-)x4"\n')  # attention 1 in 8, 8 x 4
    small, text = scale_plan(plan, Scale(), "float32")
    assert kinds(small) == ["ssm", "mlp"] * 3 + ["attention", "mlp"]
    assert "8 of 32 blocks (1 of 4 units of M- M- M- A-)" in text
    assert set(small.kinds()) == set(plan.kinds())


NEMOTRON = "M- M- M- M* - M- M- M* - M- M- M* - M- M* -"  # 28 blocks, no repeating unit


def test_irregular_nemotron_like_stacks_keep_their_attention(tmp_path):
    plan = spec(tmp_path, "nemotron", f'stack: "{NEMOTRON}"\n')
    assert len(plan.blocks) == 28 and plan.kinds()["attention"] == 4
    small, text = scale_plan(plan, Scale(), "float32")
    assert kinds(small) == kinds(plan) and "28 of 28 blocks (no repeating unit)" in text
    almost = spec(tmp_path, "almost", 'stack: "M- M- M- M* - M- M- M- M- M* - M- M- M* - M"\n')
    small, text = scale_plan(almost, Scale(), "float32")  # 2 units of 11, 6 blocks after
    assert set(small.kinds()) == set(almost.kinds()) and small.kinds()["attention"] == 2
    assert "17 of 28 blocks (1 of 2 units of M- M- M- MA- M-, the 6 blocks after" in text
    regular = archlab.compile(ROOT / "specs" / "examples" / "megatron_ssm_hybrid.yaml")
    small, text = scale_plan(regular, Scale(), "float32")
    assert small.kinds()["attention"] == 1 and "9 of 27 blocks (1 of 3 units of" in text


def test_rat_swa_with_a_full_attention_patch_keeps_the_patch(tmp_path):
    path = tmp_path / "rat_swa_full.yaml"
    path.write_text(f"extends: {PAPER / 'rat_swa.yaml'}\nat:\n  -2: {{kind: attention}}\n")
    plan = archlab.compile(path)
    small, text = scale_plan(plan, Scale(), "float32")
    assert text == (
        "d_model 256, heads 2x128, vocab 4096, 8 of 48 blocks "
        "(2 of 12 units of R- L-, the patched unit kept), float32"
    )
    assert kinds(small) == [
        "rat",
        "mlp",
        "local_attention",
        "mlp",
        "rat",
        "mlp",
        "attention",
        "mlp",
    ]
    assert [b.index for b in small.order()] == list(range(8))
    archlab.build(small)  # it builds


def test_a_cache_source_outside_the_kept_units_is_kept(tmp_path):
    body = """stack:
  - "(A-)x5"
  - {kind: attention, name: src}
  - mlp
  - "(A-)x4"
  - {kind: attention, share_cache: src}
  - mlp
"""
    plan = spec(tmp_path, "shared", body)
    small, text = scale_plan(plan, Scale(), "float32")
    assert "7 of 22 blocks (3 of 11 units of A-, the patched unit kept, 1 cache source" in text
    sharer = next(b for b in small.order() if b.shares_cache_of is not None)
    assert sharer.index == 5 and sharer.shares_cache_of == 4
    assert small.order()[4].kind == "attention"
    archlab.build(small)  # the sharer reads a source that exists


def test_no_repeating_unit_or_min_blocks_0_keeps_everything(tmp_path):
    plan = spec(tmp_path, "mixed", 'stack: "R- L- N- M- A-"\n')
    assert len(kept_blocks(plan, 4).keep) == 10
    plan = archlab.compile(PAPER / "rat.yaml")
    assert kept_blocks(plan, 0).keep == list(range(48))
    assert kept_blocks(plan, 4).text == "4 of 48 blocks (2 of 24 units of R-)"


def test_repeating_unit():
    assert repeating_unit(list("ab" * 6)) == (2, ("a", "b"))
    assert repeating_unit(list("abcd" * 3 + "abce")) == (4, tuple("abcd"))  # 3 of 4 units
    assert repeating_unit(list("ab" * 5 + "a")) == (2, ("a", "b"))  # a tail after the units
    assert repeating_unit(list("abcde")) is None
    assert repeating_unit(list("aaab" + "aaaa" * 2)) == (1, ("a",))  # 11 of 12 blocks
    assert repeating_unit(list("abababac" * 4)) == (8, tuple("abababac"))  # no unit differs


def test_tail_blocks_are_kept(tmp_path):
    plan = spec(tmp_path, "tail", 'stack: "(A-)x6 R"\n')
    small, text = scale_plan(plan, Scale(), "float32")
    assert kinds(small) == ["attention", "mlp", "attention", "mlp", "rat"]
    assert "the 1 block after the last unit kept" in text


def _variants(plan, min_blocks: int) -> set:
    small, _ = scale_plan(plan, Scale(min_blocks=min_blocks), "float32")
    return {(b.kind, b.params.model_dump_json(exclude={"share_cache"})) for b in small.blocks}


EXAMPLES = sorted((ROOT / "specs").glob("*/*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[f"{p.parent.name}/{p.stem}" for p in EXAMPLES])
def test_every_kind_and_every_block_variant_survives(path):
    """Scaled with the default depth, a spec keeps every kind and every distinct block
    (a patch is one), exactly as the copy that keeps every block."""
    plan = archlab.compile(path)
    if path.name == "base-1.3b.yaml":
        pytest.skip("a base file")
    small, _ = scale_plan(plan, Scale(), "float32")
    assert set(small.kinds()) == set(plan.kinds())
    assert _variants(plan, 4) == _variants(plan, 0)
    for b in small.blocks:  # every sharer reads a kept block of its own kind
        if b.shares_cache_of is not None:
            assert small.blocks[b.shares_cache_of].kind == b.kind
