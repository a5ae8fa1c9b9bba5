"""`archlab cost`: tables, --json, --by-kind/--by-block, --crossover, --train-memory, and
clear errors (never a traceback) for bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import archlab
from archlab.cli import main
from archlab.cost.analytic import spec_cost
from archlab.cost.memory import train_memory

ROOT = Path(__file__).resolve().parents[2]
RAT, ATT, SWA = (str(ROOT / f"specs/paper/{n}.yaml") for n in ("rat", "attention", "rat_swa"))
TINY = str(ROOT / "specs/tiny/hybrid.yaml")


def run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(["cost", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return status, out, err


def test_one_spec_table(capsys):
    status, out, _ = run(capsys, RAT, "--seq", "4k,32k")
    assert status == 0
    for text in (
        "rat-l16-1.3b",
        "1,364,346,880 parameters",
        "T=4K",
        "T=32K",
        "train FLOPs",
        "decode bytes / token",
        "cache bytes",
        "48 MiB",
        "GFLOP",
    ):
        assert text in out


def test_default_length_is_max_seq_len(capsys):
    status, out, _ = run(capsys, TINY)
    assert status == 0 and "T=128" in out


def test_side_by_side_with_ratios(capsys):
    status, out, _ = run(capsys, ATT, RAT, "--seq", "4096")
    assert status == 0
    assert "ratios to attention-1.3b" in out and "(0.0625x)" in out  # RAT's cache: 1/16


def test_json_exact_integers(capsys):
    status, out, _ = run(capsys, ATT, RAT, "--seq", "4k,128k", "--batch", "2", "--json")
    assert status == 0
    data = json.loads(out)
    assert data["batch"] == 2 and data["seq_lens"] == [4096, 131072]
    plan = archlab.compile(RAT)
    for row, T in zip(data["specs"][1]["costs"], (4096, 131072), strict=True):
        c = spec_cost(plan, 2, T)
        assert row["train_flops"] == c.train_flops and row["cache_bytes"] == c.cache_bytes
        assert row["decode_bytes"] == c.decode_bytes and row["tokens"] == 2 * T
        assert "by_kind" not in row and "by_block" not in row
    assert "crossovers" not in data


def test_by_kind_and_by_block(capsys):
    status, out, _ = run(capsys, TINY, "--seq", "64", "--by-kind", "--by-block")
    assert status == 0
    for text in ("by kind", "by block", "local_attention", "ssm", "embedding+head", "total"):
        assert text in out
    status, out, _ = run(capsys, TINY, "--seq", "64", "--by-kind", "--by-block", "--json")
    row = json.loads(out)["specs"][0]["costs"][0]
    assert len(row["by_block"]) == 10 and set(row["by_kind"]) >= {"rat", "ssm", "mlp"}
    total = sum(b["fwd_flops"] for b in row["by_block"]) + row["head"]["fwd_flops"]
    assert total == row["fwd_flops"]


def test_crossover(capsys):
    status, out, _ = run(capsys, RAT, ATT, "--crossover", "--seq", "4k")
    assert status == 0
    assert "crossovers" in out and "from T = 547" in out and "from T = 2" in out
    status, out, _ = run(capsys, RAT, ATT, SWA, "--crossover", "--json", "--seq", "4k")
    cross = json.loads(out)["crossovers"]
    assert len(cross) == 3 * 3  # three pairs, three figures
    first = next(c for c in cross if c["metric"] == "cache_bytes")
    assert first["runs"] == [
        {"start": 1, "end": 1, "cheaper": "equal"},
        {"start": 2, "end": None, "cheaper": "rat-l16-1.3b"},
    ]


def test_train_memory(capsys):
    status, out, _ = run(capsys, RAT, "--train-memory", "--seq", "4k")
    assert status == 0 and "ESTIMATE" in out and "AdamW" in out and "assumptions" in out
    status, out, _ = run(capsys, RAT, "--train-memory", "--seq", "4k", "--json")
    mem = json.loads(out)["specs"][0]["train_memory"][0]
    m = train_memory(archlab.compile(RAT), 1, 4096)
    assert mem["estimate"] is True and mem["total"] == m.total


def test_train_memory_figures():
    plan = archlab.compile(RAT)
    m = train_memory(plan, 2, 1024)
    n = spec_cost(plan).params
    assert (m.weights, m.gradients, m.master_weights, m.optimizer) == (2 * n, 2 * n, 4 * n, 8 * n)
    assert train_memory(plan, 4, 1024).activations == 2 * m.activations
    assert train_memory(plan, 2, 2048).activations > m.activations
    tiny = train_memory(archlab.compile(TINY), 1, 16)  # float32: no master copy
    assert tiny.master_weights == 0 and tiny.total > 0


@pytest.mark.parametrize(
    "argv,message",
    [
        ([RAT, "--crossover"], "two or more"),
        ([RAT, "--seq", "4q"], "bad length"),
        ([RAT, "--seq", "0"], "bad length"),
        ([RAT, "--seq", "4k,,8k"], "bad length"),
        ([RAT, "--batch", "0"], "--batch"),
        (["no/such/spec.yaml"], "no such file"),
    ],
)
def test_usage_errors(capsys, argv, message):
    status, _, err = run(capsys, *argv)
    assert status == 2 and message in err


def test_invalid_spec(capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodel: {d_model: 64, vocab_size: 10}\nstack: [{kind: rat}]\n")
    status, _, err = run(capsys, str(bad))
    assert status == 1 and "chunk_size" in err
