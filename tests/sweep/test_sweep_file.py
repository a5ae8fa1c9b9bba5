"""Sweep files: parsing, points (product and zip), deep-merge at dotted paths, and every
error pointing into the sweep file at the value that made the point."""

from __future__ import annotations

from pathlib import Path

import pytest

from archlab.lang.errors import SpecError
from archlab.lang.sweep_file import compile_points, key_path, load_sweep, parse_length

ROOT = Path(__file__).resolve().parents[2]
PAPER = ROOT / "specs" / "paper"


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as e:
        compile_points(load_sweep(path))
    return [str(x) for x in e.value.errors]


def test_the_example_sweep_has_15_points_in_product_order():
    sweep = load_sweep(ROOT / "sweeps" / "rat_chunks.yaml")
    plans, warnings = compile_points(sweep)
    assert len(plans) == 15 and not warnings
    assert sweep.seqs == [4096, 32768] and sweep.batch == 1
    assert sweep.base_file == str(Path("sweeps/../specs/paper/rat.yaml").resolve()) or (
        sweep.base_file.endswith("specs/paper/rat.yaml")
    )
    # the last axis varies fastest
    assert [p.label for p in sweep.points[:2]] == [
        "chunk_size=16, stack=(R-)x24",
        "chunk_size=16, stack=(R- R- R- A-)x6",
    ]
    assert plans[7].name == "#7 chunk_size=64, stack=(R- R- R- A-)x6"
    kinds = [b.kind for b in plans[7].order()]
    assert kinds.count("attention") == 6 and kinds.count("rat") == 18
    assert {b.params.chunk_size for b in plans[7].order() if b.kind == "rat"} == {64}


def test_zip_takes_values_together(tmp_path):
    path = write(
        tmp_path,
        f"base: {PAPER / 'rat.yaml'}\nzip: true\n"
        "axes:\n  defaults.rat.chunk_size: [16, 64]\n  name: [a, b]\n",
    )
    sweep = load_sweep(path)
    assert [p.values for p in sweep.points] == [
        {"defaults.rat.chunk_size": 16, "name": "a"},
        {"defaults.rat.chunk_size": 64, "name": "b"},
    ]
    plans, _ = compile_points(sweep)
    assert plans[1].name == "#1 chunk_size=64, name=b"


def test_mappings_merge_and_integer_keys(tmp_path):
    path = write(
        tmp_path,
        f"base: {PAPER / 'rat.yaml'}\n"
        "axes:\n"
        "  defaults.rat: [{chunk_size: 32}]\n"  # merged: heads etc. stay from the base
        "  at.-1: [{kind: attention, heads: 16}]\n",
    )
    sweep = load_sweep(path)
    assert sweep.axes[1].path == ("at", -1) and sweep.axes[1].label == "at.-1"
    (plan,), _ = compile_points(sweep)
    order = plan.order()
    assert order[-1].kind == "attention" and order[-2].kind == "rat"
    assert order[0].params.chunk_size == 32 and order[0].params.heads == 16


def test_key_path_keeps_string_keys_of_the_base():
    assert key_path("at.3.kind", {}) == ("at", 3, "kind")
    assert key_path("symbols.7", {"symbols": {"7": {}}}) == ("symbols", "7")


def test_lengths():
    assert [parse_length(x) for x in (4096, "4k", " 1m ", "0", -1, "x", True)] == [
        4096,
        4096,
        2**20,
        None,
        None,
        None,
        None,
    ]


def test_compile_error_points_at_the_axis_value_and_names_the_point(tmp_path):
    path = write(
        tmp_path,
        f"base: {PAPER / 'rat.yaml'}\n"
        "axes:\n"
        "  defaults.rat.chunk_size: [16, 0]\n"
        '  stack: ["(R-)x2", "(R- Q-)x2"]\n',
    )
    errors = errors_of(path)
    assert any(
        e == f"{path}:3:33: axes.defaults.rat.chunk_size[1] (point 2: chunk_size=0, "
        "stack=(R-)x2): must be >= 1 (got 0)"
        for e in errors
    ), errors
    assert any(
        e.startswith(
            f"{path}:4:21: axes.stack[1] (point 1: chunk_size=16, stack=(R- Q-)x2; and 1 more "
            "point): unknown symbol 'Q'"
        )
        for e in errors
    ), errors


def test_a_check_across_fields_is_blamed_on_its_axis(tmp_path):
    path = write(tmp_path, f"base: {PAPER / 'rat.yaml'}\naxes:\n  defaults.rat.qk_groups: [2, 3]\n")
    (error,) = errors_of(path)
    assert error.startswith(f"{path}:3:31: axes.defaults.rat.qk_groups[1] (point 1: qk_groups=3)")
    assert "must divide heads" in error


def test_sweep_file_errors(tmp_path):
    path = write(
        tmp_path,
        f"base: {PAPER / 'rat.yaml'}\n"
        "axes:\n"
        "  defaults.rat.chunk_size: [16, 16]\n"
        "  defaults.rat: [{}]\n"
        "  x: 3\n"
        "zip: true\n"
        "seq: [4k, 0]\n"
        "batch: 0\n"
        "bases: 1\n",
    )
    text = "\n".join(errors_of(path))
    for expected in (
        ":3:3: axes.defaults.rat.chunk_size: lies inside the axis defaults.rat",
        ":5:3: axes.x: must be a non-empty list of values",
        ":6:1: zip: zip takes axes of one length",
        ":7:11: seq[1]: not a sequence length",
        ":8:1: batch: must be an integer >= 1",
        ":9:1: bases: unknown key; did you mean 'base'?",
    ):
        assert expected in text, text


def test_repeated_values_and_points(tmp_path):
    base = f"base: {PAPER / 'rat.yaml'}\naxes:\n  defaults.rat.chunk_size: [16, 16]\n"
    (error,) = errors_of(write(tmp_path, base))
    assert error.endswith(
        ":3:33: axes.defaults.rat.chunk_size[1]: the same value as defaults.rat.chunk_size[0]"
    )
    zipped = base + "  stack: ['(R-)x2', '(R-)x2']\nzip: true\n"
    (error,) = errors_of(write(tmp_path, zipped))
    assert error.endswith(":5:1: zip: points 0 and 1 are the same")
    ok = base + "  stack: ['(R-)x2', '(R- A-)x1']\nzip: true\n"  # a value may repeat in zip
    assert len(compile_points(load_sweep(write(tmp_path, ok)))[0]) == 2


def test_missing_base_and_axes(tmp_path):
    text = "\n".join(errors_of(write(tmp_path, "base: nowhere.yaml\n")))
    assert "base: no spec file 'nowhere.yaml' next to the sweep file" in text
    assert "missing required key `axes`" in text
    text = "\n".join(errors_of(write(tmp_path, "[1, 2]\n")))
    assert "a sweep file is a mapping" in text


def test_relative_base_and_warnings(tmp_path):
    (tmp_path / "specs").mkdir()
    spec = (
        (PAPER / "rat_swa.yaml")
        .read_text()
        .replace("base-1.3b.yaml", str(PAPER / "base-1.3b.yaml"))
    )
    (tmp_path / "specs" / "swa.yaml").write_text(spec)
    path = write(
        tmp_path, "base: specs/swa.yaml\naxes:\n  defaults.local_attention.window: [513, 8193]\n"
    )
    plans, warnings = compile_points(load_sweep(path))
    assert len(plans) == 2
    assert [w.path for w in warnings] == [
        "axes.defaults.local_attention.window[1] (point 1: window=8193)"
    ], warnings
