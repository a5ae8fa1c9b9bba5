"""Model-level extras: the logits' soft-cap (Gemma-2) and the blocks' auxiliary losses."""

from __future__ import annotations

import torch

import archlab

BASE = {"model": {"d_model": 32, "vocab_size": 50, "dtype": "float32"}}


def test_logit_softcap_bounds_the_logits_and_is_costed():
    capped = {**BASE, "model": {**BASE["model"], "logit_softcap": 2.0}, "stack": ["mlp"]}
    plain = {**BASE, "stack": ["mlp"]}
    torch.manual_seed(0)
    a = archlab.build(capped)
    b = archlab.build(plain)
    b.load_state_dict(a.state_dict())
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        y, z = a(ids), b(ids)
    assert torch.allclose(y, 2.0 * torch.tanh(z / 2.0), atol=1e-6)
    assert y.abs().max() < 2.0
    extra = (
        archlab.cost(capped, seq_len=7).fwd_other_flops
        - archlab.cost(plain, seq_len=7).fwd_other_flops
    )
    assert extra == 3 * 7 * 50


def test_aux_loss_sums_the_experts_balance_losses():
    spec = {**BASE, "stack": [{"kind": "moe", "num_experts": 4, "top_k": 2, "hidden": 16}] * 2}
    model = archlab.build(spec)
    assert float(model.aux_loss()) == 0.0  # no forward yet
    model(torch.randint(0, 50, (2, 9))).sum().backward()
    loss = model.aux_loss()
    assert loss.requires_grad and float(loss.detach()) > 0
    dense = archlab.build({**BASE, "stack": ["mlp"]})
    dense(torch.randint(0, 50, (1, 3)))
    assert float(dense.aux_loss()) == 0.0
