"""attention and local_attention extras: logit soft-capping (Gemma-2), sink logits
(gpt-oss), partial RoPE (GPT-NeoX, Phi), the output gate (Qwen3-Next's gated attention)
and the output projection's own bias (`o_bias`: RecurrentGemma, Qwen2) against a float64
loop, the flex path's capping and sinks against the reference (flex_attention run eagerly
on the CPU), the gate on every backend and in HF's q_proj layout, backend choice, checks,
parameter and FLOP counts, and the defaults left as they were."""

from __future__ import annotations

import math

import pytest
import torch
from numerics import rel_err
from torch.nn.attention.flex_attention import create_block_mask
from torch.nn.attention.flex_attention import flex_attention as eager_flex
from torch.utils.flop_counter import FlopCounterMode

import archlab
import archlab.blocks.attention.layer as attention_layer
from archlab.blocks import attention, local_attention
from archlab.blocks.attention import common, out_bias
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
    ("attention", 2, 8, {"heads": 4, "kv_heads": 2, "output_gate": True, "qk_norm": True}),
    ("attention", 1, 7, {"heads": 2, "output_gate": True, "bias": True, "o_bias": False}),
    ("attention", 2, 6, {"heads": 4, "kv_heads": 1, "o_bias": True, "partial_rotary": 0.5}),
    ("local_attention", 2, 9, {"heads": 2, "window": 3, "output_gate": True, "o_bias": True}),
    ("local_attention", 1, 8, {"heads": 4, "window": 4, "output_gate": True, "sinks": 1}),
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
    the first rotary_dim dims, capped scores, sink logits in the denominator; with the
    output gate, head h's query from q_proj's rows [2 h dh, 2 h dh + dh) and its gate from
    the next dh rows (HF's Qwen3NextAttention), the head's output times sigmoid(gate)."""
    p, H, K, dh = block.params, block.heads, block.kv_heads, block.head_dim
    B, T, _ = x_BTD.shape
    w = {n: t.detach().double() for n, t in block.named_parameters()}
    x = x_BTD.double()

    def proj(name, rows=slice(None)):
        y = x @ w[f"{name}.weight"][rows].T + (w[f"{name}.bias"][rows] if p.bias else 0)
        return y.view(B, T, -1, dh)

    if p.output_gate:  # head h: dh query rows, then dh gate rows
        rows = torch.arange(2 * H * dh).view(H, 2, dh)
        q, gate = proj("q_proj", rows[:, 0].flatten()), proj("q_proj", rows[:, 1].flatten())
    else:
        q = proj("q_proj")
    k, v = proj("k_proj"), proj("v_proj")
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
            if p.output_gate:
                out[:, t, h] = out[:, t, h] / (1 + (-gate[:, t, h]).exp())
    o_bias = w["o_proj.bias"] if out_bias(p) else 0
    return out.reshape(B, T, H * dh) @ w["o_proj.weight"].T + o_bias


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
    assert (p.output_gate, p.o_bias) == (False, None)
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


@pytest.mark.parametrize("kind,kwargs", [
    ("attention", {"heads": 4, "kv_heads": 2, "output_gate": True, "qk_norm": True}),
    ("local_attention", {"heads": 4, "window": 3, "output_gate": True, "attn_softcap": 2.0}),
])  # fmt: skip
def test_output_gate_on_every_backend(kind, kwargs):
    """The gate multiplies each head's output after the attention core, so every core
    gives the same gated output: sdpa (where it can run) and the reference through the
    block, and flex's function (flex_attention run eagerly: the CPU has no compiled one)
    between the block's own projections and output, as the sequence path runs it."""
    x = torch.randn(2, 10, D_MODEL)
    ref = build(kind, kwargs, backend="reference", seed=3)
    with torch.no_grad():
        want = ref(x)
        if not attention.logit_mods(ref.params):
            sdpa = build(kind, kwargs, backend="sdpa", seed=3)
            assert rel_err(sdpa(x), want) < 1e-5
        q, k, v, gate = ref._gated_project(x, torch.arange(10))
        assert gate is not None and gate.shape == q.shape
        window = getattr(ref.params, "window", None)

        def visible(b, h, q_idx, kv_idx):
            ok = kv_idx <= q_idx
            return ok if window is None else ok & (q_idx - kv_idx < window)

        mask = create_block_mask(visible, None, None, 10, 10, device="cpu")
        y = common.flex_core(eager_flex, q, k, v, mask, **ref._mods())
        assert rel_err(ref._out(y, gate), want) < 1e-5


def test_output_gate_reads_hf_q_proj_layout():
    """A gated block whose gate rows are zero (sigmoid 0.5) and whose query rows are an
    ungated block's q_proj, head by head (HF Qwen3NextAttention's layout: per head, the
    query rows then the gate rows), gives half the ungated block's output."""
    H, dh = 4, 8
    plain = build("attention", {"heads": H, "kv_heads": 2, "qk_norm": True}, seed=1)
    gated = build("attention", {"heads": H, "kv_heads": 2, "qk_norm": True, "output_gate": True})
    assert gated.q_proj.weight.shape == (2 * H * dh, D_MODEL)
    with torch.no_grad():
        w = torch.zeros(H, 2, dh, D_MODEL)
        w[:, 0] = plain.q_proj.weight.view(H, dh, D_MODEL)
        gated.load_state_dict({**plain.state_dict(), "q_proj.weight": w.flatten(0, 2)})
        x = torch.randn(2, 7, D_MODEL)
        torch.testing.assert_close(gated(x), 0.5 * plain(x))


def test_param_and_flop_counts_of_the_gate_and_o_bias():
    """The gate: q_proj twice as wide (weights, and bias with `bias`), its columns in the
    matmul count, 5 FLOPs per gated element; o_bias: o_proj's d_model bias alone."""
    H, dh, T = 4, 8, 10
    base = attention.Params(heads=H, kv_heads=2)
    gated = attention.Params(heads=H, kv_heads=2, output_gate=True)
    assert attention.param_count(gated, D_MODEL) - attention.param_count(base, D_MODEL) == (
        D_MODEL * H * dh
    )
    f, f0 = attention.flops(gated, D_MODEL, 2, T), attention.flops(base, D_MODEL, 2, T)
    assert f.matmul - f0.matmul == 2 * 2 * T * D_MODEL * H * dh
    assert f.other - f0.other == 2 * 5 * T * H * dh
    d, d0 = (
        attention.decode_flops(gated, D_MODEL, 3, 9),
        attention.decode_flops(base, D_MODEL, 3, 9),
    )
    assert (d.matmul - d0.matmul, d.other - d0.other) == (3 * 2 * D_MODEL * H * dh, 3 * 5 * H * dh)
    a, a0 = attention.activations(gated, D_MODEL, T), attention.activations(base, D_MODEL, T)
    assert a[0] - a0[0] == 2 * T * H * dh
    o_only = attention.Params(heads=H, kv_heads=2, o_bias=True)
    assert attention.param_count(o_only, D_MODEL) - attention.param_count(base, D_MODEL) == D_MODEL
    assert attention.flops(o_only, D_MODEL, 2, T).other - f0.other == 2 * T * D_MODEL
    qkv = attention.Params(heads=H, kv_heads=2, bias=True, o_bias=False)
    both = attention.Params(heads=H, kv_heads=2, bias=True)
    assert attention.param_count(both, D_MODEL) - attention.param_count(qkv, D_MODEL) == D_MODEL
    gated_bias = attention.Params(heads=H, kv_heads=2, bias=True, output_gate=True)
    assert attention.param_count(gated_bias, D_MODEL) - attention.param_count(both, D_MODEL) == (
        D_MODEL * H * dh + H * dh
    )
    for p in (gated, o_only, qkv, gated_bias):
        block = build("attention", p.model_dump(exclude={"kind", "backend"}))
        assert attention.param_count(p, D_MODEL) == sum(t.numel() for t in block.parameters())
        assert (block.o_proj.bias is not None) == out_bias(p)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            block(torch.randn(2, T, D_MODEL))
        by_op = counter.get_flop_counts()["Global"]  # projections: mm / addmm (fused or not)
        projections = sum(n for op, n in by_op.items() if str(op).split(".")[1] in ("mm", "addmm"))
        products = 2 * 2 * dh * 55 * H * 2  # QK^T and PV over the 55 causal pairs
        assert projections == attention.flops(p, D_MODEL, 2, T).matmul - products
    local = local_attention.Params(heads=4, window=4, output_gate=True, o_bias=True)
    plain = local_attention.Params(heads=4, window=4)
    assert local_attention.param_count(local, D_MODEL) == (
        local_attention.param_count(plain, D_MODEL) + D_MODEL * D_MODEL + D_MODEL
    )


def test_gate_and_o_bias_in_specs():
    """In a spec: a gated block sharing another's cache (the gate is the reader's own, from
    its q_proj) decodes as it runs forward; a kind without the field refuses it by name."""
    spec = {
        "model": {"d_model": 16, "vocab_size": 32, "max_seq_len": 16, "dtype": "float32"},
        "stack": [
            {"kind": "attention", "heads": 2, "output_gate": True, "o_bias": True, "name": "src"},
            {"kind": "local_attention", "heads": 2, "window": 3, "output_gate": True},
            {"kind": "attention", "heads": 2, "output_gate": True, "share_cache": "src"},
        ],
    }
    torch.manual_seed(0)
    model = archlab.build(archlab.compile(spec), dtype=torch.float32)
    ids = torch.randint(0, 32, (2, 9))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2, 9)
        outs = [model.prefill(ids[:, :4], cache)]
        outs += [model.step(ids[:, t : t + 1], cache) for t in range(4, 9)]
    assert rel_err(torch.cat(outs, 1), full) < 1e-5
    for kind in ({"kind": "rat", "heads": 2, "chunk_size": 4}, {"kind": "mla", "heads": 2}):
        bad = {**spec, "stack": [{**kind, "output_gate": True}]}
        with pytest.raises(archlab.SpecError, match="output_gate: unknown field"):
            archlab.compile(bad)


def test_output_gate_in_the_compiled_sequence_path(monkeypatch):
    """The compiled sequence path (CUDA's for sdpa and flex), forced on here on the CPU with
    the aot_eager backend, gives the eager path's gated output and gradients."""
    monkeypatch.setattr(attention_layer, "COMPILE_OPTIONS", {"backend": "aot_eager"})
    monkeypatch.setattr(attention_layer, "_compiled_sequence", None)
    block = build("attention", {"heads": 4, "kv_heads": 2, "output_gate": True, "o_bias": True})
    x = torch.randn(2, 7, D_MODEL)

    def run(fused: bool):
        monkeypatch.setattr(attention_layer, "fuses_on", lambda x, backend: fused)
        block.zero_grad()
        y = block(x)
        y.backward(torch.ones_like(y))
        return [y.detach(), *(p.grad.clone() for p in block.parameters())]

    for a, b in zip(run(True), run(False), strict=True):
        assert rel_err(a, b) < 1e-5
    assert attention_layer._compiled_sequence is not None
