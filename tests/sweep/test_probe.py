"""The recall probe: a tiny attention model learns MQAR on the CPU (accuracy well above
chance in under a minute); the probe command and its options."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

import archlab
from archlab.measure.mqar import MQAR
from archlab.measure.probe import (
    CPU_PROBE,
    ProbeSettings,
    probe_plan,
    reinit_linear_weights,
    run_probe,
)
from archlab.model import build_model

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_attention_learns_mqar_on_the_cpu(one_thread):
    """2 attention + 2 MLP blocks at d_model 64, vocabulary 64, 4 pairs in 32 tokens, 600
    AdamW steps (the CPU defaults): held-out recall far above chance (25%)."""
    plan = archlab.compile(ROOT / "specs" / "tiny" / "attention.yaml")
    start = time.perf_counter()
    r = run_probe(plan, CPU_PROBE)
    seconds = time.perf_counter() - start
    curve = [(e["step"], round(e["accuracy"], 3)) for e in r["eval"]]
    print(f"probe: {seconds:.1f} s, accuracy {r['accuracy']:.3f}, curve {curve}")
    assert r["model"].startswith("d_model 64, heads 2x32, vocab 64, 4 of 8 blocks")
    assert r["chance"] == 0.25 and len(r["loss"]) == CPU_PROBE.steps
    assert r["accuracy"] >= 0.6, curve  # seen: 0.97 (seed 0)
    assert r["loss"][-1] < r["loss"][0] / 3
    assert seconds < 60


def test_probe_plan_takes_the_probe_width_and_vocabulary():
    plan = archlab.compile(ROOT / "specs" / "paper" / "rat.yaml")
    small, text = probe_plan(plan, ProbeSettings(MQAR(100, 4, 48), d_model=64))
    assert small.model.d_model == 64 and small.model.vocab_size == 100
    assert small.model.max_seq_len == 48 and small.model.dtype == "float32"
    assert (
        text == "d_model 64, heads 1x64, vocab 100, 4 of 48 blocks (2 of 24 units of R-), float32"
    )
    assert {b.params.chunk_size for b in small.order() if b.kind == "rat"} == {16}


def test_every_linear_weight_is_redrawn_alike_and_nothing_else():
    """The probe's `torch` init: each nn.Linear weight of every kind gets PyTorch's default
    (std 1 / sqrt(3 fan_in)); biases, embeddings, norms and RAT's gate bias stay as built."""
    plan = archlab.compile(ROOT / "specs" / "paper" / "rat.yaml")
    small, _ = probe_plan(plan, ProbeSettings(MQAR(256, 4, 32), d_model=128))
    torch.manual_seed(0)
    model = build_model(small, dtype="float32")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert reinit_linear_weights(model) == len(linears) > 4
    for name, p in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if owner in linears and leaf == "weight":
            assert not torch.equal(p, before[name]), name
            expected = (3 * p.shape[1]) ** -0.5
            assert 0.8 * expected < p.std().item() < 1.2 * expected, (name, p.std().item())
        else:
            assert torch.equal(p, before[name]), name


def test_the_torch_init_is_taken_on_request(one_thread, monkeypatch):
    import archlab.measure.probe as probe_module

    drawn = []
    monkeypatch.setattr(probe_module, "reinit_linear_weights", lambda m: drawn.append(m) or 0)
    plan = archlab.compile(ROOT / "specs" / "tiny" / "attention.yaml")
    settings = ProbeSettings(MQAR(64, 4, 32), steps=1, eval_sequences=8)
    assert settings.init == "blocks" and run_probe(plan, settings) and not drawn
    settings = ProbeSettings(MQAR(64, 4, 32), steps=1, eval_sequences=8, init="torch")
    assert run_probe(plan, settings)["settings"]["init"] == "torch" and len(drawn) == 1
    problems = ProbeSettings(init="xavier").problems()
    assert problems == ["init is one of blocks, torch (got 'xavier')"]


def test_settings_are_checked():
    assert ProbeSettings(steps=0).problems() == ["steps must be >= 1 (got 0)"]
    with pytest.raises(ValueError, match="pairs"):
        run_probe(
            archlab.compile(ROOT / "specs" / "tiny" / "rat.yaml"), ProbeSettings(MQAR(64, 20, 32))
        )


def test_probe_command(archlab_main, tmp_path, capsys, one_thread):
    spec = str(ROOT / "specs" / "tiny" / "rat.yaml")
    code = archlab_main(
        ["probe", "mqar", spec, "--steps", "20", "--eval", "64", "--json", "--out", str(tmp_path)]
    )
    assert code == 0
    doc = json.loads(capsys.readouterr().out)
    (r,) = doc["results"]
    assert r["spec"] == "tiny-rat" and r["steps"] == 20 and 0 <= r["accuracy"] <= 1
    assert r["settings"]["task"] == {
        "vocab": 64, "pairs": 4, "seq": 32, "power_a": 0.01, "random_non_queries": True
    }  # fmt: skip
    assert (tmp_path / "probe.json").is_file()
    assert (tmp_path / "probe.png").is_file() == ("probe.png" in doc["files"])


def test_probe_command_refuses_bad_settings(archlab_main, capsys):
    spec = str(ROOT / "specs" / "tiny" / "rat.yaml")
    assert archlab_main(["probe", "mqar", spec, "--pairs", "9", "--seq", "32"]) == 2
    assert "pairs need a sequence of at least 36 tokens" in capsys.readouterr().err


def test_query_logits_give_the_loss_over_every_position():
    """The probe's loss from the query positions' logits alone equals cross-entropy over
    the whole sequence's logits with the other positions ignored, value and gradients."""
    import torch.nn.functional as F

    from archlab.measure.mqar import IGNORE, generator, make_batch
    from archlab.measure.probe import query_logits

    torch.manual_seed(3)
    plan = archlab.compile(ROOT / "specs" / "tiny" / "attention.yaml")
    small, _ = probe_plan(plan, CPU_PROBE)
    model = build_model(small, dtype="float32")
    task = MQAR(vocab=64, pairs=4, seq=32)
    x, y = make_batch(task, 8, generator(5))
    full = model(x)
    want = F.cross_entropy(full.flatten(0, 1), y.flatten(), ignore_index=IGNORE)
    want_grads = torch.autograd.grad(want, list(model.parameters()))
    logits, labels = query_logits(model, x, y, task.pairs)
    assert logits.shape == (8, 4, 64) and labels.shape == (8, 4)
    assert (labels != IGNORE).all()
    got = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
    got_grads = torch.autograd.grad(got, list(model.parameters()))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
