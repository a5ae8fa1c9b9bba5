"""attention and local_attention extras: logit soft-capping (Gemma-2), sink logits
(gpt-oss) and partial RoPE (GPT-NeoX, Phi) against a float64 loop, the flex path's
capping and sinks against the reference (flex_attention run eagerly on the CPU), backend
choice, checks, parameter and FLOP counts, and the defaults left as they were."""

from __future__ import annotations

import math

import pytest
import torch
from numerics import rel_err
from torch.nn.attention.flex_attention import create_block_mask
from torch.nn.attention.flex_attention import flex_attention as eager_flex

import archlab
from archlab.blocks import attention, local_attention
from archlab.blocks.attention import common
from archlab.blocks.attention.layer import AttentionBlock
from archlab.blocks.base import BackendUnavailable, ModelConfig
from archlab.blocks.local_attention.layer import LocalAttentionBlock

D_MODEL = 32
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=64, max_seq_len=128, dtype="float32")
CASES = [  # (kind, batch, seq_len, params)
    ("attention", 2, 9, {"heads": 4, "attn_softcap": 1.0}),
    ("attention", 2, 7, {"heads": 4, "kv_heads": 2, "sinks": 1, "qk_norm": True}),
    ("attention", 1, 12, {"heads": 2, "sinks": 3, "attn_softcap": 2.5, "partial_rotary": 0.5}),
    ("attention", 2, 5, {"heads": 4, "kv_heads": 1, "head_dim": 10, "partial_rotary": 0.4}),
    ("local_attention", 2, 11, {"heads": 4, "window": 4, "sinks": 1, "attn_softcap": 3.0}),
    ("local_attention", 1, 9, {"heads": 2, "window": 3, "partial_rotary": 0.25, "bias": True}),
]
KINDS = {
    "attention": (attention, AttentionBlock),
    "local_attention": (local_attention, LocalAttentionBlock),
}


def build(kind: str, kwargs: dict, backend: str = "auto", seed: int = 0):
    record, layer = KINDS[kind]
    torch.manual_seed(seed)
    block = layer(record.Params(**kwargs, backend=backend), MODEL)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.5 * torch.randn_like(p))
    return block


def brute_force(block, x_BTD: torch.Tensor) -> torch.Tensor:
    """Per token and head in float64 from the block's weights: partial rotate-half RoPE on
    the first rotary_dim dims, capped scores, sink logits in the denominator."""
    p, H, K, dh = block.params, block.heads, block.kv_heads, block.head_dim
    B, T, _ = x_BTD.shape
    w = {n: t.detach().double() for n, t in block.named_parameters()}
    x = x_BTD.double()

    def proj(name, n_heads):
        y = x @ w[f"{name}.weight"].T + (w[f"{name}.bias"] if p.bias else 0)
        return y.view(B, T, n_heads, dh)

    q, k, v = proj("q_proj", H), proj("k_proj", K), proj("v_proj", K)
    if p.qk_norm:
        q = q / (q.pow(2).mean(-1, keepdim=True) + block.norm_eps).sqrt() * w["q_norm"]
        k = k / (k.pow(2).mean(-1, keepdim=True) + block.norm_eps).sqrt() * w["k_norm"]
    rd = int(dh * p.partial_rotary)
    half = rd // 2
    ang = torch.arange(T, dtype=torch.float64)[:, None] * p.rope_theta ** (
        -2 * torch.arange(half, dtype=torch.float64) / rd
    )
    cos, sin = ang.cos()[None, :, None], ang.sin()[None, :, None]

    def rot(t):
        a, b, rest = t[..., :half], t[..., half:rd], t[..., rd:]
        return torch.cat([a * cos - b * sin, b * cos + a * sin, rest], dim=-1)

    q, k = rot(q), rot(k)
    window = getattr(p, "window", None) or T
    out = torch.zeros(B, T, H, dh, dtype=torch.float64)
    for t in range(T):
        first = max(0, t - window + 1)
        for h in range(H):
            kv = h // (H // K)
            s = (k[:, first : t + 1, kv] @ q[:, t, h, :, None])[..., 0] / math.sqrt(dh)
            if p.attn_softcap is not None:
                s = p.attn_softcap * torch.tanh(s / p.attn_softcap)
            denom = s.exp().sum(-1, keepdim=True)
            if p.sinks:
                denom = denom + w["sinks"][h].exp().sum()
            out[:, t, h] = ((s.exp() / denom)[..., None] * v[:, first : t + 1, kv]).sum(1)
    return out.reshape(B, T, H * dh) @ w["o_proj.weight"].T + (w["o_proj.bias"] if p.bias else 0)


@pytest.mark.parametrize("kind,batch,seq_len,kwargs", CASES)
def test_matches_brute_force_and_decodes_like_forward(kind, batch, seq_len, kwargs):
    block = build(kind, kwargs, seed=seq_len)
    x = torch.randn(batch, seq_len, D_MODEL)
    with torch.no_grad():
        full = block(x)
        assert rel_err(full, brute_force(block, x)) < 1e-5
        cache = block.allocate_cache(batch, seq_len)
        outs = [block.prefill(x[:, :3], cache)]
        outs += [block.step(x[:, t : t + 1], cache) for t in range(3, seq_len)]
    assert rel_err(torch.cat(outs, 1), full) < 1e-5


@pytest.mark.parametrize("window", [None, 3])
@pytest.mark.parametrize("softcap,n_sinks", [(None, 2), (1.5, 0), (4.0, 1)])
def test_flex_capping_and_sinks_match_the_reference(window, softcap, n_sinks):
    """common.flex_core with torch's flex_attention run eagerly (the CPU has no compiled
    flex; CUDA runs the same function compiled): the score_mod and the log-sum-exp sinks."""
    torch.manual_seed(0)
    B, T, H, K, D = 2, 10, 4, 2, 8
    q, k, v = torch.randn(B, T, H, D), torch.randn(B, T, K, D), torch.randn(B, T, K, D)
    sinks = torch.randn(H, n_sinks) if n_sinks else None

    def visible(b, h, q_idx, kv_idx):
        ok = kv_idx <= q_idx
        return ok if window is None else ok & (q_idx - kv_idx < window)

    mask = create_block_mask(visible, None, None, T, T, device="cpu")
    got = common.flex_core(eager_flex, q, k, v, mask, softcap, sinks)
    want = common.reference_attention(
        q, k, v, common.window_mask(T, window, q.device), softcap, sinks
    )
    assert rel_err(got, want) < 1e-5


def test_backends_with_capping_or_sinks():
    plain = build("attention", {"heads": 4})
    assert plain.backend == "sdpa" and plain.backend_table() is AttentionBlock.BACKENDS
    for kind, kwargs in [
        ("attention", {"heads": 4, "sinks": 1}),
        ("local_attention", {"heads": 4, "window": 3, "attn_softcap": 5.0}),
    ]:
        block = build(kind, kwargs)
        assert block.backend == "reference"  # auto on the CPU
        assert list(block.backend_table()) == ["flex", "reference", "sdpa"]
        with pytest.raises(BackendUnavailable, match="sdpa cannot"):
            build(kind, kwargs, backend="sdpa")
    record = attention.Params(heads=4, attn_softcap=30.0, backend="sdpa")
    assert attention.check(record, D_MODEL) == [
        ("backend", "sdpa cannot soft-cap attention logits: use flex (CUDA) or reference "
                    "(auto picks them)")
    ]  # fmt: skip
    sink = local_attention.Params(heads=4, window=4, sinks=1, backend="sdpa")
    assert local_attention.check(sink, D_MODEL)[0][1].startswith("sdpa cannot add sink")
    assert attention.check(attention.Params(heads=4, attn_softcap=30.0), D_MODEL) == []


def test_partial_rotary_checks_and_leaves_the_tail():
    assert attention.check(attention.Params(heads=4, partial_rotary=0.5), D_MODEL) == []
    bad = attention.Params(heads=4, partial_rotary=0.3)  # int(8 * 0.3) = 2: fine
    assert attention.check(bad, D_MODEL) == []
    odd = attention.Params(heads=4, head_dim=10, partial_rotary=0.3)  # 3: odd
    assert [f for f, _ in attention.check(odd, D_MODEL)] == ["partial_rotary"]
    tiny = attention.Params(heads=4, partial_rotary=0.1)  # 0 dims
    assert [f for f, _ in attention.check(tiny, D_MODEL)] == ["partial_rotary"]
    odd_head = attention.Params(heads=4, head_dim=9, partial_rotary=0.5)  # 4 of 9 rotated
    assert attention.check(odd_head, D_MODEL) == []
    off = attention.Params(heads=4, head_dim=9, rope=False, partial_rotary=0.5)
    assert attention.check(off, D_MODEL) == []
    block = build("attention", {"heads": 4, "partial_rotary": 0.5})
    x = torch.randn(1, 6, D_MODEL)
    with torch.no_grad():
        k = block._keys_values(x, torch.arange(6))[0]
        raw = block.k_proj(x).view(1, 6, 4, 8)
    torch.testing.assert_close(k[..., 4:], raw[..., 4:])  # the tail is not rotated
    assert not torch.allclose(k[:, 1:, :, :4], raw[:, 1:, :, :4])


def test_param_and_flop_counts_of_the_extras():
    base = attention.Params(heads=4, kv_heads=2)
    extra = attention.Params(heads=4, kv_heads=2, sinks=3, attn_softcap=9.0, partial_rotary=0.5)
    block = build("attention", extra.model_dump(exclude={"kind", "backend"}))
    assert attention.param_count(extra, D_MODEL) == attention.param_count(base, D_MODEL) + 12
    assert attention.param_count(extra, D_MODEL) == sum(p.numel() for p in block.parameters())
    f, f0 = attention.flops(extra, D_MODEL, 2, 10), attention.flops(base, D_MODEL, 2, 10)
    assert f.matmul == f0.matmul
    rope_saved = 2 * 3 * 10 * (4 + 2) * 4  # half of each head's 8 dims left unrotated
    assert f.other - f0.other == 2 * (3 * 4 * 55 + 5 * 10 * 4 * 3) - rope_saved
    d, d0 = (
        attention.decode_flops(extra, D_MODEL, 1, 20),
        attention.decode_flops(base, D_MODEL, 1, 20),
    )
    assert d.other - d0.other == 3 * 4 * 21 + 5 * 4 * 3 - 3 * 6 * 4
    local = local_attention.Params(heads=4, window=4, sinks=1)
    assert (
        local_attention.param_count(local, D_MODEL)
        == attention.param_count(attention.Params(heads=4), D_MODEL) + 4
    )


def test_defaults_are_unchanged():
    p = attention.Params(heads=4)
    assert (p.attn_softcap, p.sinks, p.partial_rotary) == (None, 0, 1.0)
    assert attention.param_count(p, D_MODEL) == 4 * D_MODEL * D_MODEL
    assert attention.check(attention.Params(heads=4, head_dim=9), D_MODEL)[0][0] == "head_dim"
    names = {n for n, _ in build("attention", {"heads": 4}).named_parameters()}
    assert "sinks" not in names


def test_sharing_needs_the_same_rotary_fraction():
    def spec(partial):
        return {
            "model": {"d_model": 16, "vocab_size": 32, "max_seq_len": 8, "dtype": "float32"},
            "stack": [
                {"kind": "attention", "heads": 2, "partial_rotary": 0.5, "name": "src"},
                {"kind": "attention", "heads": 2, "partial_rotary": partial, "share_cache": "src"},
            ],
        }  # fmt: skip

    assert archlab.compile(spec(0.5)).blocks[1].params.share_cache == 0
    with pytest.raises(archlab.SpecError, match="partial_rotary 1.0 vs 0.5"):
        archlab.compile(spec(1.0))
