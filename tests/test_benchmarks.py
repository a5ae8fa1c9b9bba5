"""The benchmark scripts run end to end (tiny sizes on the CPU), so that a GPU session
spends its time measuring, not debugging them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rat_layer_small_run(tmp_path, capsys, monkeypatch):
    # Triton decides at a kernel's import whether it is interpreted: the kernels that the
    # benchmark runs below import here first, under the interpreter, so that unsetting it
    # for this test (too slow here) does not leave them compiled-only for the tests after
    import archlab.kernels.rat.triton_ops  # noqa: F401
    import archlab.kernels.rnn.triton_rnn  # noqa: F401
    import archlab.kernels.selective_scan.triton  # noqa: F401

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "rat_layer.json"
    assert load("rat_layer").main(["--small", "--repeats", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {"command", "date", "device", "torch", "results"} <= set(doc)
    done = {(r["variant"], r["mode"]) for r in doc["results"] if r["status"] == "ok"}
    assert ("rat L=16 reference", "train") in done and ("attention sdpa", "decode") in done
    assert "rat L=16 triton" in capsys.readouterr().out  # listed as unavailable on a CPU


def test_plot_rat_layer_draws_both_json_kinds(tmp_path):
    """The efficiency figure from a rat_layer.py JSON and from the profiler's
    (`archlab profile --layer`), here the committed GPU results."""
    results = ROOT / "benchmarks" / "results" / "2026-11-28b-h200"
    plot = load("plot_rat_layer")
    for name in ("rat_layer", "figure"):
        out = tmp_path / name
        assert plot.main([str(results / f"{name}.json"), "--out", str(out)]) == 0
        assert out.with_suffix(".png").stat().st_size > 10_000
        assert "<svg" in out.with_suffix(".svg").read_text()[:2000]


def test_plot_rat_layer_names_profiler_layers():
    plot = load("plot_rat_layer")
    row = {
        "target": "layer rat(heads=16, chunk_size=64, head_dim=128)",
        "backends": {"rat": "triton"},
    }
    assert plot.variant(row) == "rat(chunk_size=64) (rat:triton)"
    row = {"target": "layer attention(heads=16, head_dim=128)", "backends": {"attention": "sdpa"}}
    assert plot.variant(row) == "attention (attention:sdpa)"
    assert plot.variant({"variant": "rat L=16 triton"}) == "rat L=16 triton"


def test_rnn_scan_small_run(tmp_path):
    out = tmp_path / "rnn_scan.json"
    args = ["--small", "--variants", "triton,reference", "--out", str(out)]
    assert load("rnn_scan").main(args) == 0
    doc = json.loads(out.read_text())
    assert {"command", "date", "device", "torch"} <= set(doc)
    for row in doc["train"]:  # both variants ran (under the interpreter), neither failed
        assert {"forward_ms", "train_ms"} <= set(row["variants"]["triton"]), row
        assert {"forward_ms", "train_ms"} <= set(row["variants"]["reference"]), row


def test_selective_scan_small_run(tmp_path):
    out = tmp_path / "selective_scan.json"
    assert load("selective_scan").main(["--small", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {"command", "date", "device", "torch", "triton"} <= set(doc)
    variants = doc["results"][0]["variants"]
    assert all("train_ms" in variants[v] for v in ("triton", "reference")), variants


def test_decode_attention_small_run(tmp_path):
    out = tmp_path / "decode_attention.json"
    assert load("decode_attention").main(["--small", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {"command", "date", "device", "torch", "triton"} <= set(doc)
    for row in doc["rows"]:  # the kernel and sdpa ran and agree with float32 attention
        for name in ("triton", "sdpa"):
            assert row["variants"][name]["rel_err"] < 1e-5, row


def test_rat_attention_tiles_says_it_needs_a_gpu(capsys):
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("the message is for machines without a GPU")
    assert load("rat_attention_tiles").main([]) == 2
    assert "CUDA GPU" in capsys.readouterr().out
