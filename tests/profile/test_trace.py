"""`archlab profile --trace DIR`: a kernel table per case, written after its timing, its
path in the result; a failing trace is a note, never a failed case; safe, unique labels."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import archlab
from archlab.cli import main
from archlab.measure import profile, trace
from archlab.measure.profile import ModelTarget, Result, Settings, measure
from archlab.measure.scale import Scale, scale_plan
from archlab.measure.throughput import _positions, measure_throughput

ROOT = Path(__file__).resolve().parents[2]
RAT = ROOT / "specs" / "tiny" / "rat.yaml"
CPU = torch.device("cpu")
FAST = ["--repeats", "1", "--warmup", "0", "--json"]


def profile_json(capsys, *argv) -> dict:
    assert main(["profile", str(RAT), *map(str, argv)]) == 0
    return json.loads(capsys.readouterr().out)


def test_trace_writes_one_table_per_case(tmp_path, capsys):
    out = tmp_path / "traces"
    doc = profile_json(capsys, "--mode", "train,decode", "--seq", "64", "--trace", out, *FAST)
    results = doc["results"]
    assert [r["mode"] for r in results] == ["train", "decode"]
    assert sorted(p.name for p in out.iterdir()) == [
        "tiny-rat-model-decode-B4-T64.txt",
        "tiny-rat-model-train-B1-T64.txt",
    ]
    for r in results:
        assert r["status"] == "ok" and r["timing"]["runs"] == 1 and r["tokens_per_s"] > 0
        path = Path(r["extra"]["trace"])
        assert path.parent == out.resolve() and path.is_file()
        head, table = path.read_text().split("\n", 1)
        assert head.startswith("# archlab profile trace: spec=tiny-rat target=model ")
        assert f"mode={r['mode']} B={r['batch']} T=64 backend=" in head
        assert "compiled=False cuda_graph=None" in head and "cpu_time_total" in head
        assert "aten::" in table and "CPU total" in table
        assert not any(n.startswith("trace failed") for n in r["notes"])
    assert any(n.startswith("traces: kernel tables of 2 cases in ") for n in doc["notes"])
    assert doc["settings"]["settings"]["trace_dir"] == str(out)


def test_no_trace_without_the_option(tmp_path, capsys):
    doc = profile_json(capsys, "--mode", "decode", "--seq", "16", *FAST)
    assert "trace" not in doc["results"][0]["extra"]
    assert not any(n.startswith("traces:") for n in doc["notes"])


def test_trace_of_a_layer_target(tmp_path, capsys):
    out = tmp_path / "t"
    argv = ["--layer", "rat:chunk_size=8", "--mode", "prefill", "--seq", "32", "--trace", out]
    (r,) = profile_json(capsys, *argv, *FAST)["results"]
    path = Path(r["extra"]["trace"])
    assert path.name.startswith("tiny-rat-layer_rat_") and "chunk_size_8" in path.name
    assert path.is_file()
    text = path.read_text()
    assert f"target={r['target']} mode=prefill" in text.splitlines()[0] and "aten::" in text


def test_trace_comes_after_the_timing(monkeypatch, tmp_path):
    """The profiler starts only once every timed run is done; the timing is untouched."""
    events: list[str] = []
    real_time_fn, real_profile = profile.time_fn, torch.profiler.profile

    def timed(fn, device, settings):
        events.append("timed")
        return real_time_fn(fn, device, settings)

    def traced(*args, **kwargs):
        events.append("traced")
        return real_profile(*args, **kwargs)

    monkeypatch.setattr(profile, "time_fn", timed)
    monkeypatch.setattr(torch.profiler, "profile", traced)
    target = ModelTarget(archlab.compile(RAT), CPU)
    r = measure(target, "decode", 2, 16, Settings(0, 2, 30.0, trace_dir=str(tmp_path)))
    assert r.status == "ok" and r.timing.runs == 2 and events == ["timed", "traced"]
    assert Path(r.extra["trace"]).is_file()


def test_a_failing_trace_is_a_note(monkeypatch, tmp_path, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no profiler here\nsecond line")

    monkeypatch.setattr(torch.profiler, "profile", broken)
    out = tmp_path / "t"
    doc = profile_json(capsys, "--mode", "train,decode", "--seq", "16", "--trace", out, *FAST)
    for r in doc["results"]:
        assert r["status"] == "ok" and r["timing"]["median_s"] > 0 and "trace" not in r["extra"]
        assert "trace failed: RuntimeError: no profiler here" in r["notes"]
    assert any("0 cases" in n and "2 failed" in n for n in doc["notes"])
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("sample", [0, 2])
def test_throughput_traces_one_decode_step(tmp_path, sample):
    plan, _ = scale_plan(archlab.compile(RAT), Scale(64, 128, 2), "float32")
    target = ModelTarget(plan, CPU)
    steps, real_step = [], target.step

    def counting(x, cache):
        steps.append(1)
        return real_step(x, cache)

    target.step = counting
    counts = []
    for trace_dir in (None, str(tmp_path)):
        steps.clear()
        settings = Settings(0, 2, 30.0, trace_dir=trace_dir)
        r = measure_throughput(target, 8, 6, settings, batch=2, sample=sample)
        assert r.status == "ok" and r.timing.median_s > 0
        counts.append(len(steps))
    assert counts[1] - counts[0] == trace.REPS  # one step per call, not the 6 generated
    path = Path(r.extra["trace"])
    assert path.name == "tiny-rat-model-throughput-B2-T8.txt"
    head, table = path.read_text().split("\n", 1)
    position = 8 if not sample else _positions(8, 6, sample)[0]  # the first sampled one
    assert f"one decode step at position {position} " in head and "aten::" in table


def _result(spec="s", target="model", mode="train", batch=1, seq=64, **kw) -> Result:
    return Result(spec, "f.yaml", target, mode, batch, seq, "float32", "cpu", **kw)


def test_case_labels_are_safe_and_unique():
    assert trace.case_label(_result("tiny-rat")) == "tiny-rat-model-train-B1-T64"
    labels = [
        trace.case_label(_result("rat (rat.yaml)")),
        trace.case_label(_result("rat (rat.yaml) #2")),
        trace.case_label(_result("x", "layer rat(chunk_size=64)")),
        trace.case_label(_result("x", "layer rat(chunk_size=32)")),
        trace.case_label(_result("x", "layer rat")),
        trace.case_label(_result("../../etc/passwd")),
        trace.case_label(_result("a/b", mode="decode", batch=4, seq=128)),
        trace.case_label(_result("a_b", mode="decode", batch=4, seq=128)),
        trace.case_label(_result("é" * 300)),
    ]
    assert len(set(labels)) == len(labels)
    for label in labels:
        assert label and set(label) <= set(
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."
        )
        assert not label.startswith(".") and "/" not in label and len(label) <= 140
    assert labels[2].startswith("x-layer_rat_chunk_size_64-train-B1-T64-")


def test_header_of_a_cuda_graph_replay():
    r = _result(mode="decode", cuda_graph=True, backends={"rat": "flex"})
    head = trace.header(r, "cuda_time_total")
    assert head.count("\n") == 1 and "cuda_graph=True" in head and "backend=rat=flex" in head
    assert "one graph launch" in head and "cuda_time_total" in head
    assert "graph launch" not in trace.header(_result(mode="decode"), "cpu_time_total")


def test_trace_usage(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["profile", "--help"])
    assert "--trace DIR" in capsys.readouterr().out
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main(["profile", str(RAT), "--trace", str(blocker / "sub")]) == 2
    assert "--trace" in capsys.readouterr().err
    assert main(["profile", str(RAT), "--nproc", "1", "--trace", str(tmp_path)]) == 2
    assert "--trace" in capsys.readouterr().err
