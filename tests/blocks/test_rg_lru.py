"""The `rg_lru` block (Griffin's recurrent block) beyond the registry contract: the scan
against its loop, the layer against a by-hand model of recurrentgemma's, the position-0
reset, the clipped sqrt gradient, FLOPs against FlopCounterMode, longer decoding, names,
checks, scaling and backend selection; fla's HGRN kernels (the `triton` backend) against
the float32 reference on outputs and every gradient, under Triton's interpreter on the CPU
(a fresh process, see `interpreter_main`) and on CUDA."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from numerics import rel_err
from recurrent_helpers import (
    assert_pieces_equal_forward,
    assert_triton_matches_reference,
    fla_present,
    run_under_interpreter,
)
from torch.utils.flop_counter import FlopCounterMode

from archlab.blocks import rg_lru
from archlab.blocks.base import BackendUnavailable, ModelConfig, linear_flops
from archlab.blocks.rg_lru import layer as rg_layer
from archlab.blocks.rg_lru.layer import RGLRUBlock, SqrtBoundDerivative
from archlab.kernels.lru.reference import linear_recurrence

D_MODEL = 16
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=64, dtype="float32")
EXAMPLES = rg_lru.KIND.examples


def make_block(params: dict, seed: int = 0) -> RGLRUBlock:
    torch.manual_seed(seed)
    block = RGLRUBlock(rg_lru.Params(**params), MODEL)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return block


def scan_inputs(B=2, T=9, D=24, seed=0, device="cpu"):
    """log a < 0, x and an initial state, float32."""
    gen = torch.Generator(device=device).manual_seed(seed)
    log_a = F.logsigmoid(torch.randn(B, T, D, generator=gen, device=device) + 2.0)
    x = torch.randn(B, T, D, generator=gen, device=device)
    return [log_a, x, torch.randn(B, D, generator=gen, device=device)]


def outputs_and_grads(fn, inputs, seed=1):
    """fn(*inputs) -> (h, state); backprop random cotangents; [h, state, input grads]."""
    inputs = [t.detach().clone().requires_grad_(True) for t in inputs]
    h, state = fn(*inputs)
    gen = torch.Generator(device=h.device).manual_seed(seed)
    dh = torch.randn(h.shape, generator=gen, device=h.device)
    ds = torch.randn(state.shape, generator=gen, device=h.device)
    ((h * dh).sum() + (state * ds).sum()).backward()
    return [h.detach(), state.detach()] + [t.grad for t in inputs]


NAMES = ["h", "final_state", "dlog_a", "dx", "dh0"]


@pytest.mark.parametrize("T", [1, 2, 7, 33])
def test_scan_equals_loop(T):
    inputs = scan_inputs(T=T, seed=T)
    got = outputs_and_grads(lambda *a: linear_recurrence(*a, method="scan"), inputs)
    want = outputs_and_grads(lambda *a: linear_recurrence(*a, method="loop"), inputs)
    for name, g, w in zip(NAMES, got, want, strict=True):
        assert rel_err(g, w) < 1e-5, name


def by_hand(block: RGLRUBlock, x: torch.Tensor) -> torch.Tensor:
    """recurrentgemma's RecurrentBlock and RGLRU, token by token, from position 0."""
    s, lru = block.sizes, block.rg_lru
    y = F.gelu(block.linear_y(x), approximate="tanh")
    u = block.linear_x(x)
    conv = torch.zeros_like(u) + block.conv_1d.b
    for t in range(x.shape[1]):
        for shift in range(min(s.kernel, t + 1)):  # w[K - 1 - shift] reads token t - shift
            conv[:, t] += block.conv_1d.w[s.kernel - 1 - shift] * u[:, t - shift]

    def block_diag(layer, v):
        parts = v.view(*v.shape[:-1], s.heads, -1)
        out = [parts[..., h, :] @ layer.w[h] + layer.b[h] for h in range(s.heads)]
        return torch.cat(out, dim=-1)

    h = torch.zeros(x.shape[0], s.width)
    out = []
    for t in range(x.shape[1]):
        r = torch.sigmoid(block_diag(lru.a_gate, conv[:, t]))
        i = torch.sigmoid(block_diag(lru.input_gate, conv[:, t]))
        a = torch.sigmoid(-lru.a_param) ** (rg_lru.C * r)
        mult = torch.ones_like(a) if t == 0 else torch.sqrt(1 - a**2)
        h = a * h + mult * (i * conv[:, t])
        out.append(h)
    return block.linear_out(torch.stack(out, dim=1) * y)


@pytest.mark.parametrize("i", range(len(EXAMPLES)))
def test_forward_matches_layer_by_hand(i):
    block = make_block(EXAMPLES[i], seed=i)
    x = torch.randn(2, 9, D_MODEL)
    with torch.no_grad():
        assert rel_err(block(x), by_hand(block, x)) < 1e-5


def test_sqrt_gradient_is_clipped():
    x = torch.tensor([0.0, 1e-9, 0.25], requires_grad=True)
    SqrtBoundDerivative.apply(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.tensor([1000.0, 1000.0, 1.0]))


@pytest.mark.parametrize("i", range(len(EXAMPLES)))
@pytest.mark.parametrize("seq_len", [1, 13])
def test_flops_match_flop_counter(i, seq_len):
    """FlopCounterMode sees the three linears, the two block-diagonal gates (archlab's
    matmul work, exactly) and the conv (archlab's `other`); the recurrence is elementwise."""
    params, block = rg_lru.Params(**EXAMPLES[i]), make_block(EXAMPLES[i])
    s, tokens = block.sizes, 3 * seq_len
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        block(torch.randn(3, seq_len, D_MODEL))
    counts = counter.get_flop_counts()
    linears = sum(sum(counts[f"RGLRUBlock.{n}"].values()) for n in ("linear_x", "linear_y"))
    assert linears == 2 * linear_flops(tokens, D_MODEL, s.width)
    predicted = rg_lru.flops(params, D_MODEL, 3, seq_len)
    conv = 2 * tokens * s.width * s.kernel
    assert counter.get_total_flops() == predicted.matmul + conv
    assert predicted.other > conv


def test_decode_flops_and_cache_are_constant_in_length():
    params = rg_lru.Params(**EXAMPLES[1])
    assert rg_lru.decode_flops(params, D_MODEL, 2, 7) == rg_lru.flops(params, D_MODEL, 2, 1)
    short = rg_lru.cache_bytes(params, D_MODEL, 2, 1, 2)
    assert short == rg_lru.cache_bytes(params, D_MODEL, 2, 10**6, 2)
    cache = make_block(EXAMPLES[1]).allocate_cache(2, 5, dtype=torch.bfloat16)
    assert cache["rg_lru"].dtype == torch.float32 and cache["conv"].dtype == torch.bfloat16
    assert cache["rg_lru"].shape == (2, 24) and cache.nbytes() == short


@pytest.mark.parametrize("i", range(len(EXAMPLES)))
def test_long_decode_with_a_second_prefill_equals_forward(i):
    """prefill 17, step 10, prefill 12 more (from position 27, no reset), step 6."""
    assert_pieces_equal_forward(make_block(EXAMPLES[i], seed=10 + i), D_MODEL)


def test_parameters_follow_recurrentgemma_names_and_init():
    block = RGLRUBlock(rg_lru.Params(heads=2), MODEL)
    shapes = {n: tuple(p.shape) for n, p in block.named_parameters()}
    assert shapes == {
        "linear_y.weight": (16, 16), "linear_y.bias": (16,), "linear_x.weight": (16, 16),
        "linear_x.bias": (16,), "linear_out.weight": (16, 16), "linear_out.bias": (16,),
        "conv_1d.w": (4, 16), "conv_1d.b": (16,), "rg_lru.a_param": (16,),
        "rg_lru.input_gate.w": (2, 8, 8), "rg_lru.input_gate.b": (2, 8),
        "rg_lru.a_gate.w": (2, 8, 8), "rg_lru.a_gate.b": (2, 8),
    }  # fmt: skip
    a = torch.sigmoid(-block.rg_lru.a_param)  # the base a: a^2 uniform in [0.9^2, 0.999^2]
    assert ((a > 0.9 - 1e-4) & (a < 0.999 + 1e-4)).all()


def test_checks_and_scale():
    assert rg_lru.check(rg_lru.Params(heads=3), D_MODEL)[0][0] == "heads"
    assert rg_lru.check(rg_lru.Params(heads=3, lru_width=24), D_MODEL) == []
    assert rg_lru.check(rg_lru.Params(backend="flex"), D_MODEL)[0][0] == "backend"
    small = rg_lru.KIND.scale(rg_lru.Params(heads=10, lru_width=2560).model_dump(), 2560, 256)
    assert (small["lru_width"], small["heads"]) == (256, 1)  # blocks of 256 kept
    small = rg_lru.KIND.scale(rg_lru.Params().model_dump(), 2048, 256)
    assert small["heads"] == 1 and small["lru_width"] is None


def test_backend_selection(monkeypatch):
    small = EXAMPLES[0]
    assert make_block(small).backend == "reference"  # auto on the CPU
    tri = RGLRUBlock(rg_lru.Params(**{**small, "backend": "triton"}), MODEL)
    with pytest.raises(BackendUnavailable, match="select_backend"):
        tri(torch.randn(1, 3, D_MODEL))
    with pytest.raises(BackendUnavailable, match="CUDA"):
        tri.select_backend("cpu")
    monkeypatch.setattr(rg_layer, "fla_importable", lambda: False)
    with pytest.raises(BackendUnavailable, match=r'pip install "archlab\[ssm\]"'):
        tri.select_backend("cuda")
    assert make_block(small).select_backend("cuda") == "reference"  # auto without fla
    monkeypatch.setattr(rg_layer, "fla_importable", lambda: True)
    assert make_block(small).select_backend("cuda") == "triton"


# ---- fla (the `triton` backend) against the reference --------------------------------------


@pytest.mark.skipif(not fla_present(), reason='needs fla: pip install "archlab[ssm]"')
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA here: the CUDA test runs fla")
@pytest.mark.parametrize("check", ["recurrent", "chunk", "block"])
def test_fla_under_triton_interpreter(check):
    """fla's kernels run on the CPU only under TRITON_INTERPRET=1, set before triton and fla
    are imported, with test_ssd.py's interpreter shims: hence a fresh process. A check the
    interpreter cannot run prints `skip: why`."""
    run_under_interpreter(__file__, check)


def kernel_errors(kernel: str, inputs: list[torch.Tensor]) -> dict[str, float]:
    """One fla kernel against the reference: h, the final state and every gradient, as
    relative errors. chunk_hgrn takes no gradient for the initial state nor reads the final
    state's: for it, the check runs without an initial state and with the final state
    detached (in both), as the block uses it."""
    from archlab.kernels.lru.fla_backend import linear_recurrence_fla

    inputs = inputs if kernel == "recurrent" else inputs[:2]

    def detached(h, final):
        return h, (final if kernel == "recurrent" else final.detach())

    got = outputs_and_grads(
        lambda *a: detached(*linear_recurrence_fla(*a, output_final_state=True, kernel=kernel)),
        inputs,
    )
    want = outputs_and_grads(lambda *a: detached(*linear_recurrence(*a)), inputs)
    return {n: rel_err(g, w) for n, g, w in zip(NAMES, got, want, strict=False)}


def _check_kernel(kernel: str) -> None:
    for T in (1, 9, 130):  # chunk_hgrn's chunk is 128: one chunk, two
        errors = kernel_errors(kernel, scan_inputs(T=T, seed=T))
        assert max(errors.values()) < 1e-5, (kernel, T, errors)


def _check_block() -> None:
    """Every example, triton (fla's fused recurrent kernel, the one the block runs) against
    reference: output, input gradient, every parameter gradient, and prefill + steps
    against the forward."""
    for i, params in enumerate(EXAMPLES):
        block = make_block(params, seed=i)
        assert_triton_matches_reference(block, 40, D_MODEL, f"example {i}")


def interpreter_main(check: str) -> None:
    from test_ssd import _interpreter_shims
    from triton.runtime.errors import InterpreterError

    assert os.environ.get("TRITON_INTERPRET") == "1"
    _interpreter_shims()
    try:
        if check == "block":
            _check_block()
        else:
            _check_kernel(check)
    except InterpreterError as e:
        print(f"skip: Triton's interpreter cannot run fla's {check} kernel: {e}")
        return
    print("ok")


def test_block_runs_only_the_recurrent_kernel(monkeypatch):
    """fla's chunk_hgrn returned wrong states on the block's own inputs on an H200
    (kernels/lru/fla_backend.py): every call, with or without gradients, a state or T = 1,
    runs fused_recurrent_hgrn (fla faked by the reference here)."""
    from archlab.kernels.lru import fla_backend

    calls = []

    def fake(name):
        def run(x, g, initial_state=None, output_final_state=False):
            calls.append(name)
            return linear_recurrence(g, x, initial_state)

        return run

    fakes = SimpleNamespace(chunk_hgrn=fake("chunk"), fused_recurrent_hgrn=fake("recurrent"))
    monkeypatch.setattr(fla_backend, "fla_module", lambda name: fakes)
    cases = ((300, False, False), (300, True, False), (300, True, True), (1, False, True))
    for T, grad, state in cases:
        log_a, x, h0 = scan_inputs(T=T, seed=T)
        log_a.requires_grad_(grad)
        fla_backend.linear_recurrence_fla(log_a, x, h0 if state else None, output_final_state=state)
    assert calls == ["recurrent"] * 4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("kernel", ["chunk", "recurrent"])
def test_fla_matches_reference_cuda(kernel):
    """A realistic shape (W = 2560, T = 4096, two sequences), float32 in both (the block
    passes float32 to fla): h, the final state and the gradients, relative error < 1e-4.
    fla is required on CUDA: its absence fails."""
    from archlab.kernels.lru.fla_backend import INSTALL_HINT, fla_importable

    assert fla_importable(), f"fla must import on CUDA: {INSTALL_HINT}"
    errors = kernel_errors(kernel, scan_inputs(2, 4096, 2560, seed=5, device="cuda"))
    assert max(errors.values()) < 1e-4, errors


if __name__ == "__main__":
    interpreter_main(sys.argv[1])
