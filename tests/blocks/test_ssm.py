"""The `ssm` block beyond the registry contract: an independent step-by-step model of the
layer, FLOPs against FlopCounterMode, longer decoding, backend selection, and the triton
backend against the float32 reference on CUDA."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from numerics import rel_err
from torch.utils.flop_counter import FlopCounterMode

from archlab.blocks import ssm
from archlab.blocks.base import BackendUnavailable, ModelConfig, linear_flops
from archlab.blocks.ssm import layer as ssm_layer
from archlab.blocks.ssm.layer import SSMBlock
from archlab.kernels import runtime
from archlab.kernels.ssd import fla_backend
from archlab.kernels.ssd.fla_backend import simple_gla_backward_refused
from archlab.kernels.ssd.reference import ssd_chunked, ssd_naive

D_MODEL = 16
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=64, dtype="float32", norm_eps=1e-5)


def make_block(params: dict, seed: int = 0, model: ModelConfig = MODEL) -> SSMBlock:
    torch.manual_seed(seed)
    block = SSMBlock(ssm.Params(**params), model)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return block


def mamba2_by_hand(block: SSMBlock, u: torch.Tensor) -> torch.Tensor:
    """The layer written out token by token from its definition, sharing no code with the
    block but the naive SSD recurrence."""
    s, W = block.sizes, block.in_proj.weight
    zxbcdt = u @ W.T
    z, xBC, dt = zxbcdt.split([s.inner, s.conv_dim, s.heads], dim=-1)
    w, b = block.conv1d.weight[:, 0], block.conv1d.bias  # [conv_dim, K]
    conv = torch.zeros_like(xBC) + b
    for t in range(u.shape[1]):
        for k in range(s.kernel):  # tap K-1 reads token t, tap 0 reads token t-K+1
            if t - (s.kernel - 1 - k) >= 0:
                conv[:, t] += w[:, k] * xBC[:, t - (s.kernel - 1 - k)]
    x, Bm, Cm = F.silu(conv).split([s.inner, s.bc, s.bc], dim=-1)
    dt = F.softplus(dt + block.dt_bias)
    x = x.unflatten(-1, (s.heads, s.head_dim))
    y, _ = ssd_naive(
        x,
        dt,
        -block.A_log.exp(),
        Bm.unflatten(-1, (s.groups, -1)),
        Cm.unflatten(-1, (s.groups, -1)),
    )
    y = (y + block.D[:, None] * x).flatten(2) * F.silu(z)
    y = y.unflatten(-1, (s.groups, -1))
    y = y / (y.pow(2).mean(-1, keepdim=True) + block.norm.eps).sqrt()
    return (y.flatten(2) * block.norm.weight) @ block.out_proj.weight.T


@pytest.mark.parametrize("i", range(len(ssm.KIND.examples)))
def test_forward_matches_layer_by_hand(i):
    block = make_block(ssm.KIND.examples[i], seed=i)
    u = torch.randn(2, 19, D_MODEL)
    with torch.no_grad():
        assert rel_err(block(u), mamba2_by_hand(block, u)) < 1e-5


def test_parameters_follow_mamba_names_and_init():
    block = SSMBlock(ssm.Params(head_dim=4), MODEL)  # 8 heads
    names = {n for n, _ in block.named_parameters()}
    assert names == {
        "in_proj.weight", "conv1d.weight", "conv1d.bias", "dt_bias", "A_log", "D",
        "norm.weight", "out_proj.weight",
    }  # fmt: skip
    dt = F.softplus(block.dt_bias)
    assert ((dt >= 1e-3 * 0.999) & (dt <= 0.1 * 1.001)).all()
    A = -block.A_log.exp()
    assert ((A >= -16.0001) & (A <= -0.9999)).all() and A.std() > 0
    assert (block.D == 1).all() and (block.norm.weight == 1).all()


@pytest.mark.parametrize("i", range(len(ssm.KIND.examples)))
@pytest.mark.parametrize("seq_len", [1, 14, 29, 71])
def test_flops_match_flop_counter(i, seq_len):
    """Projections exactly, and the whole counted matmul work (+ the conv, which
    FlopCounterMode counts and archlab puts in `other`) exactly, on the reference path.
    A chunk of one token makes products whose contraction has length 1: torch runs those as
    elementwise multiplies, which FlopCounterMode does not see, so there it counts less."""
    params = ssm.Params(**ssm.KIND.examples[i])
    block = make_block(ssm.KIND.examples[i])
    s = block.sizes
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(torch.randn(3, seq_len, D_MODEL))
    counts = counter.get_flop_counts()
    proj = sum(counts["SSMBlock.in_proj"].values()) + sum(counts["SSMBlock.out_proj"].values())
    tokens = 3 * seq_len
    assert proj == linear_flops(tokens, D_MODEL, s.in_proj) + linear_flops(tokens, s.inner, D_MODEL)
    predicted = ssm.flops(params, D_MODEL, 3, seq_len)
    conv = 2 * tokens * s.conv_dim * s.kernel
    L = params.chunk_size
    some_chunk_of_one = L == 1 or seq_len % L == 1 or seq_len == 1
    if some_chunk_of_one:
        assert proj + conv < counter.get_total_flops() < predicted.matmul + conv
    else:
        assert counter.get_total_flops() == predicted.matmul + conv
    assert predicted.other > conv


def test_decode_flops_and_cache_are_constant_in_length():
    params = ssm.Params(**ssm.KIND.examples[0])
    assert ssm.decode_flops(params, D_MODEL, 2, 1) == ssm.decode_flops(params, D_MODEL, 2, 10**6)
    short = ssm.cache_bytes(params, D_MODEL, 2, 1, 2)
    assert short == ssm.cache_bytes(params, D_MODEL, 2, 10**6, 2)
    cache = make_block(ssm.KIND.examples[0]).allocate_cache(2, 5, dtype=torch.bfloat16)
    assert cache["ssm"].dtype == torch.float32 and cache["conv"].dtype == torch.bfloat16
    assert cache.nbytes() == short


@pytest.mark.parametrize("i", range(len(ssm.KIND.examples)))
def test_long_decode_with_a_second_prefill_equals_forward(i):
    """prefill 37, step 20, prefill 30 more (continuing from the cache), step 13."""
    block = make_block(ssm.KIND.examples[i], seed=10 + i)
    u = torch.randn(2, 100, D_MODEL)
    with torch.no_grad():
        full = block(u)
        cache = block.allocate_cache(2, 100)
        outs = [block.prefill(u[:, :37], cache)]
        outs += [block.step(u[:, t : t + 1], cache) for t in range(37, 57)]
        outs.append(block.prefill(u[:, 57:87], cache))
        outs += [block.step(u[:, t : t + 1], cache) for t in range(87, 100)]
    assert cache.length == 100
    assert rel_err(torch.cat(outs, dim=1), full) < 1e-5


def test_backend_selection(monkeypatch):
    small = ssm.KIND.examples[0]
    assert make_block(small).backend == "reference"  # auto on the CPU
    triton_block = SSMBlock(ssm.Params(**{**small, "backend": "triton"}), MODEL)  # resolved later
    with pytest.raises(BackendUnavailable, match="select_backend"):
        triton_block(torch.randn(1, 3, D_MODEL))
    with pytest.raises(BackendUnavailable, match="CUDA"):
        triton_block.select_backend("cpu")
    monkeypatch.setattr(ssm_layer, "fla_importable", lambda: False)
    with pytest.raises(BackendUnavailable, match=r'pip install "archlab\[ssm\]"'):
        triton_block.select_backend("cuda")
    assert make_block(small).select_backend("cuda") == "reference"  # auto without fla
    monkeypatch.setattr(ssm_layer, "fla_importable", lambda: True)
    refused = "fla refuses chunk_simple_gla's backward here"
    monkeypatch.setattr(ssm_layer, "simple_gla_backward_refused", lambda: refused)
    block = make_block(small)
    assert block.select_backend("cuda") == "triton" and block.backend_note == refused
    assert block.select_backend("cpu") == "reference" and block.backend_note is None
    assert ssm.check(ssm.Params(**{**small, "backend": "flex"}), D_MODEL)[0][0] == "backend"


# ---- the triton backend's glue with fla faked (fla's kernels need CUDA) ------------------


def fake_causal_conv1d(calls):
    """fla's causal_conv1d contract in torch: the state [B, C, W] holds the last W inputs
    (its oldest never read), y = act(conv + bias) in x's dtype, final state [B, C, W]."""

    def run(x, weight, bias=None, initial_state=None, output_final_state=False, activation=None):
        calls.append(("conv", x, weight.shape, initial_state, output_final_state, activation))
        B, T, C = x.shape
        h0 = x.new_zeros(B, C, weight.shape[1]) if initial_state is None else initial_state
        seq = torch.cat([h0.to(x.dtype), x.transpose(1, 2)], dim=-1)
        y = F.conv1d(seq[..., 1:], weight[:, None], bias, groups=C).transpose(1, 2)
        y = F.silu(y) if activation == "silu" else y
        return y, (seq[..., -weight.shape[1] :] if output_final_state else None)

    return run


def fake_rmsnorm_fn(calls):
    def run(x, weight, bias, z=None, eps=1e-6, group_size=None, norm_before_gate=True):
        calls.append(("norm", x, z, group_size, norm_before_gate, eps))
        h = (x.float() * F.silu(z.float())).unflatten(-1, (-1, group_size))
        h = h * torch.rsqrt(h.square().mean(-1, keepdim=True) + eps)
        return (h.flatten(-2) * weight.float()).to(x.dtype)

    return run


def fake_ssd_fla(x, dt, A, Bm, Cm, state=None, output_final_state=False):
    y, final = ssd_chunked(x, dt, A, Bm, Cm, 4, state)
    return y.to(x.dtype), (final if output_final_state else None)


@pytest.fixture
def faked_fla(monkeypatch):
    """fla's conv and gated norm faked (in fla's module table), the scan by the reference,
    and the triton backend let onto the CPU; yields the list of glue calls."""
    calls = []
    conv = types.SimpleNamespace(causal_conv1d=fake_causal_conv1d(calls))
    norm = types.SimpleNamespace(rmsnorm_fn=fake_rmsnorm_fn(calls))
    monkeypatch.setitem(fla_backend._MODULES, "fla.modules.causal_conv1d", conv)
    monkeypatch.setitem(fla_backend._MODULES, "fla.modules.norm.layernorm_gated", norm)
    monkeypatch.setattr(ssm_layer, "ssd_fla", fake_ssd_fla)
    monkeypatch.setattr(ssm_layer, "triton_interpreted", lambda: True)
    return calls


def run_both(block, u, dy):
    """Output and gradients (input and parameters) of the block on triton, then reference."""
    results = []
    for backend in ("triton", "reference"):
        block.backend = backend
        block.zero_grad()
        x = u.clone().requires_grad_(True)
        out = block(x)
        (out.float() * dy).sum().backward()
        grads = [x.grad] + [p.grad.clone() for p in block.parameters()]
        results.append([out.detach()] + grads)
    return results


@pytest.mark.parametrize("i", range(len(ssm.KIND.examples)))
def test_triton_glue_runs_fla_conv_and_norm(faked_fla, i):
    """On triton the conv (+ bias + SiLU) and the gated norm are fla's (faked here): called
    on the in_proj output's slice as it is, with mamba's grouping and order (norm after the
    gate); outputs, gradients and the prefill/step/prefill chain equal the reference's."""
    params = ssm.KIND.examples[i]
    block = make_block(params, seed=i)
    s = block.sizes
    u, dy = torch.randn(2, 19, D_MODEL), torch.randn(2, 19, D_MODEL)
    got, want = run_both(block, u, dy)
    for g, w in zip(got, want, strict=True):
        assert rel_err(g, w) < 1e-4  # the scan's chunking differs: float32 rounding
    conv, norm = faked_fla[0], faked_fla[1]
    assert conv[0] == "conv" and conv[1].shape == (2, 19, s.conv_dim)
    assert conv[1].stride() == (19 * s.in_proj, s.in_proj, 1)  # no copy of the slice
    assert conv[2:] == ((s.conv_dim, s.kernel), None, False, "silu")
    assert norm[0] == "norm" and norm[1].shape == norm[2].shape == (2, 19, s.inner)
    assert norm[3:] == (s.inner // s.groups, False, MODEL.norm_eps)
    assert len(faked_fla) == 2  # the reference pass calls neither
    block.backend = "triton"
    with torch.no_grad():
        full = block(u)
        cache = block.allocate_cache(2, 19)
        outs = [block.prefill(u[:, :9], cache)]
        outs += [block.step(u[:, t : t + 1], cache) for t in range(9, 11)]
        outs += [block.prefill(u[:, 11:13], cache), block.prefill(u[:, 13:], cache)]
    assert rel_err(torch.cat(outs, dim=1), full) < 1e-5
    prefills = [c for c in faked_fla[3:] if c[0] == "conv"][1:]
    assert prefills[0][3] is not None and prefills[0][3].shape == (2, s.conv_dim, s.kernel)
    assert all(c[4] for c in prefills)


def test_triton_glue_in_bf16_rounds_the_norm_input_once(faked_fla):
    """In bf16 the norm gets y + D x rounded once from float32 (as mamba's fused path) and
    the block keeps the weights' dtype."""
    block = make_block(ssm.KIND.examples[0]).bfloat16()
    block.backend = "triton"
    u = torch.randn(2, 11, D_MODEL, dtype=torch.bfloat16)
    captured = {}
    real_output = block._output

    def spy(y, x, z, fla_glue=False):
        captured.update(y=y, x=x)
        return real_output(y, x, z, fla_glue)

    block._output = spy
    with torch.no_grad():
        out = block(u)
    assert out.dtype == torch.bfloat16
    _, y_in, z_in = faked_fla[1][:3]
    assert y_in.dtype == z_in.dtype == torch.bfloat16
    want = captured["y"].float() + block.D.float()[:, None] * captured["x"].float()
    assert torch.equal(y_in, want.flatten(-2).bfloat16())


def test_triton_glue_falls_back_without_fla_glue(faked_fla, monkeypatch):
    """An fla without causal_conv1d or the gated norm: triton keeps its PyTorch glue. On the
    CPU (no interpreter) triton says so before any kernel runs."""
    for name in fla_backend.CONV_MODULES:
        monkeypatch.setitem(fla_backend._MODULES, name, None)
    block = make_block(ssm.KIND.examples[1])
    u, dy = torch.randn(2, 7, D_MODEL), torch.randn(2, 7, D_MODEL)
    for g, w in zip(*run_both(block, u, dy), strict=True):
        assert rel_err(g, w) < 1e-4
    assert faked_fla == []
    monkeypatch.setattr(ssm_layer, "triton_interpreted", lambda: False)
    block.backend = "triton"
    with pytest.raises(BackendUnavailable, match="cannot run on cpu"):
        block(u)


@pytest.mark.parametrize("i", range(len(ssm.KIND.examples)))
def test_triton_step_updates_the_state_in_place(monkeypatch, i):
    """On triton, step runs kernels/ssd/triton_step.py (on the CPU under the interpreter) on
    the cache's SSM state in place: after a prefill, three steps give the reference's
    outputs and caches (examples: G 1 and 2, d_state 8, 4 and 6)."""
    if not torch.cuda.is_available() and not runtime.triton_interpreted():
        pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1")
    from archlab.kernels.ssd import triton_step

    device = "cuda" if torch.cuda.is_available() else "cpu"
    block = make_block(ssm.KIND.examples[i], seed=20 + i).to(device)
    u = torch.randn(2, 12, D_MODEL, device=device)
    real, calls, results = triton_step.ssd_step_triton, [], {}
    monkeypatch.setattr(triton_step, "ssd_step_triton", lambda *a: calls.append(a) or real(*a))
    for backend in ("reference", "triton"):
        block.backend = "reference"  # the prefill by the reference: fla is not needed here
        cache = block.allocate_cache(2, 12)
        with torch.no_grad():
            outs = [block.prefill(u[:, :9], cache)]
            block.backend = backend
            outs += [block.step(u[:, t : t + 1], cache) for t in range(9, 12)]
        results[backend] = (torch.cat(outs, dim=1), cache["conv"], cache["ssm"])
    assert [c[-1].data_ptr() for c in calls] == [cache["ssm"].data_ptr()] * 3
    for got, want in zip(results["triton"], results["reference"], strict=True):
        assert rel_err(got, want) < 1e-5


def compare_backends_cuda(with_grads: bool) -> tuple[list[str], list[str]]:
    """B=2, T=4096, d_model 2048: the float32 reference, the bf16 reference and the bf16
    triton block from the same weights; returns (report lines, names out of tolerance). The
    rule (docs/blocks.md): triton's error against float32 <= 2 x the bf16 reference's + 1e-3."""
    model = ModelConfig(d_model=2048, vocab_size=8, dtype="float32")
    torch.manual_seed(0)
    base = SSMBlock(ssm.Params(backend="reference"), model)
    with torch.no_grad():  # perturb the non-projection parameters at a realistic scale
        base.dt_bias.add_(0.5 * torch.randn_like(base.dt_bias))
        for p in (base.A_log, base.D, base.norm.weight, base.conv1d.bias):
            p.add_(0.2 * torch.randn_like(p))
    u = torch.randn(2, 4096, 2048, device="cuda")
    dy = torch.randn_like(u)
    runs = {}
    for name, backend, dtype in [
        ("ref32", "reference", torch.float32),
        ("ref16", "reference", torch.bfloat16),
        ("triton16", "triton", torch.bfloat16),
    ]:
        block = SSMBlock(ssm.Params(backend=backend), model)
        block.load_state_dict(base.state_dict())
        block = block.to("cuda", dtype)
        assert block.select_backend("cuda") == backend
        x = u.detach().to(dtype).clone().requires_grad_(with_grads)  # a fresh leaf
        with torch.set_grad_enabled(with_grads):
            y = block(x)
        runs[name] = {"out": y.detach()}
        if with_grads:
            (y.float() * dy).sum().backward()
            runs[name]["dx"] = x.grad
            runs[name].update({n: p.grad for n, p in block.named_parameters()})
        del block
    report, bad = [], []
    for key, want in runs["ref32"].items():
        e_tri, e_ref = rel_err(runs["triton16"][key], want), rel_err(runs["ref16"][key], want)
        report.append(f"{key}: triton {e_tri:.2e} ref-bf16 {e_ref:.2e}")
        if not e_tri <= 2 * e_ref + 1e-3:
            bad.append(key)
    print("\n".join(report))
    return report, bad


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_backend_forward_matches_reference_cuda():
    """The output, at the bf16 rule of docs/blocks.md (fla is required on CUDA)."""
    assert ssm_layer.fla_importable(), f"fla must be importable on CUDA: {ssm_layer.INSTALL_HINT}"
    report, bad = compare_backends_cuda(with_grads=False)
    assert not bad, "\n".join(report)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_triton_backend_gradients_match_reference_cuda():
    """The output, the input gradient and every parameter gradient, at the bf16 rule of
    docs/blocks.md (through chunk_gla where fla refuses chunk_simple_gla's backward, see
    kernels/ssd/fla_backend.py)."""
    assert ssm_layer.fla_importable(), f"fla must be importable on CUDA: {ssm_layer.INSTALL_HINT}"
    print(f"kernel note: {simple_gla_backward_refused()}")
    report, bad = compare_backends_cuda(with_grads=True)
    assert not bad, "\n".join(report)
