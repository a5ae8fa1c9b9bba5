"""`archlab compare --measure --parallel`: one `archlab profile` process per spec (per GPU
on CUDA; on the CPU, when asked, two at a time), their documents merged into the report
that one process would have made; a process that fails gives failed rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import archlab
from archlab.cli import main, make_parser

ROOT = Path(__file__).resolve().parents[2]
RAT, ATTENTION = (str(ROOT / "specs" / "tiny" / f"{n}.yaml") for n in ("rat", "attention"))
FAST = ["--seq", "16", "--repeats", "1", "--warmup", "0", "--mode", "train,decode"]


def test_parallel_merges_into_the_usual_report(capsys):
    assert main(["compare", RAT, ATTENTION, "--measure", "--parallel", *FAST, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    measured = doc["measured"]
    assert [(r["spec"], r["mode"]) for r in measured["results"]] == [
        ("tiny-rat", "train"),
        ("tiny-rat", "decode"),
        ("tiny-attention", "train"),
        ("tiny-attention", "decode"),
    ]
    assert all(r["status"] == "ok" for r in measured["results"])
    assert any(n.startswith("measured in parallel") for n in doc["notes"] + measured["notes"])
    assert [s["measured_as"] is not None for s in doc["specs"]] == [True, True]
    assert main(["compare", RAT, ATTENTION, "--measure", "--no-parallel", *FAST, "--json"]) == 0
    serial = json.loads(capsys.readouterr().out)
    assert set(serial) == set(doc) and set(serial["measured"]) == set(measured)


def test_a_failing_process_gives_failed_rows():
    from archlab.cli.measure_options import resolve_sizes
    from archlab.measure.parallel import run_parallel

    args = make_parser().parse_args(["compare", RAT, "--measure", *FAST])
    sizes = resolve_sizes(args, compare=True)
    plan = archlab.compile(RAT)
    results, _, _ = run_parallel(
        [plan], [RAT], ["--no-such-option"], [{}], ["train", "decode"], sizes, quiet=True
    )
    assert [(r.mode, r.status) for r in results] == [("train", "error"), ("decode", "error")]
    assert "exited with status 2" in results[0].error


@pytest.mark.parametrize(
    "extra",
    [[], ["--full-size", "--optimizer", "--batch", "2"], ["--tokens", "64", "--d-model", "64"]],
)
def test_the_processes_measure_what_the_sweep_would(extra):
    """`profile_argv` gives `profile` the sizes that `compare` resolved."""
    from archlab.cli.measure_options import profile_argv, resolve_sizes

    args = make_parser().parse_args(["compare", RAT, "--measure", *FAST[:-2], *extra])
    sizes = resolve_sizes(args, compare=True)
    argv = profile_argv(args, sizes, ["train", "decode"])
    again = resolve_sizes(make_parser().parse_args(["profile", RAT, *argv]))
    if sizes.batch:
        assert again.batch == sizes.batch
    else:
        assert again.tokens == sizes.tokens
    for field in ("seqs", "decode_batch", "scale", "dtype", "prompt", "generate", "settings"):
        assert getattr(again, field) == getattr(sizes, field), field


def test_parallel_is_off_on_the_cpu_by_default():
    from archlab.cli.compare import parallel_slots
    from archlab.cli.measure_options import resolve_sizes

    args = make_parser().parse_args(["compare", RAT, ATTENTION, "--measure"])
    sizes = resolve_sizes(args, compare=True)
    assert parallel_slots(args, sizes, 2) == []
    args.parallel = True
    assert parallel_slots(args, sizes, 2) == [{}, {}]
