"""moe: the routed experts against a dense float64 computation, grouped GEMMs against the
loop, capacity dropping, the load-balancing loss, decode, checks and costs against
FlopCounterMode and the module."""

from __future__ import annotations

import math

import pytest
import torch
from numerics import rel_err
from torch.utils.flop_counter import FlopCounterMode

import archlab
from archlab.blocks import moe
from archlab.blocks.base import BackendUnavailable, ModelConfig
from archlab.blocks.moe import layer as moe_layer
from archlab.blocks.moe.experts import (
    activate,
    expert_counts,
    grouped_experts,
    loop_experts,
    sort_by_expert,
)
from archlab.blocks.moe.layer import MoEBlock

D_MODEL = 16
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=64, max_seq_len=64, dtype="float32")
CASES = [
    {"num_experts": 4, "top_k": 2, "hidden": 8},
    {"num_experts": 6, "top_k": 3, "hidden": 8, "shared_experts": 1, "shared_gate": True},
    {"num_experts": 5, "top_k": 1, "hidden": 12, "activation": "gelu", "norm_topk_prob": False},
    {"num_experts": 8, "top_k": 2, "hidden": 8, "shared_experts": 2, "router": "sigmoid"},
    {"num_experts": 3, "top_k": 3, "hidden": 4, "activation": "relu2", "shared_experts": 1},
]


def build(kwargs: dict, seed: int = 0) -> MoEBlock:
    torch.manual_seed(seed)
    block = MoEBlock(moe.Params(**kwargs), MODEL)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return block


def dense(block: MoEBlock, x_BTD: torch.Tensor) -> torch.Tensor:
    """Every expert on every token in float64, weighted by the token's top-k scores."""
    p = block.params
    x = x_BTD.double().reshape(-1, D_MODEL)
    logits = x @ block.router.weight.double().T
    scores = logits.softmax(-1) if p.router == "softmax" else logits.sigmoid()
    top_w, top_i = scores.topk(p.top_k, dim=-1)
    if p.norm_topk_prob:
        top_w = top_w / top_w.sum(-1, keepdim=True)
    weight = torch.zeros_like(scores).scatter(1, top_i, top_w)  # [N, E]
    up, down = block.up_proj.double(), block.down_proj.double()
    out = torch.zeros_like(x)
    for e in range(p.num_experts):
        out += weight[:, e : e + 1] * (activate(x @ up[e].T, p.activation) @ down[e].T)
    if block.shared is not None:
        shared = block.shared.double()(x)
        if block.shared_gate is not None:
            shared = shared * torch.sigmoid(x @ block.shared_gate.weight.double().T)
        out += shared
    return out.view(x_BTD.shape)


@pytest.mark.parametrize("kwargs", CASES)
def test_matches_dense_computation(kwargs):
    block = build(kwargs, seed=1)
    x = torch.randn(2, 9, D_MODEL)
    with torch.no_grad():
        assert rel_err(block(x), dense(block, x)) < 1e-5


@pytest.mark.parametrize("activation", ["swiglu", "gelu", "geglu"])
def test_grouped_gemms_match_the_loop_outputs_and_grads(activation):
    """torch._grouped_mm runs on the CPU too (float32): the grouped path, padding and
    empty experts included, against the loop on outputs and every gradient."""
    torch.manual_seed(0)
    E, F, D = 5, 8, 16
    n_in = 2 if activation in ("swiglu", "geglu") else 1
    counts = torch.tensor([3, 0, 9, 1, 8])
    sorted_e = torch.repeat_interleave(torch.arange(E), counts)
    xs = torch.randn(int(counts.sum()), D)
    up, down = torch.randn(E, n_in * F, D), torch.randn(E, D, F)
    g = torch.randn(xs.shape[0], D)
    results = []
    for fn in (loop_experts, grouped_experts):
        leaves = [t.clone().requires_grad_(True) for t in (xs, up, down)]
        args = (counts, sorted_e) if fn is grouped_experts else (counts,)
        y = fn(leaves[0], *args, leaves[1], leaves[2], activation)
        (y * g).sum().backward()
        results.append([y.detach(), *(t.grad for t in leaves)])
    for got, want in zip(results[1], results[0], strict=True):
        assert rel_err(got, want) < 1e-5


@pytest.mark.parametrize("capacity", [None, 2, 3, 50])
def test_sort_by_expert_fixed_shapes(capacity):
    """The counts equal bincount's; the rows come in expert order, token order within one;
    with a capacity C: R = min(M, E * C) rows, each expert's first C rows kept, the rest
    of the R rows fillers of weight 0 counted in the last expert's group."""
    torch.manual_seed(0)
    E, M = 5, 24
    expert, weight = torch.randint(0, E, (M,)), torch.rand(M)
    assert torch.equal(expert_counts(expert, E), torch.bincount(expert, minlength=E))
    order, sorted_e, w, counts = sort_by_expert(expert, weight, E, capacity)
    R = M if capacity is None else min(M, E * capacity)
    assert order.shape == sorted_e.shape == w.shape == (R,) and int(counts.sum()) == R
    assert torch.equal(sorted_e, torch.repeat_interleave(torch.arange(E), counts))
    kept = [(int(i), int(e)) for i, e, x in zip(order, sorted_e, w, strict=True) if x > 0]
    rows = [[i for i in range(M) if expert[i] == e][:capacity] for e in range(E)]
    assert kept == [(i, e) for e in range(E) for i in rows[e]]
    assert torch.equal(w[w > 0], weight[order][w > 0])


def test_grouped_block_matches_the_loop_with_capacity(monkeypatch):
    """The block on `grouped` (torch's CPU fallback, float32) against the loop with a
    capacity factor (fillers in the last group): output and every gradient."""
    monkeypatch.setattr(moe_layer, "grouped_fits", lambda x, d, h: True)
    kwargs = {"num_experts": 4, "top_k": 2, "hidden": 8, "capacity_factor": 0.5}
    results, x, g = [], torch.randn(2, 10, D_MODEL), torch.randn(2, 10, D_MODEL)
    for backend in ("reference", "grouped"):
        block = build({**kwargs, "shared_experts": 1}, seed=5)
        block.backend = backend
        xb = x.clone().requires_grad_(True)
        y = block(xb)
        ((y * g).sum() + block.aux_loss).backward()
        results.append([y.detach(), xb.grad] + [p.grad for p in block.parameters()])
    for got, want in zip(results[1], results[0], strict=True):
        assert rel_err(got, want) < 1e-5


def test_grouped_backend_needs_cuda():
    block = MoEBlock(moe.Params(backend="grouped", hidden=8), MODEL)
    assert block.backend is None
    with pytest.raises(BackendUnavailable, match="CUDA"):
        block.select_backend("cpu")
    with pytest.raises(BackendUnavailable):
        block(torch.randn(1, 3, D_MODEL))
    assert MoEBlock(moe.Params(hidden=8), MODEL).backend == "reference"
    with pytest.raises(BackendUnavailable, match="triton"):
        MoEBlock(moe.Params(backend="triton"), MODEL)


def test_aux_loss_is_switch_style_and_reaches_the_router():
    block = build({"num_experts": 4, "top_k": 2, "hidden": 8, "aux_loss_coef": 0.5})
    x = torch.randn(3, 7, D_MODEL)
    assert block.aux_loss is None
    block(x)
    scores = (x.reshape(-1, D_MODEL) @ block.router.weight.T).softmax(-1)
    top = scores.topk(2, dim=-1).indices
    f = torch.bincount(top.flatten(), minlength=4).float() / (21 * 2)
    want = 0.5 * 4 * (f * scores.mean(0)).sum()
    torch.testing.assert_close(block.aux_loss, want)
    block.aux_loss.backward()
    assert block.router.weight.grad.abs().sum() > 0
    with torch.no_grad():  # an untrained router (all scores equal): the loss is coef * 1
        block.router.weight.zero_()
    block(x)
    torch.testing.assert_close(block.aux_loss, torch.tensor(0.5))


def test_capacity_drops_late_tokens_in_training_only():
    kwargs = {"num_experts": 4, "top_k": 2, "hidden": 8, "capacity_factor": 0.5}
    block = build(kwargs, seed=3)
    dropless = MoEBlock(moe.Params(**{**kwargs, "capacity_factor": None}), MODEL)
    dropless.load_state_dict(block.state_dict())
    x = torch.randn(2, 10, D_MODEL)
    N, cap = 20, math.ceil(0.5 * 20 * 2 / 4)
    with torch.no_grad():
        y_train = block(x)
        block.eval()
        torch.testing.assert_close(block(x), dropless(x))  # evaluation is dropless
        # by hand: each expert keeps its first `cap` (token, choice) pairs in token order
        xf = x.reshape(N, D_MODEL)
        top_w, top_i, _ = block.route(xf)
        seen, want = [0] * 4, torch.zeros(N, D_MODEL)
        for n in range(N):
            for j in range(2):
                e = int(top_i[n, j])
                seen[e] += 1
                if seen[e] <= cap:
                    h = activate(xf[n] @ block.up_proj[e].T, "swiglu")
                    want[n] += top_w[n, j] * (h @ block.down_proj[e].T)
    assert max(seen) > cap  # something was dropped
    assert rel_err(y_train.reshape(N, D_MODEL), want) < 1e-5


@pytest.mark.parametrize("kwargs", CASES[:2])
def test_step_equals_forward_and_prefill_with_capacity_in_eval(kwargs):
    block = build({**kwargs, "capacity_factor": 1.0}, seed=4).eval()
    x = torch.randn(2, 8, D_MODEL)
    with torch.no_grad():
        full = block(x)
        aux = block.aux_loss
        cache = block.allocate_cache(2, 8)
        outs = [block.prefill(x[:, :3], cache)]
        outs += [block.step(x[:, t : t + 1], cache) for t in range(3, 8)]
    assert cache.length == 8 and cache.nbytes() == 0
    assert block.aux_loss is aux  # prefill and step leave the forward's loss
    assert rel_err(torch.cat(outs, 1), full) < 1e-5


@pytest.mark.parametrize("kwargs", CASES)
def test_flops_match_flop_counter(kwargs):
    block = build(kwargs)
    batch, seq_len = 2, 9
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(torch.randn(batch, seq_len, D_MODEL))
    f = moe.flops(block.params, D_MODEL, batch, seq_len)
    assert f.matmul == counter.get_total_flops()
    assert moe.decode_flops(block.params, D_MODEL, batch, 100) == moe.flops(
        block.params, D_MODEL, batch, 1
    )


@pytest.mark.parametrize("kwargs", CASES)
def test_param_counts_total_and_active(kwargs):
    block = build(kwargs)
    p = block.params
    assert moe.param_count(p, D_MODEL) == sum(t.numel() for t in block.parameters())
    expert = block.up_proj[0].numel() + block.down_proj[0].numel()
    idle = (p.num_experts - p.top_k) * expert
    assert moe.active_param_count(p, D_MODEL) == moe.param_count(p, D_MODEL) - idle


def test_other_flops_constants():
    p = moe.Params(num_experts=4, top_k=2, hidden=8)
    assert moe.flops(p, D_MODEL, 1, 3).other == 3 * (5 * 4 + 2 * 2 * 16 + 5 * 2 * 8)
    gated = moe.Params(num_experts=4, top_k=2, hidden=8, shared_experts=1, shared_gate=True)
    extra = moe.flops(gated, D_MODEL, 1, 3).other - moe.flops(p, D_MODEL, 1, 3).other
    assert extra == 3 * (5 * 8 + 16 + 4 + 16)


def test_checks_defaults_and_scale():
    p = moe.Params()
    assert (p.num_experts, p.top_k, p.hidden, p.activation, p.capacity_factor) == (
        8,
        2,
        None,
        "swiglu",
        None,
    )
    assert moe.check(p, 16) == []
    bad = moe.Params(num_experts=2, top_k=3, shared_hidden=8, shared_gate=True)
    assert [f for f, _ in moe.check(bad, 16)] == ["top_k", "shared_hidden", "shared_gate"]
    assert moe.check(moe.Params(backend="triton"), 16)[0][0] == "backend"
    data = moe.Params(hidden=1408, shared_experts=1, shared_hidden=5632).model_dump()
    small = moe.scale(data, 2048, 256)
    assert (small["hidden"], small["shared_hidden"], small["num_experts"]) == (176, 704, 8)
    assert moe.check(moe.Params(**small), 256) == []


def test_spec_with_moe_symbol_costs_and_builds():
    spec = {
        "model": {"d_model": 16, "vocab_size": 32, "max_seq_len": 8, "dtype": "float32"},
        "defaults": {
            "attention": {"heads": 2},
            "moe": {"num_experts": 4, "top_k": 2, "hidden": 8},
        },
        "stack": "AE AE",
    }
    plan = archlab.compile(spec)
    assert [b.kind for b in plan.blocks] == ["attention", "moe"] * 2
    model = archlab.build(plan, device="cpu", dtype="float32")
    assert archlab.cost(plan, batch=1, seq_len=8).params == sum(
        p.numel() for p in model.parameters()
    )
    model(torch.randint(0, 32, (2, 8)))
    losses = [b.mixer.aux_loss for b in model.blocks if isinstance(b.mixer, MoEBlock)]
    assert len(losses) == 2 and all(loss.ndim == 0 for loss in losses)
