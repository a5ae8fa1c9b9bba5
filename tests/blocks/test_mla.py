"""mla: sdpa against the float32 reference (outputs and every gradient), both against a
float64 loop written from the paper's equations, the absorbed and recomputing decodes
against the forward, the cache's contents, FLOPs against FlopCounterMode, checks and a
spec that uses the kind."""

from __future__ import annotations

import math

import pytest
import torch
from attention_helpers import assert_grads_close, clone, run
from numerics import rel_err
from torch.utils.flop_counter import FlopCounterMode

import archlab
from archlab.blocks import mla
from archlab.blocks.base import ModelConfig
from archlab.blocks.mla.layer import MLABlock

D_MODEL = 32
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=64, max_seq_len=128, dtype="float32")
DIMS = {"kv_lora_rank": 8, "qk_nope_head_dim": 6, "qk_rope_head_dim": 4, "v_head_dim": 10}
CASES = [
    (2, 1, {"heads": 4, **DIMS}),
    (2, 9, {"heads": 4, **DIMS, "q_lora_rank": 12}),
    (1, 17, {"heads": 2, **DIMS, "qk_rope_head_dim": 0, "rope_theta": 500.0}),
    (3, 6, {"heads": 3, "kv_lora_rank": 5, "qk_nope_head_dim": 2, "qk_rope_head_dim": 8,
            "v_head_dim": 3, "q_lora_rank": 7}),
]  # fmt: skip


def build(kwargs: dict, backend: str, seed: int = 0) -> MLABlock:
    torch.manual_seed(seed)
    block = MLABlock(mla.Params(**kwargs, backend=backend), MODEL)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return block


def brute_force(block: MLABlock, x_BTD: torch.Tensor) -> torch.Tensor:
    """DeepSeek-V2's equations per token and head in float64 (rotate-half RoPE)."""
    p = block.params
    H, n, pr, v, r = p.heads, p.qk_nope_head_dim, p.qk_rope_head_dim, p.v_head_dim, p.kv_lora_rank
    w = {name: t.detach().double() for name, t in block.named_parameters()}
    x = x_BTD.double()
    B, T, _ = x.shape

    def norm(t, weight):
        return t / (t.pow(2).mean(-1, keepdim=True) + block.norm_eps).sqrt() * weight

    def rot(t):  # [B, T, ..., pr] rotated by position
        half = pr // 2
        ang = torch.arange(T, dtype=torch.float64)[:, None] * p.rope_theta ** (
            -2 * torch.arange(half, dtype=torch.float64) / pr
        )
        shape = (1, T) + (1,) * (t.dim() - 3) + (half,)
        cos, sin = ang.cos().view(shape), ang.sin().view(shape)
        a, b = t[..., :half], t[..., half:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

    if p.q_lora_rank is None:
        q = x @ w["q_proj.weight"].T
    else:
        q = norm(x @ w["q_a_proj.weight"].T, w["q_a_layernorm.weight"]) @ w["q_b_proj.weight"].T
    q = q.view(B, T, H, n + pr)
    q_nope, q_pe = q[..., :n], rot(q[..., n:])
    kv_a = x @ w["kv_a_proj_with_mqa.weight"].T
    c_kv, k_pe = norm(kv_a[..., :r], w["kv_a_layernorm.weight"]), rot(kv_a[..., r:])
    kv = (c_kv @ w["kv_b_proj.weight"].T).view(B, T, H, n + v)
    k_nope, values = kv[..., :n], kv[..., n:]
    out = torch.zeros(B, T, H, v, dtype=torch.float64)
    for t in range(T):
        for h in range(H):
            scores = (k_nope[:, : t + 1, h] @ q_nope[:, t, h, :, None])[..., 0]
            scores = scores + (k_pe[:, : t + 1] @ q_pe[:, t, h, :, None])[..., 0]
            probs = (scores / math.sqrt(n + pr)).softmax(-1)
            out[:, t, h] = (probs[..., None] * values[:, : t + 1, h]).sum(1)
    return out.reshape(B, T, H * v) @ w["o_proj.weight"].T


@pytest.mark.parametrize("batch,seq_len,kwargs", CASES)
def test_sdpa_matches_reference_outputs_and_grads(batch, seq_len, kwargs):
    ref = build(kwargs, "reference", seed=seq_len)
    fast = clone(ref, "sdpa", MODEL)
    x, g = torch.randn(batch, seq_len, D_MODEL), torch.randn(batch, seq_len, D_MODEL)
    y_ref, dx_ref, grads_ref = run(ref, x, g)
    y, dx, grads = run(fast, x, g)
    assert rel_err(y, y_ref) < 1e-5 and rel_err(dx, dx_ref) < 1e-5
    assert_grads_close(grads, grads_ref)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("batch,seq_len,kwargs", CASES)
def test_matches_brute_force(batch, seq_len, kwargs, backend):
    block = build(kwargs, backend, seed=seq_len + 1)
    x = torch.randn(batch, seq_len, D_MODEL)
    with torch.no_grad():
        assert rel_err(block(x), brute_force(block, x)) < 1e-5


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("batch,seq_len,kwargs", CASES[1:])
def test_prefill_and_decode_equal_forward(batch, seq_len, kwargs, backend):
    """sdpa decodes in the absorbed form, the reference recomputes keys and values."""
    block = build(kwargs, backend, seed=2)
    x = torch.randn(batch, seq_len + 4, D_MODEL)
    with torch.no_grad():
        full = block(x)
        cache = block.allocate_cache(batch, seq_len + 4)
        outs = [block.prefill(x[:, :seq_len], cache)]
        outs += [block.step(x[:, t : t + 1], cache) for t in range(seq_len, seq_len + 4)]
    assert rel_err(torch.cat(outs, 1), full) < 1e-5


def test_cache_holds_the_normed_latent_and_rotated_key():
    block = build(CASES[1][2], "sdpa")
    x = torch.randn(2, 7, D_MODEL)
    with torch.no_grad():
        cache = block.allocate_cache(2, 9)
        block.prefill(x[:, :4], cache)
        for t in range(4, 7):
            block.step(x[:, t : t + 1], cache)
        c_kv, k_pe = block._latent(x, torch.arange(7))
    assert cache["c_kv"].shape == (2, 9, 8) and cache["k_pe"].shape == (2, 9, 4)
    torch.testing.assert_close(cache["c_kv"][:, :7], c_kv)
    torch.testing.assert_close(cache["k_pe"][:, :7], k_pe)
    assert torch.all(cache["c_kv"][:, 7:] == 0)
    assert cache.nbytes() == mla.cache_bytes(block.params, D_MODEL, 2, 9, 4) == 2 * 9 * 12 * 4
    with pytest.raises(ValueError, match="empty cache"):
        block.prefill(x, cache)
    small = block.allocate_cache(1, 2)
    with pytest.raises(ValueError, match="does not fit"):
        block.prefill(x[:1, :3], small)


def test_parameter_names_are_hf_deepseek():
    names = {n for n, _ in build(CASES[1][2], "sdpa").named_parameters()}
    assert names == {
        "q_a_proj.weight",
        "q_a_layernorm.weight",
        "q_b_proj.weight",
        "kv_a_proj_with_mqa.weight",
        "kv_a_layernorm.weight",
        "kv_b_proj.weight",
        "o_proj.weight",
    }
    for _, _, kwargs in CASES:
        block = build(kwargs, "sdpa")
        total = sum(p.numel() for p in block.parameters())
        assert mla.param_count(block.params, D_MODEL) == total


@pytest.mark.parametrize("batch,seq_len,kwargs", CASES)
def test_flops_match_flop_counter(batch, seq_len, kwargs):
    block = build(kwargs, "reference")
    p, H = block.params, block.heads
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(torch.randn(batch, seq_len, D_MODEL))
    counts = counter.get_flop_counts()["Global"]
    projections = sum(n for op, n in counts.items() if str(op) in ("aten.mm", "aten.addmm"))
    width = p.qk_nope_head_dim + p.qk_rope_head_dim + p.v_head_dim
    assert counts[torch.ops.aten.bmm] == 2 * batch * H * seq_len * seq_len * width  # dense
    pairs = seq_len * (seq_len + 1) // 2
    expected = projections + 2 * width * pairs * H * batch
    assert mla.flops(p, D_MODEL, batch, seq_len).matmul == expected


@pytest.mark.parametrize("backend", ["sdpa", "reference"])
@pytest.mark.parametrize("batch,seq_len,kwargs", CASES)
def test_decode_flops_match_flop_counter(batch, seq_len, kwargs, backend):
    block = build(kwargs, backend)
    x = torch.randn(batch, seq_len + 1, D_MODEL)
    with torch.no_grad():
        cache = block.allocate_cache(batch, seq_len + 1)
        block.prefill(x[:, :seq_len], cache)
        with FlopCounterMode(display=False) as counter:
            block.step(x[:, seq_len:], cache)
    count = mla.decode_flops if backend == "sdpa" else mla.reference_decode_flops
    decode = count(block.params, D_MODEL, batch, seq_len)
    assert decode.matmul == counter.get_total_flops() and decode.other > 0


def test_absorbed_decode_is_cheaper_at_long_context():
    p = mla.Params(heads=128, kv_lora_rank=512, q_lora_rank=1536)
    assert mla.decode_flops(p, 5120, 1, 4096).matmul * 10 < (
        mla.reference_decode_flops(p, 5120, 1, 4096).matmul
    )
    assert mla.cache_bytes(p, 5120, 1, 4096, 2) == 4096 * 576 * 2  # DeepSeek-V2's 576


def test_checks_defaults_and_scale():
    p = mla.Params(heads=16)
    assert (p.kv_lora_rank, p.q_lora_rank, p.qk_nope_head_dim, p.qk_rope_head_dim) == (
        512,
        None,
        128,
        64,
    )
    assert p.v_head_dim == 128 and mla.check(p, 2048) == []
    assert [f for f, _ in mla.check(mla.Params(heads=2, qk_rope_head_dim=3), 16)] == [
        "qk_rope_head_dim"
    ]
    assert mla.check(mla.Params(heads=2, backend="flex"), 16)[0][0] == "backend"
    small = mla.scale(mla.Params(heads=128, q_lora_rank=1536).model_dump(), 5120, 256)
    assert (small["heads"], small["kv_lora_rank"], small["q_lora_rank"]) == (6, 24, 80)
    assert mla.check(mla.Params(**small), 256) == []


def test_spec_binds_a_symbol_costs_and_builds():
    spec = {
        "model": {"d_model": 16, "vocab_size": 32, "max_seq_len": 8, "dtype": "float32"},
        "symbols": {"D": {"kind": "mla", "heads": 2, **DIMS}},
        "stack": "D- D-",
    }
    plan = archlab.compile(spec)
    assert [b.kind for b in plan.blocks] == ["mla", "mlp"] * 2
    model = archlab.build(plan, device="cpu", dtype="float32")
    cost = archlab.cost(plan, batch=2, seq_len=8)
    assert cost.params == sum(p.numel() for p in model.parameters())
    cache = model.allocate_cache(2, 8)
    assert cache.nbytes() == cost.cache_bytes == 2 * 2 * 8 * 12 * 4
    ids = torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        full = model(ids)
        outs = [model.prefill(ids[:, :5], cache)]
        outs += [model.step(ids[:, t : t + 1], cache) for t in range(5, 8)]
    assert rel_err(torch.cat(outs, 1), full) < 1e-5
