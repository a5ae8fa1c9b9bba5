"""The Triton decode-attention kernel (kernels/attention_decode.py) against float32
attention: grouped heads, head sizes that are not powers of two, lengths that are not
multiples of the tile, split and unsplit caches; and the attention block's decode step
through it. On the CPU under Triton's interpreter (tests/conftest.py sets it), small shapes,
float32; with a GPU also bf16 at the Table 1 shape against the float32 reference."""

from __future__ import annotations

import pytest
import torch
from numerics import rel_err
from torch.utils.flop_counter import FlopCounterMode

from archlab.kernels import attention_decode
from archlab.kernels.attention_decode import decode_attention
from archlab.kernels.attention_decode import decode_attention_reference as reference

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"


def inputs(B, H, K, D, S, dtype=torch.float32, device=DEVICE):
    g = torch.Generator(device="cpu").manual_seed(torch.seed() % 2**31)
    make = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    return make(B, H, D), make(B, S, K, D), make(B, S, K, D)


@pytest.fixture(params=[4, 1], ids=["per_sm4", "per_sm1"])
def tile(request, monkeypatch):
    """Programs per SM that the split aims for: 4 (the default) splits the small caches
    below, 1 leaves most of them whole."""
    monkeypatch.setattr(
        attention_decode, "GPU_TILE", attention_decode.Tile(programs_per_sm=request.param)
    )
    return request.param


@pytest.mark.parametrize(
    "B, H, K, D, S, length",
    [
        (2, 4, 4, 16, 40, 40),  # full cache, one head per key head
        (1, 4, 2, 16, 70, 37),  # grouped heads, length inside a tile, many splits
        (3, 6, 2, 20, 33, 1),  # head size not a power of two, a single key
        (2, 2, 1, 8, 100, 99),  # multi-query, one slot short of full
    ],
)
def test_matches_float32_attention(tile, B, H, K, D, S, length):
    q, k, v = inputs(B, H, K, D, S)
    before = (q.clone(), k.clone(), v.clone())
    y = decode_attention(q, k, v, length)
    assert y.shape == (B, H, D) and y.dtype == q.dtype
    assert rel_err(y, reference(q, k, v, length)) < 1e-5
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), before, strict=True))


def test_splits_used_on_the_cpu_shapes():
    """The shapes above cover both paths: one program per (batch row, key/value head) and
    split caches (4 programs per SM of a 4-SM "device" on the CPU)."""
    assert attention_decode.num_splits(8, 40, torch.device("cpu"), 16) == 2
    assert attention_decode.num_splits(16, 400, torch.device("cpu"), 16) == 1


def test_strided_cache_and_scale(tile):
    """A cache slice (last dim contiguous) and an explicit scale."""
    q, k, v = inputs(2, 4, 2, 16, 48)
    k_big, v_big = torch.cat([k, k], dim=-1)[..., :16], torch.cat([v, v], dim=-1)[..., :16]
    assert not k_big.is_contiguous()
    y = decode_attention(q, k_big, v_big, 30, scale=0.1)
    ref = reference(q * (0.1 / 16**-0.5), k, v, 30)
    assert rel_err(y, ref) < 1e-5


def test_bad_inputs_raise():
    q, k, v = inputs(2, 4, 2, 16, 8)
    with pytest.raises(ValueError, match="length 9 outside"):
        decode_attention(q, k, v, 9)
    with pytest.raises(ValueError, match="does not match"):
        decode_attention(q[:, :3], k, v, 4)
    with pytest.raises(ValueError, match="differ in shape"):
        decode_attention(q, k, v[:, :4], 4)


def test_flop_formula():
    q, k, v = inputs(2, 4, 2, 16, 8)
    with FlopCounterMode(display=False) as counter:
        decode_attention(q, k, v, 5)
    assert counter.get_total_flops() == 4 * 2 * 4 * 16 * 5


def test_torch_compile_traces_the_op():
    """fullgraph under aot_eager on the CPU (the interpreter), inductor on a GPU: the fake
    implementation traces, and the compiled call gives eager's result."""
    backend = "inductor" if CUDA else "aot_eager"
    q, k, v = inputs(2, 4, 2, 16, 40)

    def attend(q, k, v):
        return decode_attention(q * 2, k, v, 33) + 1

    compiled = torch.compile(attend, backend=backend, fullgraph=True)
    assert rel_err(compiled(q, k, v), attend(q, k, v)) < 1e-6


@pytest.mark.parametrize("window", [None, 8])
def test_attention_block_step_through_the_kernel(monkeypatch, window):
    """The block's decode step with the kernel (forced on the CPU) equals its step with
    sdpa, for full attention with grouped heads and for a sliding window's ring buffer
    (prompt longer than the window)."""
    from archlab.blocks import attention, local_attention
    from archlab.blocks.attention import layer
    from archlab.blocks.base import ModelConfig
    from archlab.blocks.local_attention.layer import LocalAttentionBlock

    model = ModelConfig(d_model=32, vocab_size=64, max_seq_len=64, dtype="float32")
    kw = {"heads": 4, "kv_heads": 2, "head_dim": 8, "backend": "sdpa"}
    torch.manual_seed(0)
    if window is None:
        block = layer.AttentionBlock(attention.Params(**kw), model)
    else:
        block = LocalAttentionBlock(local_attention.Params(window=window, **kw), model)
    block.eval()
    x = torch.randn(2, 12, 32)
    calls = []
    kernel = attention_decode.decode_attention
    monkeypatch.setattr(
        attention_decode, "decode_attention", lambda *a: calls.append(1) or kernel(*a)
    )
    outs = {}
    for forced in (False, True):
        monkeypatch.setattr(layer, "triton_decodes", lambda k, q, f=forced: f)
        cache = block.allocate_cache(2, 16)
        with torch.no_grad():
            block.prefill(x[:, :10], cache)
            outs[forced] = torch.cat([block.step(x[:, t : t + 1], cache) for t in (10, 11)], 1)
    assert rel_err(outs[True], outs[False]) < 1e-5
    assert len(calls) == 2  # the forced steps ran the kernel, the others sdpa


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("length", [3104, 3105, 4096])
def test_cuda_bf16_table1_shape(tile, length):
    """The Table 1 attention model's step shape (16 heads of 128) in bf16: error against
    float32 at most twice that of float32 attention fed the bf16-rounded inputs, plus a
    floor; lengths aligned and not."""
    q, k, v = inputs(8, 16, 16, 128, 4096, torch.bfloat16)
    y = decode_attention(q, k, v, length)
    exact = reference(q.double(), k.double(), v.double(), length)
    rounded = reference(q.float(), k.float(), v.float(), length).bfloat16()
    assert rel_err(y, exact) <= 2 * rel_err(rounded, exact) + 1e-3


def test_step_reads_rope_angles_from_the_table(monkeypatch):
    """With a RoPE table made (as `select_backend` does on CUDA) the decode step reads its
    row instead of computing the angles; the outputs are the same."""
    from archlab.blocks import attention
    from archlab.blocks.attention import layer
    from archlab.blocks.base import ModelConfig
    from archlab.kernels import rope

    model = ModelConfig(d_model=32, vocab_size=64, max_seq_len=64, dtype="float32")
    torch.manual_seed(0)
    block = layer.AttentionBlock(attention.Params(heads=4, head_dim=8, backend="sdpa"), model)
    x = torch.randn(2, 12, 32)
    rope.cos_sin_table(64, 8, block.params.rope_theta, x.device)
    seen, outs = [], {}
    found = layer.existing_table
    for use in (True, False):
        monkeypatch.setattr(
            layer, "existing_table", lambda *a, u=use: seen.append(u) or (found(*a) if u else None)
        )
        cache = block.allocate_cache(2, 16)
        with torch.no_grad():
            block.prefill(x[:, :10], cache)
            outs[use] = torch.cat([block.step(x[:, t : t + 1], cache) for t in (10, 11)], 1)
    assert seen == [True, True, False, False]
    assert rel_err(outs[True], outs[False]) < 1e-6
