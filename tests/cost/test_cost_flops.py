"""Matmul FLOPs against torch's FlopCounterMode on the reference path, and the masked
attention-type products against brute-force counts of the unmasked entries."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import archlab
from archlab.blocks.base import ModelConfig
from archlab.blocks.registry import kind as block_kind
from archlab.blocks.ssm import SSMSizes
from archlab.cost.analytic import spec_cost

D = 32
PROJECTIONS = {"in_proj", "out_proj", "q_proj", "k_proj", "v_proj", "o_proj"}


def causal_window_pairs(T: int, window: int | None) -> int:
    """Brute force: entries (i, j) with j <= i (and i - j < window) of a T x T mask."""
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    mask = j <= i
    if window is not None:
        mask &= i - j < window
    return int(mask.sum())


def chunk_causal_pairs(T: int, L: int) -> int:
    """Brute force over a T x T mask: query t sees key j when j == t, or j ends a chunk
    (j % L == L - 1) of an earlier chunk than t's."""
    i = torch.arange(T)[:, None]
    j = torch.arange(T)[None, :]
    mask = (j == i) | ((j % L == L - 1) & (j // L < i // L))
    return int(mask.sum())


def same_chunk_pairs(T: int, L: int) -> int:
    """Brute force: entries (i, j) of a T x T grid in the same chunk of L."""
    c = torch.arange(T) // L
    return int((c[:, None] == c[None, :]).sum())


@pytest.mark.parametrize("T", [1, 2, 5, 16, 33, 100])
@pytest.mark.parametrize("window", [None, 1, 3, 16, 50])
def test_visible_pairs_brute_force(T, window):
    from archlab.blocks.attention import visible_pairs

    assert visible_pairs(T, window) == causal_window_pairs(T, window)


@pytest.mark.parametrize("T", [1, 3, 16, 17, 40, 97])
@pytest.mark.parametrize("L", [1, 2, 5, 16, 200])
def test_rat_scored_pairs_brute_force(T, L):
    from archlab.kernels.rat.shapes import scored_pairs

    assert scored_pairs(T, L) == chunk_causal_pairs(T, L)


def counted(module: torch.nn.Module, *args, backward: bool = False) -> FlopCounterMode:
    with FlopCounterMode(display=False) as fc:
        out = module(*args)
        if backward:
            out.float().square().mean().backward()
    return fc


def test_whole_mlp_model_forward_and_train_exact():
    spec = {
        "name": "mlp-only",
        "model": {"d_model": 48, "vocab_size": 100, "dtype": "float32"},
        "stack": [
            {"kind": "mlp"},
            {"kind": "mlp", "activation": "swiglu", "hidden": 40},
            {"kind": "mlp", "activation": "relu2", "bias": True},
        ],
    }
    plan = archlab.compile(spec)
    model = archlab.build(plan, device="cpu")
    B, T = 2, 13
    ids = torch.randint(0, 100, (B, T))
    c = spec_cost(plan, B, T)
    assert counted(model, ids).get_total_flops() == c.fwd_flops
    assert counted(model, ids, backward=True).get_total_flops() == c.train_flops


def _block(kind: str, params: dict, T: int):
    mod = block_kind(kind)
    p = mod.params(kind=kind, **params)
    model = ModelConfig(d_model=D, vocab_size=64, max_seq_len=max(T, 4), dtype="float32")
    torch.manual_seed(0)
    block = mod.build(p, model)
    block.select_backend(torch.device("cpu"))
    return mod, p, block


def _projection_flops(fc: FlopCounterMode) -> int:
    counts = fc.get_flop_counts()
    return sum(
        sum(ops.values()) for name, ops in counts.items() if name.split(".")[-1] in PROJECTIONS
    )


ATTENTION_CASES = [
    ("attention", {"heads": 4}, None),
    ("attention", {"heads": 4, "kv_heads": 2, "head_dim": 6, "bias": True}, None),
    ("local_attention", {"heads": 4, "window": 5}, 5),
    ("local_attention", {"heads": 2, "kv_heads": 1, "window": 1}, 1),
]


@pytest.mark.parametrize("kind,params,window", ATTENTION_CASES)
@pytest.mark.parametrize("B,T", [(1, 7), (2, 20)])
def test_attention_flops(kind, params, window, B, T):
    mod, p, block = _block(kind, {**params, "backend": "reference"}, T)
    H, dh = p.heads, p.head_dim or D // p.heads
    ours = mod.flops(p, D, B, T).matmul
    fc = counted(block, torch.randn(B, T, D))
    products = 4 * B * H * dh * causal_window_pairs(T, window)
    assert ours - products == _projection_flops(fc)
    # the reference computes the dense T x T products: the rest of its count
    assert fc.get_total_flops() - _projection_flops(fc) == 4 * B * H * dh * T * T


@pytest.mark.parametrize(
    "params",
    [{"heads": 4, "chunk_size": 4}, {"heads": 2, "chunk_size": 3, "qk_groups": 1, "bias": True}],
)
@pytest.mark.parametrize("B,T", [(1, 9), (2, 16)])
def test_rat_flops(params, B, T):
    mod, p, block = _block("rat", {**params, "backend": "reference"}, T)
    ours = mod.flops(p, D, B, T).matmul
    fc = counted(block, torch.randn(B, T, D))
    H, dh = p.heads, D // p.heads
    assert ours - 4 * B * H * dh * chunk_causal_pairs(T, p.chunk_size) == _projection_flops(fc)


@pytest.mark.parametrize("bias", [False, True])
def test_rnn_flops(bias):
    mod, p, block = _block("rnn", {"bias": bias}, 12)
    fc = counted(block, torch.randn(2, 12, D))
    assert mod.flops(p, D, 2, 12).matmul == fc.get_total_flops() == _projection_flops(fc)


@pytest.mark.parametrize(
    "params",
    [
        {"d_state": 8, "head_dim": 8, "chunk_size": 4},
        {"d_state": 4, "head_dim": 4, "n_groups": 2, "chunk_size": 8},
    ],
)
@pytest.mark.parametrize("T", [8, 16])
def test_ssm_flops(params, T):
    mod, p, block = _block("ssm", {**params, "backend": "reference"}, T)
    B = 2
    fc = counted(block, torch.randn(B, T, D))
    ours = mod.flops(p, D, B, T).matmul
    s = SSMSizes(p, D)
    Q = same_chunk_pairs(T, p.chunk_size)
    ssd = 2 * s.groups * s.d_state * Q + 2 * s.heads * s.head_dim * Q
    ssd += 4 * T * s.heads * s.head_dim * s.d_state
    assert ours - B * ssd == _projection_flops(fc)
    ops = {str(k): v for ops in [fc.get_flop_counts()["Global"]] for k, v in ops.items()}
    matmul_counted = sum(v for k, v in ops.items() if "convolution" not in k)
    assert abs(matmul_counted - ours) <= 0.01 * ours


DECODE_CASES = [
    ("attention", {"heads": 4, "kv_heads": 2, "backend": "reference"}),
    ("local_attention", {"heads": 4, "window": 5, "backend": "reference"}),
    ("rat", {"heads": 4, "chunk_size": 4, "backend": "reference"}),
    ("rnn", {}),
    ("ssm", {"d_state": 8, "head_dim": 8, "chunk_size": 4, "backend": "reference"}),
    ("mlp", {"activation": "swiglu"}),
]


@pytest.mark.parametrize("kind,params", DECODE_CASES)
@pytest.mark.parametrize("B,T", [(1, 7), (2, 12), (3, 13)])
def test_decode_flops_match_the_step(kind, params, B, T):
    """One `step` at position T after a prefill of T tokens, counted by FlopCounterMode."""
    mod, p, block = _block(kind, params, T + 1)
    cache = block.allocate_cache(B, T + 1, device=torch.device("cpu"), dtype=torch.float32)
    with torch.no_grad():
        block.prefill(torch.randn(B, T, D), cache)
        fc = counted(lambda x: block.step(x, cache), torch.randn(B, 1, D))
    ours = mod.decode_flops(p, D, B, T).matmul
    if kind == "ssm":  # the state update h += (dt x) B^T is an elementwise outer product
        s = SSMSizes(p, D)
        ours -= 2 * B * s.heads * s.head_dim * s.d_state
    assert fc.get_total_flops() == ours
