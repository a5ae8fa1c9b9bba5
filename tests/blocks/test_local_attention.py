"""local_attention: the window against a brute-force per-token loop, sdpa against the
float32 reference (outputs and every gradient), the ring-buffer cache, FLOPs."""

from __future__ import annotations

import math

import attention_helpers as helpers
import pytest
import torch
from attention_helpers import assert_grads_close, rel_err, run
from torch.utils.flop_counter import FlopCounterMode

from archlab.blocks import local_attention
from archlab.blocks.base import BackendUnavailable, ModelConfig
from archlab.blocks.local_attention.layer import LocalAttentionBlock

D_MODEL = 32
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=64, max_seq_len=128, dtype="float32")
# (batch, seq_len, params): window 1, window < T, window == T, window > T; T = 1 and odd.
CASES = [
    (2, 1, {"heads": 4, "window": 3}),
    (2, 9, {"heads": 4, "window": 1}),
    (2, 13, {"heads": 4, "kv_heads": 2, "window": 4, "qk_norm": True, "bias": True}),
    (1, 33, {"heads": 4, "kv_heads": 1, "head_dim": 8, "window": 7}),
    (3, 16, {"heads": 8, "kv_heads": 2, "head_dim": 6, "window": 16, "rope": False}),
    (2, 11, {"heads": 2, "kv_heads": 1, "window": 50, "qk_norm": True}),
]


def build(kwargs: dict, backend: str, seed: int = 0):
    """A block with every parameter randomized (so no path hides behind an init value)."""
    torch.manual_seed(seed)
    block = LocalAttentionBlock(local_attention.Params(**kwargs, backend=backend), MODEL)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return block


def clone(block, backend: str):
    return helpers.clone(block, backend, MODEL)


def brute_force(block, x_BTD: torch.Tensor) -> torch.Tensor:
    """Per token t, softmax over exactly the keys max(0, t - window + 1) .. t, in float64,
    from the block's own (float64) projections, qk-norm and RoPE."""
    B, T, _ = x_BTD.shape
    H, K, dh, window = block.heads, block.kv_heads, block.head_dim, block.params.window
    block64 = clone(block, "reference").double()
    with torch.no_grad():
        q, k, v = block64._project(x_BTD.double(), torch.arange(T))
        out = torch.zeros(B, T, H, dh, dtype=torch.float64)
        for t in range(T):
            keys = range(max(0, t - window + 1), t + 1)
            for h in range(H):
                kv = h // (H // K)
                scores = [(q[:, t, h] * k[:, j, kv]).sum(-1) / math.sqrt(dh) for j in keys]
                weights = torch.stack(scores, -1).softmax(-1)
                out[:, t, h] = sum(weights[:, n, None] * v[:, j, kv] for n, j in enumerate(keys))
        return block64.o_proj(out.reshape(B, T, H * dh))


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
@pytest.mark.parametrize("batch,seq_len,kwargs", CASES)
def test_window_matches_brute_force(batch, seq_len, kwargs, backend):
    block = build(kwargs, backend, seed=seq_len)
    x = torch.randn(batch, seq_len, D_MODEL)
    with torch.no_grad():
        assert rel_err(block(x), brute_force(block, x)) < 1e-5


def test_window_changes_the_output():
    base = build({"heads": 4, "window": 4}, "reference")
    x = torch.randn(1, 12, D_MODEL)
    wide = LocalAttentionBlock(base.params.model_copy(update={"window": 12}), MODEL)
    wide.load_state_dict(base.state_dict())
    with torch.no_grad():
        narrow_y, wide_y = base(x), wide(x)
    torch.testing.assert_close(narrow_y[:, :4], wide_y[:, :4])  # early tokens see all anyway
    assert rel_err(narrow_y[:, 4:], wide_y[:, 4:]) > 1e-2


@pytest.mark.parametrize("batch,seq_len,kwargs", CASES)
def test_sdpa_matches_reference_outputs_and_grads(batch, seq_len, kwargs):
    ref = build(kwargs, "reference", seed=seq_len + 1)
    fast = clone(ref, "sdpa")
    x, g = torch.randn(batch, seq_len, D_MODEL), torch.randn(batch, seq_len, D_MODEL)
    y_ref, dx_ref, grads_ref = run(ref, x, g)
    y, dx, grads = run(fast, x, g)
    assert rel_err(y, y_ref) < 1e-5
    assert rel_err(dx, dx_ref) < 1e-5
    assert_grads_close(grads, grads_ref)


@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_ring_buffer_holds_the_last_window(backend):
    block = build({"heads": 4, "kv_heads": 2, "window": 4}, backend)
    x = torch.randn(2, 15, D_MODEL)
    with torch.no_grad():
        full = block(x)
        _, k, _ = block._project(x, torch.arange(15))
        cache = block.allocate_cache(2, 64)
        assert cache["k"].shape == (2, 4, 2, 8)
        outs = [block.prefill(x[:, :11], cache)]
        for pos in range(7, 11):  # the prompt's last window, at slots pos % 4
            torch.testing.assert_close(cache["k"][:, pos % 4], k[:, pos])
        for t in range(11, 15):
            outs.append(block.step(x[:, t : t + 1], cache))
            torch.testing.assert_close(cache["k"][:, t % 4], k[:, t])
    assert rel_err(torch.cat(outs, 1), full) < 1e-5


def test_cache_shorter_than_window():
    block = build({"heads": 4, "window": 16}, "sdpa")
    x = torch.randn(1, 6, D_MODEL)
    cache = block.allocate_cache(1, 5)
    assert cache.nbytes() == local_attention.cache_bytes(block.params, D_MODEL, 1, 5, 4)
    with torch.no_grad():
        block.prefill(x[:, :3], cache)
        block.step(x[:, 3:4], cache)
        block.step(x[:, 4:5], cache)
        with pytest.raises(ValueError, match="does not fit"):
            block.step(x[:, 5:6], cache)


@pytest.mark.parametrize("batch,seq_len,kwargs", CASES)
def test_flops_match_flop_counter_and_pair_count(batch, seq_len, kwargs):
    block = build(kwargs, "reference")
    params, H, dh = block.params, block.heads, block.head_dim
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(torch.randn(batch, seq_len, D_MODEL))
    counts = counter.get_flop_counts()["Global"]
    projections = sum(n for op, n in counts.items() if str(op) in ("aten.mm", "aten.addmm"))
    assert counts[torch.ops.aten.bmm] == 2 * 2 * batch * H * seq_len * seq_len * dh
    pairs = sum(
        1 for i in range(seq_len) for j in range(seq_len) if j <= i and i - j < params.window
    )
    expected = projections + 2 * 2 * dh * pairs * H * batch
    assert local_attention.flops(params, D_MODEL, batch, seq_len).matmul == expected


@pytest.mark.parametrize("t", [0, 2, 3, 9])
def test_decode_flops_match_flop_counter(t):
    block = build({"heads": 4, "kv_heads": 2, "window": 3}, "reference")
    x = torch.randn(2, t + 1, D_MODEL)
    with torch.no_grad():
        cache = block.allocate_cache(2, 32)
        if t:
            block.prefill(x[:, :t], cache)
        with FlopCounterMode(display=False) as counter:
            block.step(x[:, t:], cache)
    decode = local_attention.decode_flops(block.params, D_MODEL, 2, t)
    assert decode.matmul == counter.get_total_flops()  # min(t + 1, window) keys


def test_backend_selection():
    assert build({"heads": 4, "window": 3}, "auto").backend == "sdpa"
    block = LocalAttentionBlock(local_attention.Params(heads=4, window=3, backend="flex"), MODEL)
    with pytest.raises(BackendUnavailable, match="flex"):
        block.select_backend(torch.device("cpu"))
    with pytest.raises(BackendUnavailable):
        block(torch.randn(1, 3, D_MODEL))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["flex", "sdpa"])
def test_cuda_bf16_backend_against_float32_reference(backend):
    kwargs = {"heads": 8, "kv_heads": 2, "window": 128, "qk_norm": True}
    helpers.check_low_precision(local_attention.KIND, kwargs, backend)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_auto_is_flex():
    block = LocalAttentionBlock(local_attention.Params(heads=4, window=8), MODEL)
    assert block.select_backend(torch.device("cuda")) == "flex"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("seq_len,window", [(1, 5), (77, 5), (300, 129), (300, 1)])
def test_cuda_flex_odd_lengths_and_decode(seq_len, window):
    ref = build({"heads": 4, "kv_heads": 2, "head_dim": 16, "window": window}, "reference")
    helpers.check_flex_prefix_and_decode(ref, clone(ref, "flex"), seq_len, D_MODEL)
