"""`--compile`: whole models timed under torch.compile (inductor's C++ backend on the CPU).
The compile happens before any timed run and is reported apart (`compile_s`); the compiled
train step computes the eager loss and gradients; a compile that fails is a note and an
eager timing, never a traceback; the default is on for CUDA only.

Compiling is slow on the CPU (about 20 s of inductor's one-time setup in a fresh cache,
then seconds per graph): one tiny model (d_model 32, one attention + MLP unit), one T."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import archlab
from archlab.cli import main
from archlab.cli.measure_options import compile_default, resolve_sizes
from archlab.measure import compiled
from archlab.measure.scale import Scale, scale_plan
from archlab.measure.targets import ModelTarget

TINY = Path(__file__).resolve().parents[2] / "specs" / "tiny"
SPEC = str(TINY / "attention.yaml")
SMALL = ["--d-model", "32", "--vocab", "64", "--blocks", "1", "--seq", "16", "--batch", "1"]
FAST = [*SMALL, "--decode-batch", "1", "--repeats", "1", "--warmup", "0", "--threads", "1"]


def profile_json(capsys, *argv) -> dict:
    assert main(["profile", SPEC, *argv, *FAST, "--json"]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return json.loads(out)


def test_compiled_modes_report_compile_time_apart(capsys):
    """Every mode runs compiled; the calls that compiled are timed apart (`compile_s`),
    longer than any timed run; the table has a compile column."""
    doc = profile_json(capsys, "--compile", "--mode", "train,prefill,decode")
    assert doc["settings"]["settings"]["compile"] is True
    for r in doc["results"]:
        assert r["status"] == "ok", r["error"]
        assert r["compiled"] is True and r["compile_s"] > r["timing"]["max_s"], r
        assert r["extra"]["graph_breaks"] == 0 and r["extra"]["graphs"] >= 1
    assert any(n.startswith("torch.compile: 3 of 3") for n in doc["notes"])


def test_compiled_train_step_computes_the_eager_loss():
    """The callable that `--compile` times: the model's loss under compiled.compile_fn
    (the shapes of the profile above: inductor's cache makes this quick after it)."""
    plan, _ = scale_plan(archlab.compile(SPEC), Scale(32, 64, 1), "float32")
    target = ModelTarget(plan, torch.device("cpu"))
    loss, args = target.loss_fn(1, 16)
    compiled.fresh()
    fast = compiled.compile_fn(loss)
    graphs = counters["stats"]["unique_graphs"]
    got, want = fast(*args), loss(*args)
    assert counters["stats"]["unique_graphs"] > graphs  # it did compile
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    got.backward()
    grads = {n: p.grad.clone() for n, p in target.module.named_parameters()}
    target.module.zero_grad(set_to_none=True)
    want.backward()
    for name, p in target.module.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    compiled.fresh()


def test_a_failed_compile_is_timed_eagerly_with_a_note(capsys, monkeypatch):
    def backend(gm, example_inputs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(compiled, "BACKEND", backend)
    doc = profile_json(capsys, "--compile", "--mode", "prefill")
    (r,) = doc["results"]
    assert r["status"] == "ok" and r["compiled"] is False and r["compile_s"] is None
    assert r["timing"]["runs"] == 1
    assert "compile failed: BackendCompilerFailed" in r["notes"][0]
    assert "no compiler here; timed eagerly" in r["notes"][0]
    assert any("1 failed to compile" in n for n in doc["notes"])
    assert main(["profile", SPEC, "--compile", "--mode", "prefill", *FAST]) == 0
    out = capsys.readouterr().out
    row = next(ln for ln in out.splitlines() if ln.startswith("tiny-attention"))
    assert "compile failed" in out and row.endswith("failed")  # the compile column


def test_no_compile_runs_eagerly(capsys):
    doc = profile_json(capsys, "--no-compile", "--mode", "decode")
    assert doc["results"][0]["compiled"] is False and doc["results"][0]["compile_s"] is None
    assert not any("compile" in n for n in doc["notes"] + doc["results"][0]["notes"])


@pytest.mark.parametrize(
    ("flag", "device", "on"),
    [(None, "cuda", True), (None, "cpu", False), (False, "cuda", False), (True, "cpu", True)],
)
def test_compile_default_is_on_for_cuda_only(flag, device, on):
    assert compile_default(flag, device) is on


def test_no_compile_reaches_the_settings():
    """--compile / --no-compile as parsed: what the sweep's Settings hold (CPU here)."""
    from archlab.cli import make_parser

    for argv, on in (([], False), (["--compile"], True), (["--no-compile"], False)):
        args = make_parser().parse_args(["profile", SPEC, *argv])
        assert resolve_sizes(args).settings.compile is on


def test_nproc_refuses_compile(capsys):
    assert main(["profile", SPEC, "--nproc", "1", "--compile"]) == 2
    err = capsys.readouterr().err
    assert "does not take --compile" in err and "Traceback" not in err
