"""The `rnn` block's Triton core against the float32 reference: output, last state, every
gradient (u, gate_bias, initial state), the decode step, torch.compile.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set by
conftest.py before any kernel module is imported) with small tiles (16 tokens, 16 channels),
so T in {1, 5, 64, 70} and D in {8, 24} cover one and several tiles, a ragged last tile and
masked channels; a forward alone (no_grad) runs its own tile (32 tokens, 8 channels), and
is checked at other tiles too. float32 inputs: relative error <= 1e-5. 16-bit inputs:
relative error <= 2e-2 against the float32 reference fed the same rounded inputs. The `gpu`
tests run the real size (B=4, T=4096, D=2048, bf16) under the 16-bit rule.
"""

from __future__ import annotations

import os

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ["TRITON_INTERPRET"] = "1"

from numerics import rel_err  # noqa: E402

from archlab.kernels.rnn import triton_rnn  # noqa: E402
from archlab.kernels.rnn.reference import rnn_core_reference, rnn_step_reference  # noqa: E402
from archlab.kernels.rnn.triton_rnn import rnn_core_triton, rnn_step_triton  # noqa: E402

if not HAS_CUDA:
    from triton.runtime.interpreter import InterpretedFunction

    if not isinstance(triton_rnn.rnn_fwd_kernel, InterpretedFunction):
        # imported before TRITON_INTERPRET was set (its custom ops cannot be registered
        # twice, so the module is not reloaded)
        pytest.skip("triton_rnn was imported without the interpreter", allow_module_level=True)

DEVICE = "cuda" if HAS_CUDA else "cpu"
gpu = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2}


def make_inputs(B, T, D, dtype, with_state, seed, device=DEVICE, state_dtype=None):
    """u [B,T,3D] in `dtype`, gate_bias [D] float32 (spread so that gates range from fast
    to slow), the initial state (or None), and the output gradients dy, dlast."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(B, T, 3 * D, generator=gen).to(device, dtype)
    gate_bias = (2 * torch.randn(D, generator=gen)).to(device)
    state = torch.randn(B, D, generator=gen).to(device, state_dtype or dtype)
    dy = torch.randn(B, T, D, generator=gen).to(device, dtype)
    dlast = torch.randn(B, D, generator=gen).to(device)
    return u, gate_bias, state if with_state else None, dy, dlast


def run(fn, u, gate_bias, state, dy, dlast, cast=lambda x: x):
    """[y, last, du, dgate_bias, (dstate)] of loss = <y, dy> + <last, dlast>; `cast` maps
    the leaves before `fn` (the reference takes float32 copies of the same values)."""
    leaves = [x.detach().clone().requires_grad_() for x in (u, gate_bias, state) if x is not None]
    args = [cast(x) for x in leaves] + ([None] if state is None else [])
    y, last = fn(*args)
    ((y.float() * dy.float()).sum() + (last.float() * dlast).sum()).backward()
    return [y.detach(), last.detach()] + [x.grad for x in leaves]


def compare(B, T, D, dtype, with_state, seed, method="loop", state_dtype=None):
    """The kernel's outputs and gradients against the float32 reference: relative errors
    per tensor (names), after checking dtypes."""
    inputs = make_inputs(B, T, D, dtype, with_state, seed, state_dtype=state_dtype)
    got = run(rnn_core_triton, *inputs)
    ref = run(lambda *a: rnn_core_reference(*a, method=method), *inputs, cast=torch.Tensor.float)
    names = ["y", "last", "du", "dgate_bias", "dstate"][: len(got)]
    u, gate_bias, state = inputs[:3]
    want = [u.dtype, torch.float32, u.dtype, gate_bias.dtype]
    want += [state.dtype] if state is not None else []
    assert [g.dtype for g in got] == want
    assert [g.shape for g in got] == [r.shape for r in ref]
    return {n: rel_err(g, r) for n, g, r in zip(names, got, ref, strict=True)}


@pytest.mark.parametrize(
    "T, D, with_state",
    [
        (1, 8, False),
        (1, 24, True),
        (5, 8, True),
        (5, 24, False),
        (64, 8, False),
        (64, 24, True),
        (70, 8, True),
        (70, 24, False),
    ],
)
def test_core_float32_matches_reference(T, D, with_state):
    errs = compare(2, T, D, torch.float32, with_state, seed=T * 100 + D + with_state)
    assert max(errs.values()) <= TOL[torch.float32], errs


@pytest.mark.parametrize(
    "T, D, dtype, with_state",
    [(70, 24, torch.bfloat16, True), (5, 8, torch.bfloat16, False), (37, 24, torch.float16, True)],
)
def test_core_16bit_matches_reference(T, D, dtype, with_state):
    errs = compare(2, T, D, dtype, with_state, seed=T + D + 7)
    assert max(errs.values()) <= TOL[dtype], errs


def test_core_float32_state_with_bf16_inputs():
    """A float32 initial state (the cache in float32) with bf16 u: dstate comes in float32."""
    errs = compare(1, 20, 8, torch.bfloat16, True, seed=11, state_dtype=torch.float32)
    assert max(errs.values()) <= TOL[torch.bfloat16], errs


def test_core_non_contiguous_input():
    """u as a strided slice of a wider projection, in [T, B] memory order: the gradient
    reaches the base tensor."""
    B, T, D = 2, 21, 24
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(T, B, 4 * D, generator=gen).to(DEVICE)
    gate_bias = torch.randn(D, generator=gen).to(DEVICE)
    dy = torch.randn(B, T, D, generator=gen).to(DEVICE)
    grads = []
    for fn in (rnn_core_triton, rnn_core_reference):
        leaf = base.clone().requires_grad_()
        u = leaf.transpose(0, 1)[..., D:]
        assert not u.is_contiguous()
        y, last = fn(u, gate_bias)
        ((y * dy).sum() + last.sum()).backward()
        grads.append((y.detach(), leaf.grad))
    assert rel_err(grads[0][0], grads[1][0]) <= 1e-5
    assert rel_err(grads[0][1], grads[1][1]) <= 1e-5


@pytest.mark.parametrize("used", ["y", "last"])
def test_core_one_output_used(used):
    """Only one output in the loss (the other's gradient is None, not zeros)."""
    u, gate_bias, state, _, _ = make_inputs(2, 19, 8, torch.float32, True, seed=3)
    grads = []
    for fn in (rnn_core_triton, rnn_core_reference):
        leaves = [x.clone().requires_grad_() for x in (u, gate_bias, state)]
        y, last = fn(*leaves)
        (y.square().sum() if used == "y" else last.square().sum()).backward()
        grads.append([x.grad for x in leaves])
    for g, r in zip(*grads, strict=True):
        assert rel_err(g, r) <= 1e-5


def test_core_empty_sequence_and_bad_shapes():
    u, gate_bias, state, _, _ = make_inputs(2, 0, 8, torch.float32, True, seed=1)
    y, last = rnn_core_triton(u, gate_bias, state)
    assert y.shape == (2, 0, 8) and torch.equal(last, state)
    with pytest.raises(ValueError):
        rnn_core_triton(torch.zeros(2, 3, 25, device=DEVICE), gate_bias)
    with pytest.raises(ValueError):
        rnn_core_triton(torch.zeros(2, 3, 24, device=DEVICE), gate_bias[:4])
    with pytest.raises(ValueError):
        rnn_core_triton(torch.zeros(2, 3, 24, device=DEVICE), gate_bias, state[:1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("has_state", [False, True])
def test_step_matches_reference(dtype, has_state):
    B, D = 3, 24
    gen = torch.Generator().manual_seed(int(has_state) + 2 * (dtype == torch.bfloat16))
    u = torch.randn(B, 3 * D, generator=gen).to(DEVICE, dtype)
    gate_bias = torch.randn(D, generator=gen).to(DEVICE)
    state = torch.randn(B, D, generator=gen).to(DEVICE, dtype)
    y_ref, s_ref = rnn_step_reference(u.float(), gate_bias, state.float(), has_state)
    new_state = state.clone()
    y = rnn_step_triton(u, gate_bias, new_state, has_state)
    assert y.dtype == dtype and new_state.dtype == dtype
    assert rel_err(y, y_ref) <= TOL[dtype]
    assert rel_err(new_state, s_ref) <= (TOL[dtype] if dtype == torch.float32 else 1e-2)


def test_step_strided_state():
    """A state view with a row stride (a slice of a larger cache) is updated in place."""
    B, D = 2, 8
    u, gate_bias, _, _, _ = make_inputs(B, 1, D, torch.float32, False, seed=4)
    cache = torch.randn(B, 2 * D, device=DEVICE)
    ref_y, ref_s = rnn_step_reference(u[:, 0], gate_bias, cache[:, D:], True)
    y = rnn_step_triton(u[:, 0], gate_bias, cache[:, D:], True)
    assert rel_err(y, ref_y) <= 1e-6 and rel_err(cache[:, D:], ref_s) <= 1e-6


@pytest.mark.parametrize("with_state", [False, True])
def test_steps_equal_forward(with_state):
    """T decode steps (float32 state) reproduce the forward's y and last state."""
    B, T, D = 2, 12, 24
    u, gate_bias, state, _, _ = make_inputs(B, T, D, torch.float32, with_state, seed=9)
    y_fwd, last = rnn_core_triton(u, gate_bias, state)
    cache = state.clone() if with_state else torch.zeros(B, D, device=DEVICE)
    ys = [rnn_step_triton(u[:, t], gate_bias, cache, with_state or t > 0) for t in range(T)]
    assert rel_err(torch.stack(ys, dim=1), y_fwd) <= 1e-6
    assert rel_err(cache, last) <= 1e-6


def test_torch_compile_traces_the_op():
    """fullgraph (no graph break) with dynamic shapes, under aot_eager on the CPU (the
    interpreter) and inductor on a GPU; same values and gradients as eager."""
    backend = "inductor" if HAS_CUDA else "aot_eager"

    def loss(u, gate_bias, state):
        y, last = rnn_core_triton(u * 2, gate_bias, state)
        return y.float().sin().sum() + last.square().sum()

    compiled = torch.compile(loss, backend=backend, fullgraph=True, dynamic=True)
    for T in (7, 20):
        inputs = make_inputs(2, T, 8, torch.float32, True, seed=T)[:3]
        got, want = [], []
        for fn, out in ((compiled, got), (loss, want)):
            leaves = [x.clone().requires_grad_() for x in inputs]
            value = fn(*leaves)
            value.backward()
            out += [value.detach()] + [x.grad for x in leaves]
        for g, w in zip(got, want, strict=True):
            assert rel_err(g, w) <= 1e-5

    def step(u, gate_bias, state):
        return rnn_step_triton(u, gate_bias, state, True) * 2

    u, gate_bias, state, _, _ = make_inputs(2, 1, 8, torch.float32, True, seed=2)
    s1, s2 = state.clone(), state.clone()
    y1 = torch.compile(step, backend=backend, fullgraph=True)(u[:, 0], gate_bias, s1)
    y2 = step(u[:, 0], gate_bias, s2)
    assert torch.equal(y1, y2) and torch.equal(s1, s2)


# --- the forward-only tile ------------------------------------------------------------------


class LaunchSpy:
    """Stands for `triton_rnn.rnn_fwd_kernel`: records each launch's (BT, BD, num_warps)."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append((kwargs["BT"], kwargs["BD"], kwargs["num_warps"]))
            return self.kernel[grid](*args, **kwargs)

        return launch


@pytest.fixture
def fwd_launches(monkeypatch):
    spy = LaunchSpy(triton_rnn.rnn_fwd_kernel)
    monkeypatch.setattr(triton_rnn, "rnn_fwd_kernel", spy)
    return spy.launches


def test_tiles_tables_by_batch_and_mode(monkeypatch):
    """On a GPU: the training table without `forward_only`, the forward-only one with it,
    each by batch (the first entry whose minimum the batch reaches)."""
    monkeypatch.setattr(triton_rnn, "_interpret", lambda: False)
    monkeypatch.setattr(triton_rnn, "GPU_TILES", ((16, (32, 16, 1)), (0, (64, 16, 2))))
    monkeypatch.setattr(triton_rnn, "GPU_FORWARD_TILES", ((16, (16, 8, 4)), (0, (128, 32, 8))))
    cuda = torch.device("cuda")
    assert [triton_rnn.tiles(cuda, b) for b in (1, 15, 16, 64)] == [(64, 16, 2)] * 2 + [
        (32, 16, 1)
    ] * 2
    got = [triton_rnn.tiles(cuda, b, forward_only=True) for b in (1, 15, 16, 64)]
    assert got == [(128, 32, 8)] * 2 + [(16, 8, 4)] * 2


def test_shipped_tiles_are_powers_of_two():
    for table in (triton_rnn.GPU_TILES, triton_rnn.GPU_FORWARD_TILES):
        assert table[-1][0] == 0  # every batch finds an entry
        for _, tile in table:
            assert all(x > 0 and x & (x - 1) == 0 for x in tile), tile


def test_forward_only_tile_when_no_backward_follows(fwd_launches):
    """no_grad, inference_mode, or no input requiring grad: the forward-only tile; an input
    requiring grad (u, gate_bias or the state) with grad enabled: the training tile."""
    B, T, D = 2, 40, 24
    u, gate_bias, state, _, _ = make_inputs(B, T, D, torch.float32, True, seed=21)
    train = triton_rnn.tiles(u.device, B)
    fwd = triton_rnn.tiles(u.device, B, forward_only=True)
    assert train != fwd  # else this test would not tell them apart
    leaf = u.clone().requires_grad_()
    with torch.no_grad():
        rnn_core_triton(leaf, gate_bias, state)
    with torch.inference_mode():
        rnn_core_triton(u, gate_bias, state)
    rnn_core_triton(u, gate_bias, state)
    y, _ = rnn_core_triton(leaf, gate_bias, state)
    rnn_core_triton(u, gate_bias.clone().requires_grad_(), state)
    rnn_core_triton(u, gate_bias, state.clone().requires_grad_())
    assert fwd_launches == [fwd] * 3 + [train] * 3
    y.sum().backward()  # the training forward's checkpoints fit the backward's tile
    assert leaf.grad is not None


@pytest.mark.parametrize("tile", [None, (64, 32, 8), (16, 8, 1), (128, 64, 4)])
@pytest.mark.parametrize("T, D, with_state", [(5, 40, True), (70, 20, False), (150, 40, True)])
def test_forward_only_matches_reference(monkeypatch, fwd_launches, tile, T, D, with_state):
    """Under no_grad, at the shipped forward-only tile (None) and others (several tiles,
    ragged last tile, masked channels): y and the last state against float32."""
    if tile is not None:
        monkeypatch.setattr(triton_rnn, "CPU_FORWARD_TILES", tile)
        monkeypatch.setattr(triton_rnn, "GPU_FORWARD_TILES", ((0, tile),))
    u, gate_bias, state, _, _ = make_inputs(2, T, D, torch.float32, with_state, seed=T + D)
    with torch.no_grad():
        y, last = rnn_core_triton(u, gate_bias, state)
    y_ref, last_ref = rnn_core_reference(u, gate_bias, state)
    assert fwd_launches == [tile or triton_rnn.tiles(u.device, 2, forward_only=True)]
    assert rel_err(y, y_ref) <= 1e-5 and rel_err(last, last_ref) <= 1e-5


def test_torch_compile_picks_the_tile_by_grad(fwd_launches):
    """Compiled (fullgraph): under no_grad the forward-only tile, with an input requiring
    grad the training tile (a recompile), same values as eager."""
    backend = "inductor" if HAS_CUDA else "aot_eager"

    def core(u, gate_bias):
        return rnn_core_triton(u * 2, gate_bias)[0]

    compiled = torch.compile(core, backend=backend, fullgraph=True)
    u, gate_bias, _, _, _ = make_inputs(2, 20, 8, torch.float32, False, seed=22)
    with torch.no_grad():
        y = compiled(u, gate_bias)
    leaf = u.clone().requires_grad_()
    compiled(leaf, gate_bias).sum().backward()
    fwd, train = (triton_rnn.tiles(u.device, 2, forward_only=f) for f in (True, False))
    assert fwd_launches == [fwd, train]
    assert rel_err(y, core(u, gate_bias)) <= 1e-6 and leaf.grad is not None


# --- real sizes on a GPU --------------------------------------------------------------------


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("B, T", [(4, 4096), (16, 1024)])  # each of triton_rnn.GPU_TILES
def test_core_bf16_real_size(with_state, B, T):
    errs = compare(B, T, 2048, torch.bfloat16, with_state, seed=17, method="scan")
    assert max(errs.values()) <= TOL[torch.bfloat16], errs


@pytest.mark.gpu
@gpu
def test_core_float32_real_size_odd_shape():
    """float32 at a T and D that are not multiples of the GPU tiles."""
    errs = compare(2, 1000, 2000, torch.float32, True, seed=18, method="scan")
    assert max(errs.values()) <= 1e-4, errs


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("has_state", [False, True])
def test_step_bf16_real_size(has_state):
    B, D = 512, 2048
    gen = torch.Generator().manual_seed(19)
    u = torch.randn(B, 3 * D, generator=gen).to(DEVICE, torch.bfloat16)
    gate_bias = torch.randn(D, generator=gen).to(DEVICE)
    state = torch.randn(B, D, generator=gen).to(DEVICE, torch.bfloat16)
    y_ref, s_ref = rnn_step_reference(u.float(), gate_bias, state.float(), has_state)
    y = rnn_step_triton(u, gate_bias, state, has_state)
    assert rel_err(y, y_ref) <= 1e-2 and rel_err(state, s_ref) <= 1e-2
