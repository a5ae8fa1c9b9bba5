"""Whole models: build from specs, decode equals forward, tied weights, dtypes, backends."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch
import yaml
from numerics import rel_err

import archlab
from archlab.blocks.base import BackendUnavailable

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "specs" / "tiny"


def randomize(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))


@pytest.mark.parametrize("spec", sorted(TINY.glob("*.yaml")), ids=lambda p: p.stem)
def test_prefill_then_step_equals_forward(spec):
    torch.manual_seed(0)
    model = archlab.build(str(spec), dtype=torch.float32)
    randomize(model)
    ids = torch.randint(0, model.plan.model.vocab_size, (2, 21))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2, 21)
        outs = [model.prefill(ids[:, :9], cache)]
        for t in range(9, 21):
            outs.append(model.step(ids[:, t : t + 1], cache))
    decoded = torch.cat(outs, dim=1)
    assert cache.length == 21
    err = ((decoded - full).norm() / full.norm()).item()
    assert err < 1e-4, err


def test_training_step_reaches_every_parameter():
    model = archlab.build(str(TINY / "hybrid.yaml"), dtype=torch.float32)
    ids = torch.randint(0, 256, (2, 19))
    logits = model(ids)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.roll(-1, 1).flatten())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_tied_embeddings_share_one_tensor():
    spec = {
        "model": {"d_model": 16, "vocab_size": 50, "tie_embeddings": True, "dtype": "float32"},
        "stack": ["mlp"],
    }
    model = archlab.build(spec)
    assert model.lm_head.weight is model.embedding.weight
    plan = archlab.compile(spec)
    assert archlab.cost(plan).params == sum(p.numel() for p in model.parameters())


def test_dtype_from_spec_and_override():
    spec = {"model": {"d_model": 16, "vocab_size": 50, "dtype": "bfloat16"}, "stack": ["mlp"]}
    assert next(archlab.build(spec).parameters()).dtype == torch.bfloat16
    assert next(archlab.build(spec, dtype="float32").parameters()).dtype == torch.float32


def test_layernorm_model():
    spec = {
        "model": {"d_model": 16, "vocab_size": 50, "norm": "layernorm", "dtype": "float32"},
        "stack": ["mlp"],
    }
    model = archlab.build(spec)
    assert isinstance(model.final_norm, torch.nn.LayerNorm)
    assert archlab.cost(spec).params == sum(p.numel() for p in model.parameters())


def test_requested_backend_that_cannot_run_fails_at_build(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # else triton runs, interpreted
    spec = {
        "model": {"d_model": 32, "vocab_size": 50, "dtype": "float32"},
        "stack": [{"kind": "rat", "heads": 2, "chunk_size": 4, "backend": "triton"}],
    }
    if torch.cuda.is_available():
        pytest.skip("on a GPU machine triton may run")
    with pytest.raises(BackendUnavailable):
        archlab.build(spec)


def test_backends_are_reported():
    model = archlab.build(str(TINY / "hybrid.yaml"))
    backends = model.backends()
    assert len(backends) == len(model.blocks)
    assert {backends[i] for i, b in enumerate(model.plan.order()) if b.kind == "rat"} == {
        "reference"
    }


@pytest.mark.parametrize("spec", ["hybrid", "parallel", "shared"])
def test_a_low_precision_build_is_the_float32_build_cast(spec):
    """Weights are initialised in float32 and cast block by block: the same seed gives
    the float32 model's weights, rounded, whatever the dtype asked for."""
    plan = archlab.compile(str(TINY / f"{spec}.yaml"))
    torch.manual_seed(0)
    full = archlab.build(plan, dtype=torch.float32).state_dict()
    torch.manual_seed(0)
    low = archlab.build(plan, dtype=torch.bfloat16).state_dict()
    assert list(full) == list(low)
    for name, w in full.items():
        want = w.to(torch.bfloat16) if w.is_floating_point() else w
        assert low[name].dtype == want.dtype and torch.equal(low[name], want), name


@pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="needs CUDA or Triton's interpreter",
)
def test_rat_cache_sharing_runs_the_sharers_backend():
    """specs/tiny/shared.yaml (a RAT block sharing another's cache, with other qk groups,
    and a chain) with every rat block on `triton` equals it on `reference`: logits and every
    gradient. A sharer rebuilds the source's keys/values inside its own core."""
    spec = yaml.safe_load((TINY / "shared.yaml").read_text())
    device = "cuda" if torch.cuda.is_available() else "cpu"
    ids = torch.randint(0, spec["model"]["vocab_size"], (2, 13), device=device)
    results = []
    for backend in ("reference", "triton"):
        variant = copy.deepcopy(spec)
        variant["defaults"]["rat"]["backend"] = backend
        torch.manual_seed(0)
        model = archlab.build(archlab.compile(variant), device=device, dtype=torch.float32)
        randomize(model)
        logits = model(ids)
        (logits * torch.linspace(-1, 1, logits.shape[-1], device=device)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logits.detach(), grads))
    (ref, g_ref), (fast, g_fast) = results
    assert rel_err(fast, ref) < 1e-4
    assert g_fast.keys() == g_ref.keys() and any("gate_bias" in n for n in g_ref)
    for name in g_ref:
        assert rel_err(g_fast[name], g_ref[name]) < 1e-4, name
