"""RAT's gated entry points (`rat_gated_triton`, `rat_prefill_triton(..., z=...)`): the rat
block's mixing with its output gate, o = sigmoid(z) * y, from the whole in_proj output,
against the reference (float64 on small shapes, float32 at real ones) on the output and
every gradient (the projection's and the gate bias's), on fresh random inputs. Without a
GPU under Triton's interpreter (tests/conftest.py sets it) at small float32 shapes; with
one in bf16 at real shapes under the bf16 rule of test_rat_triton.py."""

from __future__ import annotations

import pytest
import torch

from archlab.kernels.rat.reference import rat_core_reference, rat_prefill_cache_reference
from archlab.kernels.rat.shapes import scored_pairs
from archlab.kernels.rat.triton_ops import rat_gated_triton, rat_prefill_triton

CUDA = torch.cuda.is_available()


def projection(B, T, H, G, D, dtype=torch.float32, device="cpu"):
    """An in_proj output [B, T, 3HD + 2GD] (z, v, g, q, k), a gate bias and an output
    gradient, fresh random numbers at every call."""
    g = torch.Generator().manual_seed(torch.seed() % 2**31)
    make = lambda *shape: torch.randn(*shape, generator=g).to(device, dtype)  # noqa: E731
    return make(B, T, (3 * H + 2 * G) * D), make(H * D), make(B, T, H * D)


def views(proj, H, G):
    D = proj.shape[-1] // (3 * H + 2 * G)
    z, v, gl, q, k = proj.split([H * D, H * D, H * D, G * D, G * D], dim=-1)
    return (
        z,
        q.unflatten(-1, (G, D)),
        k.unflatten(-1, (G, D)),
        v.unflatten(-1, (H, D)),
        gl.unflatten(-1, (H, D)),
    )


def reference(proj, bias, H, G, L, rope):
    z, q, k, v, gl = views(proj, H, G)
    return torch.sigmoid(z) * rat_core_reference(q, k, v, gl, bias, L, rope).flatten(-2)


def output_and_grads(fn, proj, bias, do, cast):
    leaves = [x.detach().clone().requires_grad_() for x in (proj, bias)]
    o = fn(*(cast(x) for x in leaves))
    o.backward(do.to(o.dtype))
    return [o.detach().float()] + [x.grad.float() for x in leaves]


NAMES = ("o", "dproj", "dgate_bias")
# (B, T, H, G, D, chunk, rope): T off the chunk grid, chunk 1, a chunk cut into several tiles,
# no RoPE, one qk group, a chunk longer than T
CPU_CASES = [
    (2, 37, 2, 2, 16, 16, True),
    (1, 33, 2, 1, 16, 1, True),
    (1, 90, 2, 1, 16, 80, True),
    (1, 40, 4, 2, 32, 8, False),
    (1, 50, 2, 2, 16, 128, True),
]


@pytest.mark.parametrize("B,T,H,G,D,L,rope", CPU_CASES)
def test_gated_matches_reference(B, T, H, G, D, L, rope):
    proj, bias, do = projection(B, T, H, G, D, device="cuda" if CUDA else "cpu")
    got = output_and_grads(
        lambda p, b: rat_gated_triton(p, b, H, G, L, rope), proj, bias, do, lambda x: x
    )
    ref = output_and_grads(
        lambda p, b: reference(p, b, H, G, L, rope), proj, bias, do, lambda x: x.double()
    )
    for name, a, b in zip(NAMES, got, ref, strict=True):
        scale = b.abs().max().item() + 1e-6
        assert (a - b).abs().max().item() <= 1e-4 * scale + 1e-6, name


def test_gated_prefill_writes_the_gated_output_and_the_cache():
    B, T, H, G, D, L = 1, 21, 2, 2, 16, 8
    dev = "cuda" if CUDA else "cpu"
    proj, bias, _ = projection(B, T, H, G, D, device=dev)
    z, q, k, v, gl = views(proj, H, G)
    kc, vc = torch.randn(B, 4, H, D, device=dev), torch.randn(B, 4, H, D, device=dev)
    kc_ref, vc_ref = kc.clone(), vc.clone()
    o = rat_prefill_triton(q, k, v, gl, bias, kc, vc, L, z=z)
    rat_prefill_cache_reference(k, v, gl, bias, kc_ref, vc_ref, L)
    torch.testing.assert_close(o, reference(proj, bias, H, G, L, True), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(kc, kc_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vc, vc_ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="z"):
        rat_prefill_triton(q, k, v, gl, bias, kc, vc, L, z=z[..., :-1])


def test_gated_rejects_a_projection_of_another_width():
    proj, bias, _ = projection(1, 8, 2, 1, 16)
    with pytest.raises(ValueError, match="not"):
        rat_gated_triton(proj[..., :-3], bias, 2, 1, 4)


def test_gated_flop_count_and_fake():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    B, T, H, G, D, L = 1, 20, 2, 1, 16, 8
    proj, bias, _ = projection(B, T, H, G, D, device="cuda" if CUDA else "cpu")
    proj.requires_grad_()
    with FlopCounterMode(display=False) as counter:
        rat_gated_triton(proj, bias, H, G, L).sum().backward()
    assert counter.get_total_flops() == 3 * 4 * D * H * B * scored_pairs(T, L)
    with FakeTensorMode():
        o = rat_gated_triton(torch.empty(B, T, (3 * H + 2 * G) * D), torch.empty(H * D), H, G, L)
        assert o.shape == (B, T, H * D)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize(
    "B,T,L", [(2, 2048, 16), (1, 1000, 64), (1, 512, 1), (1, 700, 128), (1, 300, 1000)]
)
def test_gated_gpu_bf16(B, T, L):
    """The bf16 rule: the kernel's error against float32 at most twice that of the
    reference fed the same bf16 inputs, plus 2e-3 (relative to each tensor's norm)."""
    H, G, D = 16, 2, 128
    proj, bias, do = projection(B, T, H, G, D, torch.bfloat16, "cuda")
    got = output_and_grads(
        lambda p, b: rat_gated_triton(p, b, H, G, L), proj, bias, do, lambda x: x
    )
    ref = output_and_grads(
        lambda p, b: reference(p, b, H, G, L, True), proj, bias, do, lambda x: x.float()
    )
    low = output_and_grads(lambda p, b: reference(p, b, H, G, L, True), proj, bias, do, lambda x: x)
    for name, a, b, c in zip(NAMES, got, ref, low, strict=True):
        e_k, e_r = (a - b).norm() / b.norm(), (c - b).norm() / b.norm()
        assert torch.isfinite(a).all() and e_k <= 2 * e_r + 2e-3, (name, e_k.item(), e_r.item())
