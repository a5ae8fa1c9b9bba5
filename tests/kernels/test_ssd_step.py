"""The SSD decode step in Triton (`kernels/ssd/triton_step.py`) against `reference.ssd_step`:
y and the new state in float32, the state updated in place, the inputs untouched,
torch.compile tracing the op.

Without a GPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set here and
by conftest.py before any kernel module is imported) with blocks of 8 rows, so P in {3, 12,
20} covers one block, a ragged one and several; N in {16, 32} and a masked N = 12. The `gpu`
test runs B 4, H 8, P 64, N 128 with bf16 x, B, C and a float32 state.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

from numerics import rel_err  # noqa: E402

from archlab.kernels.ssd import triton_step  # noqa: E402
from archlab.kernels.ssd.reference import ssd_step  # noqa: E402
from archlab.kernels.ssd.triton_step import ssd_step_triton  # noqa: E402

if not HAS_CUDA:
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(triton_step.ssd_step_kernel, InterpretedFunction):
        # imported before TRITON_INTERPRET was set (its custom op cannot be registered twice,
        # so the module is not reloaded)
        pytest.skip("triton_step was imported without the interpreter", allow_module_level=True)

DEVICE = "cuda" if HAS_CUDA else "cpu"


def step_inputs(Bsz, H, P, G, N, dtype=torch.float32, seed=0, device=DEVICE):
    """x [B,H,P], B, C [B,G,N] as strided views of one in_proj-like row (as the block passes
    them), dt > 0 and A < 0 float32, a random float32 state [B,H,P,N]."""
    gen = torch.Generator().manual_seed(seed)
    row = torch.randn(Bsz, H * P + 2 * G * N + 5, generator=gen).to(device, dtype)
    x, Bm, Cm, _ = row.split([H * P, G * N, G * N, 5], dim=-1)
    dt = torch.nn.functional.softplus(torch.randn(Bsz, H, generator=gen) - 1.0).to(device)
    A = -torch.exp(0.5 * torch.randn(H, generator=gen)).to(device)
    state = torch.randn(Bsz, H, P, N, generator=gen).to(device)
    return x.unflatten(-1, (H, P)), dt, A, Bm.unflatten(-1, (G, N)), Cm.unflatten(-1, (G, N)), state


def check_step(inputs, tol):
    """Run the kernel on a copy of the state; compare y and the state with the reference,
    check the state was updated in place and nothing else was written."""
    *args, state = inputs
    before = [a.clone() for a in args]
    got_state = state.clone()
    ptr = got_state.data_ptr()
    y = ssd_step_triton(*args, got_state)
    want_y, want_state = ssd_step(*args, state)
    assert y.dtype == got_state.dtype == torch.float32 and y.shape == want_y.shape
    assert got_state.data_ptr() == ptr
    assert rel_err(y, want_y) < tol, rel_err(y, want_y)
    assert rel_err(got_state, want_state) < tol, rel_err(got_state, want_state)
    for a, b in zip(args, before, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "H, P, G, N", [(4, 12, 1, 16), (4, 12, 2, 32), (4, 20, 4, 16), (2, 3, 1, 32), (6, 12, 3, 12)]
)
def test_step_matches_reference(H, P, G, N):
    check_step(step_inputs(3, H, P, G, N, seed=H * P + G * N), 1e-5)


def test_step_bf16_inputs_float32_state():
    check_step(step_inputs(3, 4, 12, 2, 16, dtype=torch.bfloat16, seed=5), 1e-5)


def test_steps_chain_like_the_reference():
    """Three steps in a row on the same state tensor."""
    x, dt, A, Bm, Cm, state = step_inputs(3, 4, 12, 2, 16, seed=7)
    got, want = state.clone(), state
    for t in range(3):
        y = ssd_step_triton(x * (t + 1), dt, A, Bm, Cm, got)
        want_y, want = ssd_step(x * (t + 1), dt, A, Bm, Cm, want)
        assert rel_err(y, want_y) < 1e-5
    assert rel_err(got, want) < 1e-5


def test_bad_shapes_and_state():
    x, dt, A, Bm, Cm, state = step_inputs(2, 4, 8, 2, 16)
    with pytest.raises(ValueError, match="float32"):
        ssd_step_triton(x, dt, A, Bm, Cm, state.bfloat16())
    with pytest.raises(ValueError, match="float32"):
        ssd_step_triton(x, dt, A, Bm, Cm, state.transpose(-1, -2).contiguous().transpose(-1, -2))
    with pytest.raises(ValueError, match="shapes"):
        ssd_step_triton(x, dt, A, Bm[:, :1].expand(2, 3, 16), Cm[:, :1].expand(2, 3, 16), state)
    with pytest.raises(ValueError, match="shapes"):
        ssd_step_triton(x[:, :, :4], dt, A, Bm, Cm, state)


def test_torch_compile_traces_the_op():
    """fullgraph under aot_eager on the CPU (the interpreter) and inductor on a GPU: same y
    and the same state mutation as eager."""
    backend = "inductor" if HAS_CUDA else "aot_eager"

    def step(x, dt, A, Bm, Cm, state):
        return ssd_step_triton(x * 2, dt, A, Bm, Cm, state) + 1

    x, dt, A, Bm, Cm, state = step_inputs(3, 4, 12, 2, 16, seed=3)
    s1, s2 = state.clone(), state.clone()
    y1 = torch.compile(step, backend=backend, fullgraph=True)(x, dt, A, Bm, Cm, s1)
    y2 = step(x, dt, A, Bm, Cm, s2)
    assert torch.equal(y1, y2) and torch.equal(s1, s2) and not torch.equal(s1, state)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("G", [1, 2])
def test_step_bf16_real_size_cuda(G):
    check_step(step_inputs(4, 8, 64, G, 128, dtype=torch.bfloat16, seed=11, device="cuda"), 1e-5)
