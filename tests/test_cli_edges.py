"""Regression tests for the CLI's edges found by fuzzing: no traceback, no hang, a clear
message (with a suggestion where one helps), JSON under --json, warnings that never
fail a command."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import archlab
from archlab.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "tiny" / "rat.yaml"


def run(capsys, *argv) -> tuple[int, str, str]:
    try:
        status = main([str(a) for a in argv])
    except SystemExit as e:  # argparse's own usage errors
        status = e.code
    out, err = capsys.readouterr()
    return status, out, err


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_the_ssm_that_crashed_builds(tmp_path, capsys):
    spec = write(
        tmp_path / "ssm.yaml",
        "model: {d_model: 16, vocab_size: 17}\n"
        "stack: [{kind: ssm, d_state: 1, expand: 1, head_dim: 4, n_groups: 2, chunk_size: 2}]\n",
    )
    status, out, _ = run(capsys, "build", spec, "--json")
    assert status == 0 and json.loads(out)["forward"]["finite"] is True


# --- --extends-root on every command that reads specs --------------------------------------


@pytest.fixture
def child(tmp_path, monkeypatch):
    """tmp/specs/child.yaml extends ../base.yaml, outside its folder (no project here)."""
    write(
        tmp_path / "base.yaml", "model: {d_model: 16, vocab_size: 17, dtype: float32}\nstack: N\n"
    )
    monkeypatch.chdir(tmp_path)
    return write(tmp_path / "specs" / "child.yaml", "extends: ../base.yaml\nname: child\n")


@pytest.mark.parametrize(
    "command", [["validate"], ["show"], ["cost"], ["build"], ["cost", TINY, "--crossover"]]
)
def test_extends_root_lets_a_spec_reach_a_named_folder(child, capsys, command):
    status, _, err = run(capsys, *command[:1], child, *command[1:])
    assert status == 1 and "outside the folders" in err and f"{child}:1:1: extends:" in err
    status, _, err = run(
        capsys, *command[:1], child, *command[1:], "--extends-root", child.parent.parent
    )
    assert status == 0, err


@pytest.mark.parametrize("command", ["profile", "compare"])
def test_profile_and_compare_take_extends_root(child, capsys, command):
    extra = ["--measure"] if command == "compare" else []
    status, _, err = run(
        capsys, command, child, *extra, "--extends-root", child.parent.parent, "--mode", "trian"
    )
    assert status == 2 and "did you mean 'train'" in err
    status, _, err = run(capsys, command, child, "--extends-root", child.parent / "nope")
    assert status == 2 and "not a folder" in err


# --- did-you-mean for option values ----------------------------------------------------------


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["profile", TINY, "--layer", "rat:chunk=64"], "did you mean 'chunk_size'?"),
        (["profile", TINY, "--layer", "ratt:chunk_size=64"], "did you mean 'rat'?"),
        (["profile", TINY, "--mode", "trian"], "did you mean 'train'?"),
        (["profile", TINY, "--mode", "train,decod"], "did you mean 'decode'?"),
        (["compare", TINY, "--measure", "--mode", "prefil"], "did you mean 'prefill'?"),
    ],
)
def test_unknown_option_values_suggest(capsys, argv, needle):
    status, _, err = run(capsys, *argv)
    assert status == 2 and needle in err and "pydantic" not in err


# --- usage errors --------------------------------------------------------------------------


def test_full_width_digits_are_not_lengths(capsys):
    status, _, err = run(capsys, "cost", TINY, "--seq", "４")
    assert status == 2 and "bad length" in err


def test_a_directory_is_not_a_spec(tmp_path, capsys):
    status, _, err = run(capsys, "validate", tmp_path)
    assert status == 2 and "is a directory" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["validate", "--json"],
        ["cost", TINY, "--json", "--bogus"],
        ["cost", TINY, "--json", "--seq", "x"],
        ["validate", "--json", "/nonexistent.yaml"],
        ["build", TINY, "--json", "--dtype", "float64"],
    ],
)
def test_usage_errors_are_json_under_json(capsys, argv):
    status, out, _ = run(capsys, *argv)
    assert status == 2
    assert json.loads(out)["error"]


# --- warnings --------------------------------------------------------------------------------


@pytest.fixture
def long_window(tmp_path):
    return write(
        tmp_path / "w.yaml",
        "model: {d_model: 16, vocab_size: 17, max_seq_len: 8, dtype: float32}\n"
        "stack: [{kind: local_attention, heads: 2, window: 64}, "
        "{kind: rat, heads: 2, chunk_size: 16}]\n",
    )


@pytest.mark.parametrize("command", ["validate", "build", "cost"])
def test_warnings_are_printed_and_listed_but_never_fail(long_window, capsys, command):
    status, _, err = run(capsys, command, long_window)
    assert status == 0
    assert f"{long_window}:2:43: stack[0].window: warning: window (64) is larger" in err
    assert "stack[1].chunk_size: warning: chunk_size (16)" in err
    status, out, _ = run(capsys, command, long_window, "--json")
    doc = json.loads(out)
    warnings = doc[0]["warnings"] if command == "validate" else doc["warnings"]
    assert {w["path"] for w in warnings} == {"stack[0].window", "stack[1].chunk_size"}


def test_lengths_past_max_seq_len_warn(long_window, capsys):
    status, _, err = run(capsys, "cost", long_window, "--seq", "4,64")
    assert status == 0 and "warning: --seq 64 is longer than model.max_seq_len (8)" in err
    one = write(
        long_window.parent / "one.yaml",
        "model: {d_model: 8, vocab_size: 4, max_seq_len: 1}\nstack: mlp\n",
    )
    status, out, err = run(capsys, "build", one, "--seq", "8", "--json")
    assert status == 0 and json.loads(out)["forward"]["input"] == [1, 1]
    assert "--seq 8 is longer than model.max_seq_len (1)" in json.dumps(json.loads(out)["warnings"])


# --- build's size guard ------------------------------------------------------------------------


def test_build_refuses_a_model_larger_than_free_memory(tmp_path, capsys, monkeypatch):
    huge = write(
        tmp_path / "huge.yaml",
        "model: {d_model: 65536, vocab_size: 1000000}\n"
        "defaults: {attention: {heads: 64}}\nstack: '(A-)x100'\n",
    )
    start = time.perf_counter()
    status, _, err = run(capsys, "build", huge)
    assert status == 1 and "the weights need" in err and "--force" in err
    assert time.perf_counter() - start < 30
    with pytest.raises(ValueError, match="the weights need"):
        archlab.build(str(huge))
    monkeypatch.setattr("archlab.model.free_memory", lambda device: 1000)
    status, _, err = run(capsys, "build", TINY)
    assert status == 1 and "but cpu has" in err
    status, _, err = run(capsys, "build", TINY, "--force")
    assert status == 0, err


# --- crossovers give up instead of running for minutes -------------------------------------------


def test_crossover_search_is_bounded(tmp_path, capsys):
    rat = write(
        tmp_path / "rat.yaml",
        "model: {d_model: 64, vocab_size: 100}\n"
        "stack: [{kind: rat, heads: 4, chunk_size: 65536}, mlp]\n",
    )
    local = write(
        tmp_path / "local.yaml",
        "model: {d_model: 64, vocab_size: 100}\ndefaults: {local_attention: {heads: 4}}\n"
        "stack: [{kind: local_attention, window: 400000}, {kind: local_attention, "
        "window: 1600000}, {kind: local_attention, window: 3200000}, mlp]\n",
    )
    start = time.perf_counter()
    status, out, _ = run(capsys, "cost", rat, local, "--crossover", "--json")
    assert time.perf_counter() - start < 20
    assert status == 0
    cross = json.loads(out)["crossovers"]
    assert cross and all(c["gave_up"] and "gave up" in c["error"] for c in cross)
    status, out, _ = run(capsys, "cost", rat, local, "--crossover")
    assert "gave up" in out


# --- show --json lists every param, resolved ------------------------------------------------------


def test_show_json_lists_resolved_params(capsys):
    status, out, _ = run(capsys, "show", ROOT / "specs/tiny/hybrid.yaml", "--json")
    assert status == 0
    for row in json.loads(out)["blocks"]:
        assert set(row["params"]) <= set(row["resolved"])
        if row["kind"] == "rat":
            assert {"heads", "chunk_size", "qk_groups", "rope", "bias", "backend"} <= set(
                row["resolved"]
            )
