"""The RAT paper's five 1.3B specs build on the CPU at full size and run a forward, a
prefill and a decode step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archlab

PAPER = Path(__file__).resolve().parents[1] / "specs" / "paper"
NAMES = ["attention", "rat", "rnn", "attention_swa", "rat_swa"]


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_paper_spec_forward_and_decode_on_cpu(name):
    torch.manual_seed(0)
    model = archlab.build(str(PAPER / f"{name}.yaml"))
    assert next(model.parameters()).dtype == torch.bfloat16
    assert sum(p.numel() for p in model.parameters()) == archlab.cost(model.plan).params
    ids = torch.randint(0, 32000, (1, 8))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(1, 8)
        prompt = model.prefill(ids[:, :7], cache)
        last = model.step(ids[:, 7:], cache)
    assert full.shape == (1, 8, 32000) and torch.isfinite(full.float()).all()
    assert torch.isfinite(last.float()).all() and cache.length == 8
    # bf16 end to end: decode agrees with the forward to bf16 accuracy
    decoded = torch.cat([prompt, last], dim=1).float()
    err = ((decoded - full.float()).norm() / full.float().norm()).item()
    assert err < 5e-2, err
