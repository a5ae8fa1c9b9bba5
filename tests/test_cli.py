"""The `archlab` command: exit codes 0/1/2, --json output, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from archlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAPER = sorted((ROOT / "specs" / "paper").glob("*.yaml"))
ALL_SPECS = sorted((ROOT / "specs").glob("**/*.yaml"))


def test_validate_all_bundled_specs(capsys):
    assert main(["validate", *map(str, ALL_SPECS)]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok (") == len(ALL_SPECS)


def test_validate_invalid_exit_1_and_json(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {d_model: 8, vocab_size: 10}\nstack: [{kind: rat, heads: 3}]\n")
    assert main(["validate", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and "chunk_size" in err
    assert main(["validate", "--json", str(bad)]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data[0]["valid"] is False and data[0]["errors"][0]["line"] == 2


def test_usage_errors_exit_2(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["validate", "--frobnicate", "x.yaml"])
    assert info.value.code == 2


def test_show_json_matches_built_parameters(capsys):
    import archlab

    for spec in PAPER:
        assert main(["show", "--json", str(spec)]) == 0
        shown = json.loads(capsys.readouterr().out)
        model = archlab.build(str(spec), device="meta")
        assert shown["parameters"] == sum(p.numel() for p in model.parameters())
        assert sum(r["parameters"] for r in shown["blocks"]) < shown["parameters"]


def test_show_table_and_graph(tmp_path, capsys):
    svg = tmp_path / "g.svg"
    assert main(["show", str(ROOT / "specs/tiny/hybrid.yaml"), "--graph", str(svg)]) == 0
    out = capsys.readouterr().out
    assert "total parameters" in out and "local_attention" in out
    text = svg.read_text()
    assert text.startswith("<svg") and text.count("<rect") == 10 + 3
    assert main(["show", str(ROOT / "specs/tiny/hybrid.yaml"), "--graph", "g.gif"]) == 2


def test_build_runs_a_forward(capsys):
    assert main(["build", "--json", str(ROOT / "specs/tiny/hybrid.yaml")]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["forward"]["finite"] is True
    assert data["forward"]["output"] == [1, 16, 256]


def test_schema_is_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) >= {"model", "stack", "defaults", "at", "symbols"}
    assert "RatBlock" in json.dumps(schema)


def test_console_script_entry_point(tmp_path):
    bad = tmp_path / "b.yaml"
    bad.write_bytes(b"\x00\xff\xfe garbage")
    proc = subprocess.run(
        [sys.executable, "-m", "archlab.cli", "validate", str(bad)], capture_output=True, text=True
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and str(bad) in proc.stderr


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["show", "specs/tiny/rat.yaml", "--graph", "/nonexistent/dir/g.svg"], "cannot write"),
        (["build", "specs/tiny/rat.yaml", "--seq", "0"], "--seq must be >= 1"),
        (["build", "specs/tiny/rat.yaml", "--device", "bogus"], "not a device"),
        (["build", "specs/tiny/rat.yaml", "--device", "mps"], "cpu or cuda"),
    ],
)
def test_bad_options_are_usage_errors(argv, needle, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    assert needle in capsys.readouterr().err


def test_schema_accepts_every_bundled_spec_and_rejects_junk(capsys):
    import jsonschema

    from archlab.lang.loader import parse_yaml

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    validator = jsonschema.Draft202012Validator(schema)
    for spec in ALL_SPECS:
        data = parse_yaml(spec.read_text(), str(spec)).data
        errors = [e.message for e in validator.iter_errors(data)]
        assert not errors, (spec, errors[:3])
    for junk in (
        {"stack": [{"kind": "rat", "chunk": 4}]},
        {"model": {"d_model": "x"}},
        {"stack": [{"parallel": []}]},
        {"stakc": "R"},
    ):
        assert list(validator.iter_errors(junk)), junk
