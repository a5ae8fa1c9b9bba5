"""The `mamba` (Mamba-1) block beyond the registry contract: the layer against a by-hand
model (Jamba's inner norms of dt, B and C included), FLOPs against FlopCounterMode, longer
decoding, names and init, checks, scaling and the backends (the triton one under Triton's
interpreter on the CPU)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from numerics import rel_err
from recurrent_helpers import assert_pieces_equal_forward, assert_triton_matches_reference
from torch.utils.flop_counter import FlopCounterMode

from archlab.blocks import mamba
from archlab.blocks.base import BackendUnavailable, ModelConfig, linear_flops
from archlab.blocks.mamba.layer import MambaBlock

D_MODEL = 16
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=64, dtype="float32")
EXAMPLES = mamba.KIND.examples


def make_block(params: dict, seed: int = 0) -> MambaBlock:
    torch.manual_seed(seed)
    block = MambaBlock(mamba.Params(**params), MODEL)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return block


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Jamba's RMSNorm (JambaRMSNorm), written out."""
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def by_hand(block: MambaBlock, u: torch.Tensor) -> torch.Tensor:
    """mamba_ssm's `Mamba.forward` without its fused kernels, token by token and channel by
    channel (sharing no code with the block); with inner_norms, HF's JambaMambaMixer's
    slow path: dt, B and C RMS-normalised after x_proj."""
    s = block.sizes
    x, z = (u @ block.in_proj.weight.T).chunk(2, dim=-1)
    x = block.conv1d(F.pad(x.transpose(1, 2), (s.kernel - 1, 0))).transpose(1, 2)
    x = F.silu(x)
    dt, Bm, Cm = (x @ block.x_proj.weight.T).split([s.dt_rank, s.d_state, s.d_state], -1)
    if block.params.inner_norms:
        eps = MODEL.norm_eps
        dt = rms(dt, block.dt_layernorm.weight, eps)
        Bm, Cm = rms(Bm, block.b_layernorm.weight, eps), rms(Cm, block.c_layernorm.weight, eps)
    dt = F.softplus(dt @ block.dt_proj.weight.T + block.dt_proj.bias)
    A = -block.A_log.exp()
    y = torch.zeros_like(x)
    for b in range(u.shape[0]):
        h = torch.zeros(s.inner, s.d_state)
        for t in range(u.shape[1]):
            dA = torch.exp(dt[b, t, :, None] * A)
            h = dA * h + (dt[b, t] * x[b, t])[:, None] * Bm[b, t][None, :]
            y[b, t] = h @ Cm[b, t]
    y = (y + block.D * x) * F.silu(z)
    return y @ block.out_proj.weight.T


@pytest.mark.parametrize("i", range(len(EXAMPLES)))
def test_forward_matches_layer_by_hand(i):
    block = make_block(EXAMPLES[i], seed=i)
    u = torch.randn(2, 9, D_MODEL)
    with torch.no_grad():
        assert rel_err(block(u), by_hand(block, u)) < 1e-5


@pytest.mark.parametrize("i", range(len(EXAMPLES)))
@pytest.mark.parametrize("seq_len", [1, 13])
def test_flops_match_flop_counter(i, seq_len):
    """The projections exactly; and the whole count: FlopCounterMode sees the projections,
    the conv (archlab's `other`) and the read-out <h, C> (2 E N per token), not the state
    update dt x B^T (an elementwise product), which archlab counts."""
    params, block = mamba.Params(**EXAMPLES[i]), make_block(EXAMPLES[i])
    s, tokens = block.sizes, 3 * seq_len
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(torch.randn(3, seq_len, D_MODEL))
    counts = counter.get_flop_counts()
    proj = sum(
        sum(counts[f"MambaBlock.{n}"].values())
        for n in ("in_proj", "x_proj", "dt_proj", "out_proj")
    )
    want = linear_flops(tokens, D_MODEL, 2 * s.inner) + linear_flops(tokens, s.inner, s.x_proj)
    want += linear_flops(tokens, s.dt_rank, s.inner) + linear_flops(tokens, s.inner, D_MODEL)
    assert proj == want
    predicted = mamba.flops(params, D_MODEL, 3, seq_len)
    conv = 2 * tokens * s.inner * s.kernel
    scan_update = 2 * tokens * s.inner * s.d_state
    assert counter.get_total_flops() == predicted.matmul - scan_update + conv
    assert predicted.other > conv


def test_decode_flops_and_cache_are_constant_in_length():
    params = mamba.Params(**EXAMPLES[0])
    assert mamba.decode_flops(params, D_MODEL, 2, 1) == mamba.flops(params, D_MODEL, 2, 1)
    assert mamba.decode_flops(params, D_MODEL, 2, 1) == mamba.decode_flops(params, D_MODEL, 2, 9)
    short = mamba.cache_bytes(params, D_MODEL, 2, 1, 2)
    assert short == mamba.cache_bytes(params, D_MODEL, 2, 10**6, 2)
    cache = make_block(EXAMPLES[0]).allocate_cache(2, 5, dtype=torch.bfloat16)
    assert cache["ssm"].dtype == torch.float32 and cache["conv"].dtype == torch.bfloat16
    assert cache["ssm"].shape == (2, 32, 4) and cache.nbytes() == short


@pytest.mark.parametrize("i", range(len(EXAMPLES)))
def test_long_decode_with_a_second_prefill_equals_forward(i):
    """prefill 17, step 10, prefill 12 more (continuing from the cache), step 6."""
    assert_pieces_equal_forward(make_block(EXAMPLES[i], seed=10 + i), D_MODEL)


def test_parameters_follow_mamba_names_and_init():
    block = MambaBlock(mamba.Params(), MODEL)  # d_inner 32, dt_rank ceil(16 / 16) = 1
    shapes = {n: tuple(p.shape) for n, p in block.named_parameters()}
    assert shapes == {
        "in_proj.weight": (64, 16), "conv1d.weight": (32, 1, 4), "conv1d.bias": (32,),
        "x_proj.weight": (33, 32), "dt_proj.weight": (32, 1), "dt_proj.bias": (32,),
        "A_log": (32, 16), "D": (32,), "out_proj.weight": (16, 32),
    }  # fmt: skip
    torch.testing.assert_close(block.A_log.exp()[3], torch.arange(1.0, 17.0))
    dt = F.softplus(block.dt_proj.bias)
    assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all() and (block.D == 1).all()


def test_inner_norms_names_counts_and_flops():
    """Jamba's norms: its parameter names and sizes (dt_rank + 2 d_state weights, init 1),
    their FLOPs (4 per element of dt, B, C per token) and activations; the norms change the
    output (they are applied, on every backend, before the scan)."""
    plain, normed = mamba.Params(dt_rank=2), mamba.Params(dt_rank=2, inner_norms=True)
    block = make_block(normed.model_dump(exclude={"kind"}))
    shapes = {n: tuple(p.shape) for n, p in block.named_parameters() if "layernorm" in n}
    assert shapes == {
        "dt_layernorm.weight": (2,), "b_layernorm.weight": (16,), "c_layernorm.weight": (16,)
    }  # fmt: skip
    assert (MambaBlock(normed, MODEL).dt_layernorm.weight == 1).all()
    assert mamba.param_count(normed, D_MODEL) == mamba.param_count(plain, D_MODEL) + 2 + 32
    assert mamba.param_count(normed, D_MODEL) == sum(p.numel() for p in block.parameters())
    f, f0 = mamba.flops(normed, D_MODEL, 2, 5), mamba.flops(plain, D_MODEL, 2, 5)
    assert f.matmul == f0.matmul and f.other - f0.other == 2 * 5 * 4 * (2 + 32)
    assert (
        mamba.decode_flops(normed, D_MODEL, 1, 7).other
        - mamba.decode_flops(plain, D_MODEL, 1, 7).other
        == 4 * 34
    )
    a, a0 = mamba.activations(normed, D_MODEL, 9), mamba.activations(plain, D_MODEL, 9)
    assert a[0] - a0[0] == 9 * 34 and a[1] == a0[1]
    assert mamba.Params().inner_norms is False
    u = torch.randn(1, 6, D_MODEL)
    with torch.no_grad():
        with_norms = block(u)
        block.params = plain.model_copy(update={"inner_norms": False})
        without = block(u)
    assert rel_err(with_norms, without) > 1e-3


def test_checks_scale_and_backends():
    assert mamba.Params(dt_rank=4).dt_rank == 4 and mamba.Params().dt_rank == "auto"
    with pytest.raises(ValueError):
        mamba.Params(dt_rank="big")
    assert mamba.check(mamba.Params(backend="cuda"), D_MODEL)[0][0] == "backend"
    assert mamba.check(mamba.Params(backend="triton"), D_MODEL) == []
    assert mamba.check(mamba.Params(backend="triton", d_state=512), D_MODEL)[0][0] == "d_state"
    assert mamba.check(mamba.Params(d_state=512), D_MODEL) == []  # auto: reference
    assert mamba.KIND.backends == ("triton", "reference")
    data = mamba.Params(dt_rank=128).model_dump()
    assert mamba.KIND.scale(data, 2048, 256)["dt_rank"] == 16
    assert mamba.KIND.scale(mamba.Params().model_dump(), 2048, 256)["dt_rank"] == "auto"
    block = make_block(EXAMPLES[0])
    assert block.backend == "reference" and block.select_backend("cuda") == "triton"
    assert make_block({"d_state": 512}).select_backend("cuda") == "reference"
    block.backend = None
    with pytest.raises(BackendUnavailable, match="select_backend"):
        block(torch.randn(1, 2, D_MODEL))


def test_triton_backend_needs_cuda_or_the_interpreter(monkeypatch):
    """`backend: triton` on the CPU: no backend until a CUDA device is selected, and a
    clear error (not a traceback from Triton) from select_backend and forward; under
    Triton's interpreter it runs on the CPU."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    block = make_block({**EXAMPLES[0], "backend": "triton"})
    assert block.backend is None
    with pytest.raises(BackendUnavailable, match="cannot run on cpu: needs a CUDA device"):
        block.select_backend("cpu")
    with pytest.raises(BackendUnavailable, match="select_backend"):
        block(torch.randn(1, 2, D_MODEL))
    assert block.select_backend("cuda") == "triton"
    with pytest.raises(BackendUnavailable, match="d_state <= 256"):
        make_block({"d_state": 512, "backend": "triton"}).select_backend("cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert block.select_backend("cpu") == "triton"
    assert make_block(EXAMPLES[0]).select_backend("cpu") == "reference"  # auto never does


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA here: test_contract_gpu runs it")
def test_triton_backend_matches_reference_under_interpreter():
    """Output, input and parameter gradients, prefill + steps: the triton backend (the
    kernel under Triton's interpreter, set by conftest.py) against the reference, for each
    example (d_state 4 and 3, two chunks of the interpreter's 16 tokens)."""
    from triton.runtime.interpreter import InterpretedFunction

    from archlab.kernels.selective_scan import triton as ss_triton

    if not isinstance(ss_triton.selective_scan_fwd_kernel, InterpretedFunction):
        pytest.skip("the scan was imported without the interpreter")
    for i, params in enumerate(EXAMPLES):
        assert_triton_matches_reference(make_block(params, seed=i), 21, D_MODEL, f"example {i}")
