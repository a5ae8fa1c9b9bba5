"""attention: backends against the float32 reference (outputs and every gradient), the
semantics against a brute-force loop, FLOPs against FlopCounterMode and a pair count."""

from __future__ import annotations

import math

import attention_helpers as helpers
import pytest
import torch
from attention_helpers import assert_grads_close, rel_err, run
from torch.utils.flop_counter import FlopCounterMode

from archlab.blocks import attention
from archlab.blocks.attention.layer import AttentionBlock
from archlab.blocks.base import BackendUnavailable, ModelConfig

D_MODEL = 32
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=64, max_seq_len=128, dtype="float32")
# (batch, seq_len, params): T = 1 and odd T; MHA, GQA, MQA; head_dim != d_model / heads.
CASES = [
    (2, 1, {"heads": 4}),
    (2, 7, {"heads": 4, "kv_heads": 2, "qk_norm": True, "bias": True}),
    (1, 33, {"heads": 4, "kv_heads": 1, "head_dim": 8}),
    (3, 16, {"heads": 8, "kv_heads": 2, "head_dim": 6, "rope": False}),
    (2, 13, {"heads": 2, "kv_heads": 1, "head_dim": 16, "qk_norm": True, "rope_theta": 500.0}),
]


def build(kwargs: dict, backend: str, seed: int = 0, model: ModelConfig = MODEL):
    """A block with every parameter randomized (so no path hides behind an init value)."""
    torch.manual_seed(seed)
    block = AttentionBlock(attention.Params(**kwargs, backend=backend), model)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return block


def clone(block, backend: str, model: ModelConfig = MODEL):
    return helpers.clone(block, backend, model)


def brute_force(block, x_BTD: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Attention written per token and head in float64 from the block's weights."""
    B, T, _ = x_BTD.shape
    p, H, K, dh = block.params, block.heads, block.kv_heads, block.head_dim
    w = {n: t.detach().double() for n, t in block.named_parameters()}
    x = x_BTD.double()

    def proj(name, inp, n_heads):
        y = inp @ w[f"{name}.weight"].T + (w[f"{name}.bias"] if p.bias else 0)
        return y.view(B, -1, n_heads, dh) if n_heads else y

    q, k, v = proj("q_proj", x, H), proj("k_proj", x, K), proj("v_proj", x, K)
    if p.qk_norm:
        eps = block.norm_eps
        q = q / (q.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w["q_norm"]
        k = k / (k.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w["k_norm"]
    if p.rope:  # pair (i, i + dh/2) rotated by angle pos * theta^(-2i/dh)
        half = dh // 2
        ang = torch.arange(T, dtype=torch.float64)[:, None] * p.rope_theta ** (
            -2 * torch.arange(half, dtype=torch.float64) / dh
        )
        cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]

        def rot(t):
            a, b = t[..., :half], t[..., half:]
            return torch.cat([a * cos - b * sin, b * cos + a * sin], dim=-1)

        q, k = rot(q), rot(k)
    out = torch.zeros(B, T, H, dh, dtype=torch.float64)
    for t in range(T):
        first = 0 if window is None else max(0, t - window + 1)
        for h in range(H):
            kv = h // (H // K)
            scores = (k[:, first : t + 1, kv] @ q[:, t, h, :, None])[..., 0] / math.sqrt(dh)
            out[:, t, h] = (scores.softmax(-1)[..., None] * v[:, first : t + 1, kv]).sum(1)
    return proj("o_proj", out.reshape(B, T, H * dh), 0)


@pytest.mark.parametrize("batch,seq_len,kwargs", CASES)
def test_sdpa_matches_reference_outputs_and_grads(batch, seq_len, kwargs):
    ref = build(kwargs, "reference", seed=seq_len)
    fast = clone(ref, "sdpa")
    assert fast.backend == "sdpa"
    x, g = torch.randn(batch, seq_len, D_MODEL), torch.randn(batch, seq_len, D_MODEL)
    y_ref, dx_ref, grads_ref = run(ref, x, g)
    y, dx, grads = run(fast, x, g)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(dx, dx_ref) < 1e-5
    assert_grads_close(grads, grads_ref)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("batch,seq_len,kwargs", CASES)
def test_matches_brute_force(batch, seq_len, kwargs, backend):
    block = build(kwargs, backend, seed=seq_len + 1)
    x = torch.randn(batch, seq_len, D_MODEL)
    with torch.no_grad():
        assert rel_err(block(x), brute_force(block, x)) < 1e-5


def test_parameter_names_and_init():
    block = AttentionBlock(attention.Params(heads=4, kv_heads=2, qk_norm=True, bias=True), MODEL)
    names = {n for n, _ in block.named_parameters()}
    projs = {f"{p}_proj.{t}" for p in "qkvo" for t in ("weight", "bias")}
    assert names == projs | {"q_norm", "k_norm"}
    assert block.k_proj.weight.shape == (2 * 8, D_MODEL)
    assert abs(block.q_proj.weight.std().item() - 0.02) < 0.005
    assert torch.all(block.q_proj.bias == 0) and torch.all(block.k_norm == 1)


@pytest.mark.parametrize("batch,seq_len,kwargs", CASES)
def test_flops_match_flop_counter_and_pair_count(batch, seq_len, kwargs):
    block = build(kwargs, "reference")
    params, H, dh = block.params, block.heads, block.head_dim
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(torch.randn(batch, seq_len, D_MODEL))
    counts = counter.get_flop_counts()["Global"]
    projections = sum(n for op, n in counts.items() if str(op) in ("aten.mm", "aten.addmm"))
    # The reference computes QK^T and PV densely, then masks.
    assert counts[torch.ops.aten.bmm] == 2 * 2 * batch * H * seq_len * seq_len * dh
    pairs = sum(1 for i in range(seq_len) for j in range(seq_len) if j <= i)
    expected = projections + 2 * 2 * dh * pairs * H * batch
    assert attention.flops(params, D_MODEL, batch, seq_len).matmul == expected


@pytest.mark.parametrize("batch,seq_len,kwargs", CASES)
def test_decode_flops_match_flop_counter(batch, seq_len, kwargs):
    block = build(kwargs, "reference")
    x = torch.randn(batch, seq_len + 1, D_MODEL)
    with torch.no_grad():
        cache = block.allocate_cache(batch, seq_len + 1)
        block.prefill(x[:, :seq_len], cache)
        with FlopCounterMode(display=False) as counter:
            block.step(x[:, seq_len:], cache)
    decode = attention.decode_flops(block.params, D_MODEL, batch, seq_len)
    assert decode.matmul == counter.get_total_flops()  # the step's reference sees t + 1 keys
    assert decode.other > 0


def test_flops_other_counts_softmax_rope_norm_and_bias():
    base = {"heads": 4, "kv_heads": 2}
    plain = attention.flops(attention.Params(**base, rope=False), D_MODEL, 2, 10)
    assert plain.other == 5 * 4 * 55 * 2  # softmax over the 55 visible pairs of T = 10
    full = attention.Params(**base, qk_norm=True, bias=True)
    extra = attention.flops(full, D_MODEL, 2, 10).other - plain.other
    assert extra == 2 * 10 * ((3 + 4) * (4 + 2) * 8 + (32 + 2 * 16 + 32))


def test_cache_stores_rotated_keys_and_values():
    block = build({"heads": 4, "kv_heads": 2, "qk_norm": True}, "sdpa")
    x = torch.randn(2, 9, D_MODEL)
    with torch.no_grad():
        cache = block.allocate_cache(2, 12)
        block.prefill(x[:, :6], cache)
        for t in range(6, 9):
            block.step(x[:, t : t + 1], cache)
        _, k, v = block._project(x, torch.arange(9))
    assert cache.length == 9
    torch.testing.assert_close(cache["k"][:, :9], k)
    torch.testing.assert_close(cache["v"][:, :9], v)
    assert torch.all(cache["k"][:, 9:] == 0)


def test_cache_misuse_raises():
    block = build({"heads": 4}, "sdpa")
    x = torch.randn(1, 4, D_MODEL)
    cache = block.allocate_cache(1, 4)
    with pytest.raises(ValueError, match="does not fit"):
        block.prefill(torch.randn(1, 5, D_MODEL), cache)
    block.prefill(x, cache)
    with pytest.raises(ValueError, match="empty cache"):
        block.prefill(x, cache)
    with pytest.raises(ValueError, match="does not fit"):
        block.step(x[:, :1], cache)


def test_cache_defaults_follow_parameters():
    block = AttentionBlock(attention.Params(heads=4), MODEL).to(torch.bfloat16)
    cache = block.allocate_cache(3, 5)
    assert cache["k"].dtype == torch.bfloat16 and cache["k"].shape == (3, 5, 4, 8)
    assert cache.nbytes() == attention.cache_bytes(block.params, D_MODEL, 3, 5, 2)


def test_backend_selection():
    assert AttentionBlock(attention.Params(heads=4), MODEL).backend == "sdpa"
    block = AttentionBlock(attention.Params(heads=4, backend="flex"), MODEL)
    with pytest.raises(BackendUnavailable, match="flex"):
        block.select_backend(torch.device("cpu"))
    with pytest.raises(BackendUnavailable):
        block(torch.randn(1, 3, D_MODEL))
    with pytest.raises(BackendUnavailable, match="triton"):
        AttentionBlock(attention.Params(heads=4, backend="triton"), MODEL)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["flex", "sdpa"])
def test_cuda_bf16_backend_against_float32_reference(backend):
    kwargs = {"heads": 8, "kv_heads": 2, "qk_norm": True}
    helpers.check_low_precision(attention.KIND, kwargs, backend)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("seq_len", [1, 77, 300])
def test_cuda_flex_odd_lengths_and_decode(seq_len):
    ref = build({"heads": 4, "kv_heads": 2, "head_dim": 16, "qk_norm": True}, "reference")
    helpers.check_flex_prefix_and_decode(ref, clone(ref, "flex"), seq_len, D_MODEL)
