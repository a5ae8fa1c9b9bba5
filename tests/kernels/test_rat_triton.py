"""RAT's Triton kernels against the float32 reference: output, every gradient, decode step,
cache fill, FLOP count.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set below
before the kernel modules are decorated; modules imported earlier in the session without it
are reloaded) on small float32 shapes with tight tolerances. With a GPU the `gpu` tests run
real shapes in bf16 under the rule: the kernel's error against the float32 reference is at
most twice the error of the reference fed bf16-rounded inputs, plus a small floor.
"""

from __future__ import annotations

import importlib
import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

from archlab.kernels.rat import triton_attention, triton_decode, triton_scan  # noqa: E402

if not HAS_CUDA:
    from triton.runtime.interpreter import InterpretedFunction

    for _module, _kernel in (
        (triton_scan, "rat_scan_fwd_kernel"),
        (triton_attention, "rat_attn_fwd_kernel"),
        (triton_decode, "rat_decode_kernel"),
    ):
        if not isinstance(getattr(_module, _kernel), InterpretedFunction):
            importlib.reload(_module)

from numerics import rel_err  # noqa: E402

from archlab.kernels.rat.reference import (  # noqa: E402
    rat_core_reference,
    rat_decode_reference,
    rat_prefill_cache_reference,
)
from archlab.kernels.rat.shapes import scored_pairs  # noqa: E402
from archlab.kernels.rat.triton_ops import (  # noqa: E402
    rat_core_triton,
    rat_decode_triton,
    rat_prefill_cache_triton,
    rat_prefill_triton,
)

gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")


def make_inputs(B, T, H, G, D, dtype=torch.float32, device="cpu", seed=0):
    """q, k, v, gate_logits as strided views into one projection output [B, T, 3HD + 2GD]
    (z, v, g, q, k), as the RAT block produces them, and the gate bias."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    HD, GD = H * D, G * D
    proj = torch.randn(B, T, 3 * HD + 2 * GD, generator=gen).to(device=device, dtype=dtype)
    v = proj[..., HD : 2 * HD].unflatten(-1, (H, D))
    gl = proj[..., 2 * HD : 3 * HD].unflatten(-1, (H, D))
    q = proj[..., 3 * HD : 3 * HD + GD].unflatten(-1, (G, D))
    k = proj[..., 3 * HD + GD :].unflatten(-1, (G, D))
    bias = torch.randn(HD, generator=gen).to(device=device, dtype=dtype)
    return q, k, v, gl, bias


def run_both(B, T, H, G, D, L, rope, dtype, device, seed=0):
    """(kernel y and grads, float32 reference y and grads, low-precision reference ...)."""
    q, k, v, gl, bias = make_inputs(B, T, H, G, D, dtype, device, seed)
    dy = torch.randn(B, T, H, D, generator=torch.Generator().manual_seed(seed + 1)).to(device)

    def grads(fn, inputs, cast):
        leaves = [x.detach().clone().requires_grad_() for x in inputs]
        y = fn(*[cast(x) for x in leaves], L, rope)
        y.backward(dy.to(y.dtype))
        # y rounded to the kernel's output dtype (v's), as the gradients are to theirs
        return [y.detach().to(inputs[2].dtype).float()] + [x.grad.float() for x in leaves]

    inputs = (q, k, v, gl, bias)
    got = grads(rat_core_triton, inputs, lambda x: x)
    ref = grads(rat_core_reference, [x.float() for x in inputs], lambda x: x)
    low = grads(rat_core_reference, inputs, lambda x: x)  # reference fed the same rounded inputs
    return got, ref, low


NAMES = ("y", "dq", "dk", "dv", "dgate_logits", "dgate_bias")

# (B, T, H, G, D, chunk, rope): T off the chunk grid, chunk 1, a chunk longer than T, several
# short chunks per tile, and a chunk cut into several tiles (chunk > 64).
CPU_CASES = [
    (2, 37, 2, 2, 16, 16, True),
    (1, 33, 2, 1, 16, 1, True),
    (1, 130, 2, 2, 16, 64, True),
    (1, 50, 2, 2, 16, 128, False),
    (1, 20, 4, 2, 16, 64, True),
    (1, 90, 2, 1, 16, 80, True),
    (2, 24, 2, 2, 32, 3, True),
]


@pytest.mark.parametrize("B,T,H,G,D,L,rope", CPU_CASES)
def test_core_interpreted_float32(B, T, H, G, D, L, rope):
    if HAS_CUDA:
        pytest.skip("the interpreter cases run where there is no GPU")
    got, ref, _ = run_both(B, T, H, G, D, L, rope, torch.float32, "cpu", seed=T * L)
    for name, a, b in zip(NAMES, got, ref, strict=True):
        scale = b.abs().max().item() + 1e-6
        assert (a - b).abs().max().item() <= 2e-5 * scale + 1e-6, name


@pytest.mark.parametrize("channel_major", [True, False])
def test_core_interpreted_backward_channel_orders(channel_major, monkeypatch):
    """The backward scan's two program orders (channel blocks of a segment together, or
    every segment's first block first) on several channel blocks and segments."""
    if HAS_CUDA:
        pytest.skip("the interpreter cases run where there is no GPU")
    from archlab.kernels.rat import triton_scan

    monkeypatch.setattr(triton_scan, "CHANNEL_MAJOR", channel_major)
    got, ref, _ = run_both(2, 40, 2, 2, 32, 16, True, torch.float32, "cpu", seed=7)
    for name, a, b in zip(NAMES, got, ref, strict=True):
        scale = b.abs().max().item() + 1e-6
        assert (a - b).abs().max().item() <= 2e-5 * scale + 1e-6, name


def _decode_case(
    device, dtype, B, H, G, D, L, T_prompt, steps, use_tensor_pos, n_splits=None, own_last=False
):
    q, k, v, gl, bias = make_inputs(B, T_prompt + steps, H, G, D, dtype, device, seed=7)
    C_max = -(-(T_prompt + steps) // L) + 2
    kc = torch.randn(B, C_max, H, D, device=device, dtype=dtype)  # garbage beyond the prompt
    vc = torch.randn(B, C_max, H, D, device=device, dtype=dtype)
    kc_ref, vc_ref = kc.float().clone(), vc.float().clone()
    rat_prefill_cache_reference(
        k[:, :T_prompt].float(),
        v[:, :T_prompt].float(),
        gl[:, :T_prompt].float(),
        bias.float(),
        kc_ref,
        vc_ref,
        L,
    )
    rat_prefill_cache_triton(k[:, :T_prompt], v[:, :T_prompt], gl[:, :T_prompt], bias, kc, vc, L)
    errs = [(kc.float() - kc_ref).abs().max().item(), (vc.float() - vc_ref).abs().max().item()]
    for t in range(T_prompt, T_prompt + steps):
        args = (q[:, t], k[:, t], v[:, t], gl[:, t], bias)
        y_ref = rat_decode_reference(*[a.float() for a in args], kc_ref, vc_ref, t, L)
        if n_splits is not None:
            y = triton_decode.decode_step(
                *args, kc, vc, None, t, L, True, 10000.0, n_splits, own_last
            )
        else:
            pos = torch.tensor(t, device=device) if use_tensor_pos else t
            y = rat_decode_triton(*args, kc, vc, pos, L)
        errs.append((y.float() - y_ref).abs().max().item())
        errs.append((kc.float() - kc_ref).abs().max().item())
        errs.append((vc.float() - vc_ref).abs().max().item())
    return max(errs)


@pytest.mark.parametrize(
    "T_prompt,use_tensor_pos,n_splits,own_last",
    [
        (8, False, None, False),
        (9, True, None, False),
        (11, False, 3, False),
        (11, False, 3, True),
        (8, False, 1, True),
    ],
)
def test_decode_interpreted(T_prompt, use_tensor_pos, n_splits, own_last):
    """Prompts ending on, just past and inside a chunk (L = 4); steps cross a boundary; the
    own key folded in before or after the cache reads."""
    if HAS_CUDA:
        pytest.skip("the interpreter cases run where there is no GPU")
    err = _decode_case(
        "cpu", torch.float32, 2, 4, 2, 16, 4, T_prompt, 5, use_tensor_pos, n_splits, own_last
    )
    assert err < 1e-5


def test_prefill_fused_interpreted():
    if HAS_CUDA:
        pytest.skip("the interpreter cases run where there is no GPU")
    B, T, H, G, D, L = 1, 21, 2, 2, 16, 8
    q, k, v, gl, bias = make_inputs(B, T, H, G, D)
    kc, vc = torch.randn(B, 4, H, D), torch.randn(B, 4, H, D)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    y = rat_prefill_triton(q, k, v, gl, bias, kc, vc, L)
    rat_prefill_cache_reference(k, v, gl, bias, kc_ref, vc_ref, L)
    torch.testing.assert_close(y, rat_core_reference(q, k, v, gl, bias, L), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(kc, kc_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vc, vc_ref, rtol=1e-5, atol=1e-5)


def test_flop_counter_and_fake():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    B, T, H, G, D, L = 1, 20, 2, 1, 16, 8
    device = "cuda" if HAS_CUDA else "cpu"
    q, k, v, gl, bias = (x.requires_grad_() for x in make_inputs(B, T, H, G, D, device=device))
    with FlopCounterMode(display=False) as counter:
        y = rat_core_triton(q, k, v, gl, bias, L)
        y.sum().backward()
    fwd = 4 * D * H * B * scored_pairs(T, L)
    assert scored_pairs(T, L) == sum(t // L + 1 for t in range(T))
    assert counter.get_total_flops() == 3 * fwd
    with FakeTensorMode():
        proj = torch.empty(B, T, 3 * H * D + 2 * G * D)
        fv = proj[..., : H * D].unflatten(-1, (H, D))
        fq = proj[..., H * D : H * D + G * D].unflatten(-1, (G, D))
        y = rat_core_triton(fq, fq, fv, fv, torch.empty(H * D), L)
        assert y.shape == (B, T, H, D) and y.dtype == fv.dtype


# --- GPU: real shapes, bf16 -----------------------------------------------------------------


def bf16_rule(got, ref, low, floor=2e-3):
    """docs/blocks.md's bf16 rule per tensor: kernel error <= 2 x (error of the reference on
    bf16 inputs) + floor, and finite. Returns ({name: (kernel error, reference error)}, [names
    that break it]).

    Errors are relative to the reference tensor's norm, except for a tensor that is zero in
    exact arithmetic: dq and dk when no chunk is complete (every token's softmax then has a
    single key, so its gradient vanishes). There the kernel's bf16 rounding noise (delta
    comes from the bf16 output, as in flash attention) is measured against dv's norm, the
    layer's gradient scale, not against zero."""
    report, bad = {}, []
    dv_norm = ref[NAMES.index("dv")].norm().item()
    for name, a, b, c in zip(NAMES, got, ref, low, strict=True):
        denom = b.norm().item()
        if name != "y" and denom <= 1e-6 * dv_norm:
            denom = dv_norm
        e_k, e_r = (a - b).norm().item() / denom, (c - b).norm().item() / denom
        report[name] = (round(e_k, 5), round(e_r, 5))
        if not torch.isfinite(a).all() or not e_k <= 2 * e_r + floor:
            bad.append(name)
    return report, bad


def check_bf16_rule(got, ref, low):
    report, bad = bf16_rule(got, ref, low)
    assert not bad, (bad, report)
    return report


GPU_CASES = [
    (2, 2048, 16, 2, 128, 16, True),
    (1, 1000, 16, 2, 128, 64, True),
    (1, 700, 16, 2, 128, 128, True),
    (1, 512, 16, 1, 128, 1, True),
    (1, 300, 16, 2, 128, 1000, True),
    (2, 777, 8, 2, 64, 16, False),
]


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("B,T,H,G,D,L,rope", GPU_CASES)
def test_core_gpu_bf16(B, T, H, G, D, L, rope):
    got, ref, low = run_both(B, T, H, G, D, L, rope, torch.bfloat16, "cuda", seed=T + L)
    check_bf16_rule(got, ref, low)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("L", [16, 100])
def test_core_gpu_float32(L):
    got, ref, _ = run_both(1, 600, 16, 2, 128, L, True, torch.float32, "cuda", seed=L)
    for name, a, b in zip(NAMES, got, ref, strict=True):
        assert rel_err(a, b) < 1e-4, name


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize(
    "T_prompt,use_tensor_pos,n_splits", [(64, False, None), (65, True, None), (79, True, 4)]
)
def test_decode_gpu(T_prompt, use_tensor_pos, n_splits):
    err = _decode_case(
        "cuda", torch.float32, 3, 16, 2, 128, 16, T_prompt, 20, use_tensor_pos, n_splits
    )
    assert err < 1e-4


def test_bf16_rule_measures_vanishing_gradients_against_dv():
    """The rule's own logic, on the CPU: a reference gradient that is exactly zero is judged
    against dv's norm (small noise passes, a real error fails); any other tensor against
    its own norm."""
    gen = torch.Generator().manual_seed(3)

    def t(scale=1.0):
        return torch.randn(64, 16, generator=gen) * scale

    ref = [t(), torch.zeros(64, 16), torch.zeros(64, 16), t(), t(), t()]
    low = [r + t(1e-3) * r.abs().mean() for r in ref]
    noisy = [r + t(1e-4) for r in ref]
    assert bf16_rule(noisy, ref, low)[1] == []
    broken = list(noisy)
    broken[1] = t(0.5)  # dq far from zero
    assert bf16_rule(broken, ref, low)[1] == ["dq"]
    broken = list(noisy)
    broken[3] = ref[3] * 1.1  # dv 10% off its own norm
    assert bf16_rule(broken, ref, low)[1] == ["dv"]
