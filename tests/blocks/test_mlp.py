"""mlp: every activation against its formula in float64 (outputs and every gradient),
FLOPs against FlopCounterMode, the stateless cache."""

from __future__ import annotations

import math

import pytest
import torch
from numerics import rel_err
from torch.utils.flop_counter import FlopCounterMode

from archlab.blocks import mlp
from archlab.blocks.base import ModelConfig
from archlab.blocks.mlp.layer import MLPBlock

D_MODEL = 16
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=64, max_seq_len=64, dtype="float32")
ACTIVATIONS = ["gelu", "silu", "relu2", "swiglu", "geglu"]


def build(activation: str, hidden: int | None = 24, bias: bool = True, seed: int = 0):
    """A block with every parameter randomized (so no path hides behind an init value)."""
    torch.manual_seed(seed)
    block = MLPBlock(mlp.Params(hidden=hidden, activation=activation, bias=bias), MODEL)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return block


def formula(block, x_BTD: torch.Tensor, w: dict) -> torch.Tensor:
    """The MLP written from its definition, with weights `w` by parameter name."""

    def proj(name, inp):
        return inp @ w[f"{name}.weight"].T + (w[f"{name}.bias"] if block.params.bias else 0)

    def gelu(t):
        return 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))

    def silu(t):
        return t / (1 + torch.exp(-t))

    up = proj("up_proj", x_BTD)
    act = block.params.activation
    if act == "swiglu":
        h = silu(proj("gate_proj", x_BTD)) * up
    elif act == "geglu":
        h = gelu(proj("gate_proj", x_BTD)) * up
    else:
        h = {"gelu": gelu, "silu": silu, "relu2": lambda t: t.clamp_min(0) ** 2}[act](up)
    return proj("down_proj", h)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch,seq_len", [(1, 1), (2, 7), (3, 16)])
def test_matches_formula_outputs_and_grads(activation, bias, batch, seq_len):
    block = build(activation, bias=bias, seed=seq_len)
    x = torch.randn(batch, seq_len, D_MODEL, requires_grad=True)
    g = torch.randn(batch, seq_len, D_MODEL)
    (block(x) * g).sum().backward()
    x64 = x.detach().double().requires_grad_(True)
    w64 = {n: p.detach().double().requires_grad_(True) for n, p in block.named_parameters()}
    y64 = formula(block, x64, w64)
    (y64 * g.double()).sum().backward()
    assert rel_err(block(x), y64) < 1e-5
    assert rel_err(x.grad, x64.grad) < 1e-5
    for name, p in block.named_parameters():
        assert rel_err(p.grad, w64[name].grad) < 1e-5, name


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_shapes_names_and_init(activation):
    block = MLPBlock(mlp.Params(activation=activation, bias=True), MODEL)
    gated = activation in mlp.GATED
    names = {n.split(".")[0] for n, _ in block.named_parameters()}
    assert names == ({"up_proj", "down_proj"} | ({"gate_proj"} if gated else set()))
    assert block.up_proj.weight.shape == (4 * D_MODEL, D_MODEL)  # hidden defaults to 4 d_model
    assert block.down_proj.weight.shape == (D_MODEL, 4 * D_MODEL)
    assert abs(block.up_proj.weight.std().item() - 0.02) < 0.005
    assert torch.all(block.down_proj.bias == 0)
    expected = (3 if gated else 2) * D_MODEL * 64 + (2 if gated else 1) * 64 + D_MODEL
    assert mlp.param_count(block.params, D_MODEL) == expected


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("hidden,bias", [(None, False), (24, True), (7, True)])
@pytest.mark.parametrize("batch,seq_len", [(1, 1), (2, 9)])
def test_flops_match_flop_counter(activation, hidden, bias, batch, seq_len):
    block = build(activation, hidden=hidden, bias=bias)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(torch.randn(batch, seq_len, D_MODEL))
    f = mlp.flops(block.params, D_MODEL, batch, seq_len)
    assert f.matmul == counter.get_total_flops()
    assert mlp.decode_flops(block.params, D_MODEL, batch, 100) == mlp.flops(
        block.params, D_MODEL, batch, 1
    )
    width = hidden or 4 * D_MODEL
    expected_other = batch * seq_len * width * mlp.ACTIVATION_FLOPS[activation]
    if bias:
        expected_other += batch * seq_len * ((2 if activation in mlp.GATED else 1) * width + 16)
    assert f.other == expected_other


def test_cache_is_empty_but_counts_tokens():
    block = build("swiglu")
    x = torch.randn(2, 5, D_MODEL)
    cache = block.allocate_cache(2, 8, dtype=torch.bfloat16)
    assert cache.nbytes() == 0 == mlp.cache_bytes(block.params, D_MODEL, 2, 8, 2)
    with torch.no_grad():
        y = torch.cat([block.prefill(x[:, :3], cache), block.step(x[:, 3:4], cache)], dim=1)
        assert cache.length == 4
        torch.testing.assert_close(y, block(x[:, :4]))
    assert block.select_backend("cpu") == "reference"
