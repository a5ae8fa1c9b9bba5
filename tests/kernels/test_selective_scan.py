"""Mamba-1's Triton selective scan against the float32 reference: y, the final state and
every gradient (x, dt, A, B, C, the initial state), on fresh random inputs and a random dy;
inside a torch.compile'd function.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set by
conftest.py before any kernel module is imported) with small blocks (16 channels, chunks of
16 tokens), so T in {1, 16, 37, 69}, d_inner in {8, 24, 40} and d_state in {3, 4, 16, 64}
cover one and several chunks, a ragged last chunk, masked channels and a padded d_state.
float32 inputs: relative error <= 1e-5. bf16 inputs: relative error <= 2e-2 against the
float32 reference fed the same rounded inputs. The `gpu` test runs the real size (B=2,
T=4096, d_inner 4096, d_state 16, bf16) under docs/blocks.md's bf16 rule.
"""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

from numerics import rel_err  # noqa: E402

from archlab.kernels.selective_scan import triton as ss_triton  # noqa: E402
from archlab.kernels.selective_scan.reference import selective_scan  # noqa: E402
from archlab.kernels.selective_scan.triton import selective_scan_triton  # noqa: E402

if not HAS_CUDA:
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(ss_triton.selective_scan_fwd_kernel, InterpretedFunction):
        # imported before TRITON_INTERPRET was set
        pytest.skip("the scan was imported without the interpreter", allow_module_level=True)

DEVICE = "cuda" if HAS_CUDA else "cpu"
NAMES = ["y", "last", "dx", "ddt", "dA", "dB", "dC", "dstate"]


def make_inputs(B, T, E, N, dtype=torch.float32, with_state=True, dt_scale=1.5):
    """x, dt (softplus of a spread normal: fast and slow decays), A = -exp(normal) [E, N]
    (float32), B, C, the initial state (float32, or None) and the output gradients dy,
    dlast. Seeded by the caller (torch.manual_seed)."""
    x = torch.randn(B, T, E)
    dt = F.softplus(dt_scale * torch.randn(B, T, E) - 1.0)
    A = -torch.exp(torch.randn(E, N))
    Bm, Cm = torch.randn(B, T, N), torch.randn(B, T, N)
    state = torch.randn(B, E, N) if with_state else None
    dy, dlast = torch.randn(B, T, E), torch.randn(B, E, N)
    low = [t.to(DEVICE, dtype) for t in (x, dt)] + [A.to(DEVICE)]
    low += [t.to(DEVICE, dtype) for t in (Bm, Cm)]
    low += [state.to(DEVICE) if state is not None else None]
    return low, dy.to(DEVICE), dlast.to(DEVICE)


def run(fn, inputs, dy, dlast, cast=lambda t: t):
    """[y, last, dx, ddt, dA, dB, dC, (dstate)] of loss = <y, dy> + <last, dlast> (either
    term left out when its gradient is None; a leaf that the loss does not reach gets
    zeros); `cast` maps the leaves before `fn`."""
    leaves = [t.detach().clone().requires_grad_() for t in inputs if t is not None]
    args = [cast(t) for t in leaves] + ([None] if inputs[-1] is None else [])
    y, last = fn(*args)
    loss = (y * dy).sum() if dy is not None else 0
    loss = loss + ((last * dlast).sum() if dlast is not None else 0)
    loss.backward()
    grads = [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]
    return [y.detach(), last.detach()] + grads


def compare(inputs, dy, dlast):
    """Relative errors of the kernel against the float32 reference fed the same values,
    after checking dtypes (float32 outputs, gradients in their inputs' dtypes) and shapes."""
    got = run(selective_scan_triton, inputs, dy, dlast)
    ref = run(selective_scan, inputs, dy, dlast, cast=torch.Tensor.float)
    want = [torch.float32] * 2 + [t.dtype for t in inputs if t is not None]
    assert [g.dtype for g in got] == want
    assert [g.shape for g in got] == [r.shape for r in ref]
    assert all(torch.isfinite(g).all() for g in got)
    return {n: rel_err(g, r) for n, g, r in zip(NAMES, got, ref, strict=False)}


@pytest.mark.parametrize(
    "B, T, E, N, with_state, with_dlast",
    [
        (2, 37, 24, 4, True, True),
        (2, 69, 40, 16, True, False),
        (2, 69, 24, 16, False, True),
        (1, 16, 24, 3, False, False),
        (2, 1, 8, 64, True, True),
    ],
)
def test_float32_matches_reference(B, T, E, N, with_state, with_dlast):
    torch.manual_seed(1000 * T + 10 * E + N)
    inputs, dy, dlast = make_inputs(B, T, E, N, with_state=with_state)
    errs = compare(inputs, dy, dlast if with_dlast else None)
    assert max(errs.values()) <= 1e-5, errs


def test_bf16_inputs_match_reference():
    """x, dt, B, C in bf16 (A and the state float32, as the mamba block passes them)."""
    torch.manual_seed(7)
    inputs, dy, dlast = make_inputs(2, 37, 24, 16, dtype=torch.bfloat16)
    errs = compare(inputs, dy, dlast)
    assert max(errs.values()) <= 2e-2, errs


def test_strong_decay_stays_finite():
    """dt * A down to about -1000 (exp underflows to 0): no inf or NaN, same values."""
    torch.manual_seed(3)
    inputs, dy, dlast = make_inputs(1, 37, 24, 4, dt_scale=4.0)
    inputs[1] = inputs[1] * 20
    assert (inputs[1][..., None] * inputs[2]).min() < -500
    errs = compare(inputs, dy, dlast)
    assert max(errs.values()) <= 1e-5, errs


@pytest.mark.parametrize("used", ["y", "last"])
def test_one_output_used(used):
    """Only one output in the loss (the other's gradient is None, not zeros)."""
    torch.manual_seed(11 if used == "y" else 12)
    inputs, dy, dlast = make_inputs(2, 21, 24, 4)
    errs = compare(inputs, dy if used == "y" else None, dlast if used == "last" else None)
    assert max(errs.values()) <= 1e-5, errs


def test_non_contiguous_inputs():
    """B and C as slices of one projection (as the block's x_proj output), x in [T, B]
    memory order: the gradients reach the base tensors."""
    torch.manual_seed(5)
    B, T, E, N = 2, 21, 24, 4
    base_x = torch.randn(T, B, E, device=DEVICE)
    proj = torch.randn(B, T, 3 + 2 * N, device=DEVICE)
    (_, dt, A, _, _, _), dy, _ = make_inputs(B, T, E, N, with_state=False)
    grads = []
    for fn in (selective_scan_triton, selective_scan):
        leaf_x, leaf_p = base_x.clone().requires_grad_(), proj.clone().requires_grad_()
        _, Bm, Cm = leaf_p.split([3, N, N], dim=-1)
        x = leaf_x.transpose(0, 1)
        assert not (x.is_contiguous() or Bm.is_contiguous())
        y, last = fn(x, dt, A, Bm, Cm)
        ((y * dy).sum() + last.sum()).backward()
        grads.append((y.detach(), leaf_x.grad, leaf_p.grad))
    for got, want in zip(*grads, strict=True):
        assert rel_err(got, want) <= 1e-5


def test_empty_sequence_and_bad_shapes():
    torch.manual_seed(2)
    (x, dt, A, Bm, Cm, state), _, _ = make_inputs(2, 0, 8, 4)
    y, last = selective_scan_triton(x, dt, A, Bm, Cm, state)
    assert y.shape == (2, 0, 8) and torch.equal(last, state)
    (x, dt, A, Bm, Cm, state), _, _ = make_inputs(2, 3, 8, 4)
    for bad in (
        (x[0], dt, A, Bm, Cm, state),
        (x, dt[:, :2], A, Bm, Cm, state),
        (x, dt, A[:4], Bm, Cm, state),
        (x, dt, A, Bm[..., :3], Cm, state),
        (x, dt, A, Bm, Cm, state[:1]),
        (x, dt, torch.zeros(8, 512, device=DEVICE), Bm, Cm, None),
    ):
        with pytest.raises(ValueError):
            selective_scan_triton(*bad)


def test_torch_compile_runs_it():
    """Inside a torch.compile'd function the scan runs eagerly (a graph break, not an error):
    same output and gradients."""
    torch.manual_seed(4)
    inputs, dy, dlast = make_inputs(1, 9, 16, 4)
    fn = torch.compile(lambda *a: selective_scan_triton(*a), backend="aot_eager")
    got, want = run(fn, inputs, dy, dlast), run(selective_scan_triton, inputs, dy, dlast)
    for g, w in zip(got, want, strict=True):
        assert rel_err(g, w) <= 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_real_size_bf16_rule():
    """B=2, T=4096, d_inner 4096, d_state 16 (Mamba-1 1.3B's scan): x, dt, B, C in bf16;
    on y, the final state and every gradient, error(triton in bf16) <= 2 * error(reference
    fed the same bf16 inputs) + 0.002, both against the float32 reference."""
    torch.manual_seed(0)
    B, T, E, N = 2, 4096, 4096, 16
    x = F.silu(torch.randn(B, T, E, device="cuda"))
    dt = F.softplus(torch.randn(B, T, E, device="cuda") - 4.0)  # around mamba's dt init
    A = -torch.arange(1, N + 1, device="cuda", dtype=torch.float32).repeat(E, 1)
    A = A * torch.exp(0.3 * torch.randn(E, N, device="cuda"))
    Bm, Cm = torch.randn(B, T, N, device="cuda"), torch.randn(B, T, N, device="cuda")
    state = torch.randn(B, E, N, device="cuda")
    dy, dlast = torch.randn(B, T, E, device="cuda"), torch.randn(B, E, N, device="cuda")
    ref32 = run(selective_scan, [x, dt, A, Bm, Cm, state], dy, dlast)
    low = [x.bfloat16(), dt.bfloat16(), A, Bm.bfloat16(), Cm.bfloat16(), state]
    ref16 = run(selective_scan, low, dy, dlast, cast=torch.Tensor.float)
    tri16 = run(selective_scan_triton, low, dy, dlast)
    report = {}
    for name, f, lo, r in zip(NAMES, tri16, ref16, ref32, strict=True):
        assert torch.isfinite(f).all(), name
        report[name] = (rel_err(f, r), rel_err(lo, r))
    print(report)
    bad = {n: e for n, e in report.items() if not e[0] <= 2 * e[1] + 2e-3}
    assert not bad, report
