"""Capturable steps, on the CPU: the `moe` block on its fast backend (`grouped`) and the
`rg_lru` block trace into one graph (torch.compile(fullgraph=True) fails on any graph
break: a data-dependent shape, `.item()`, `.tolist()`) and run no op that synchronises
with the host on CUDA (`HostSyncSpy`), so that their decode steps can be captured in CUDA
graphs; and fla's wrappers (kernels/*/fla_backend.py) look fla up without a graph break
(fla faked by plain torch functions: the lookup is what is checked, not fla's kernels).

`torch.cuda.set_sync_debug_mode` (what `archlab profile` checks a step with) needs CUDA;
`HostSyncSpy` lists, on any device, the ops that sync or copy host data on CUDA."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from archlab.blocks import moe, rg_lru
from archlab.blocks.base import ModelConfig
from archlab.blocks.moe import layer as moe_layer
from archlab.blocks.moe.layer import MoEBlock
from archlab.blocks.rg_lru import layer as rg_layer
from archlab.blocks.rg_lru.layer import RGLRUBlock
from archlab.kernels.linear_attn import fla_backend as la_fla
from archlab.kernels.lru import fla_backend as lru_fla
from archlab.kernels.lru.reference import linear_recurrence
from archlab.kernels.ssd import fla_backend as ssd_fla

D = 16
SYNCING = {
    "aten._local_scalar_dense.default": ".item(), int(), bool() of a tensor",
    "aten.lift_fresh.default": "a tensor made from Python data (a host-to-device copy)",
    "aten.lift_fresh_copy.default": "a tensor made from Python data (a host-to-device copy)",
    "aten.nonzero.default": "nonzero (its size depends on the data)",
    "aten.bincount.default": "bincount (its size depends on the data)",
    "aten.masked_select.default": "masked_select (its size depends on the data)",
    "aten._unique2.default": "unique (its size depends on the data)",
    "aten.repeat_interleave.Tensor": "repeat_interleave without output_size",
}


class HostSyncSpy(TorchDispatchMode):
    """Records the ops that would synchronise with the host on CUDA (`SYNCING`, and
    indexing by a boolean mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        if name in SYNCING:
            self.found.append(f"{name}: {SYNCING[name]}")
        if name == "aten.index.Tensor" and any(
            t is not None and t.dtype == torch.bool for t in args[1]
        ):
            self.found.append(f"{name}: indexing by a boolean mask")
        return func(*args, **(kwargs or {}))


def fullgraph(fn):
    """fn under torch.compile(fullgraph=True): any graph break raises."""
    torch._dynamo.reset()
    return torch.compile(fn, fullgraph=True, backend="eager", dynamic=False)


# ---- moe ------------------------------------------------------------------------------


def moe_block(monkeypatch, backend: str, **kwargs) -> MoEBlock:
    """A bf16 block on `backend`; grouped runs on the CPU through torch's fallback (the
    block picks it on CUDA only: `grouped_fits` is opened to the CPU here)."""
    if backend == "grouped" and not hasattr(torch, "_grouped_mm"):
        pytest.skip("needs torch._grouped_mm")
    monkeypatch.setattr(moe_layer, "grouped_fits", lambda x, d, h: d % 8 == 0 and h % 8 == 0)
    model = ModelConfig(d_model=D, vocab_size=64, max_seq_len=64, dtype="bfloat16")
    torch.manual_seed(0)
    block = MoEBlock(moe.Params(num_experts=4, top_k=2, hidden=8, **kwargs), model)
    block.backend = backend
    return block.to(torch.bfloat16)


@pytest.mark.parametrize("kwargs", [{}, {"shared_experts": 1, "capacity_factor": 0.5}])
def test_moe_grouped_traces_whole_and_never_syncs(monkeypatch, kwargs):
    """Decode step, prefill and the training forward (with a capacity factor: the
    fixed-shape cut), compiled whole, equal the eager calls; eagerly, forward and backward
    run no host-syncing op."""
    block = moe_block(monkeypatch, "grouped", **kwargs)
    x = torch.randn(2, 9, D, dtype=torch.bfloat16)
    block.eval()
    cache = block.allocate_cache(2, 16)
    for mode, fn, inp in [
        ("step", lambda x: block.step(x, cache), x[:, :1]),
        ("prefill", lambda x: block.prefill(x, cache), x),
    ]:
        torch.testing.assert_close(fullgraph(fn)(inp), fn(inp), rtol=0, atol=0, msg=mode)
    block.train()
    want = block(x)
    assert torch.equal(fullgraph(block)(x), want)
    with HostSyncSpy() as spy:
        block.step(x[:, :1], cache)
        xg = x.clone().requires_grad_(True)
        (block(xg).float().square().sum() + block.aux_loss).backward()
    assert spy.found == []


def test_moe_reference_syncs_only_in_its_loop(monkeypatch):
    """The reference backend (the readable loop over experts) reads the counts on the host
    for its split: the one graph break left; routing and the capacity cut are clean."""
    block = moe_block(monkeypatch, "reference", capacity_factor=0.5)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(block)(torch.randn(2, 9, D, dtype=torch.bfloat16))
    lines = [str(r.reason) + "".join(map(str, r.user_stack)) for r in explained.break_reasons]
    assert lines and all("loop_experts" in line for line in lines), lines


# ---- rg_lru ---------------------------------------------------------------------------


def rg_block(**kwargs) -> tuple[RGLRUBlock, torch.Tensor]:
    model = ModelConfig(d_model=D, vocab_size=64, dtype="float32")
    torch.manual_seed(0)
    block = RGLRUBlock(rg_lru.Params(**{**rg_lru.KIND.examples[0], **kwargs}), model)
    return block, torch.randn(2, 7, D)


def test_rg_lru_step_traces_whole_and_never_syncs():
    """The decode step (position 0 and later), prefill and forward, compiled whole, equal
    the eager calls; the step runs no host-syncing op (it made a tensor from the Python
    `cache.length == 0` each step, a host-to-device copy on CUDA)."""
    block, x = rg_block()
    eager, compiled = block.allocate_cache(2, 8), block.allocate_cache(2, 8)
    step = fullgraph(block.step)
    for t in range(3):  # position 0 (the reset), then positions 1 and 2
        want = block.step(x[:, t : t + 1], eager)
        assert torch.equal(step(x[:, t : t + 1], compiled), want), t
    assert torch.equal(compiled["rg_lru"], eager["rg_lru"]) and compiled.length == 3
    assert torch.equal(fullgraph(block.prefill)(x[:, 3:], compiled), block.prefill(x[:, 3:], eager))
    assert torch.equal(fullgraph(block)(x), block(x))
    with HostSyncSpy() as spy:
        block.step(x[:, :1], block.allocate_cache(2, 8))
        block.step(x[:, :1], eager)
    assert spy.found == []


# ---- fla's wrappers, fla faked --------------------------------------------------------


def fake_gla(q, k, v, g=None, gk=None, scale=1.0, initial_state=None, **kw):
    """A stand-in for fla's ops: plain torch, the shapes of fla's outputs."""
    final = initial_state * 2 if kw.get("output_final_state") else None
    return v * (1.0 + scale), final


def fake_hgrn(x, g, initial_state=None, output_final_state=False):
    h, final = linear_recurrence(g, x, initial_state)
    return h, (final if output_final_state else None)


@pytest.fixture
def fake_fla(monkeypatch):
    """fla's modules replaced by plain torch functions; `hopper` sets fla's guard flags
    (True: the gated backward is refused, as on an H200 with Triton 3.6)."""

    def install(hopper: bool) -> None:
        ns = types.SimpleNamespace
        modules = {
            "fla.ops.hgrn": ns(chunk_hgrn=fake_hgrn, fused_recurrent_hgrn=fake_hgrn),
            "fla.ops.simple_gla": ns(chunk_simple_gla=fake_gla),
            "fla.ops.gla": ns(chunk_gla=fake_gla, fused_recurrent_gla=fake_gla),
            "fla.ops.gated_delta_rule": ns(
                chunk_gated_delta_rule=fake_gla, fused_recurrent_gated_delta_rule=fake_gla
            ),
            "fla.ops.kda": ns(chunk_kda=fake_gla),
            "fla.ops.common.chunk_o": ns(
                IS_NVIDIA_HOPPER=hopper, TRITON_ABOVE_3_4_0=True, TRITON_ABOVE_3_7_1=False
            ),
        }
        for name, module in modules.items():
            monkeypatch.setitem(ssd_fla._MODULES, name, module)

    return install


@pytest.mark.parametrize("hopper", [False, True])
def test_fla_wrappers_look_fla_up_without_a_graph_break(fake_fla, hopper):
    """Every wrapper and kernel choice (and the refused-backward switch, which reads fla's
    flags in the traced call) compiles whole once fla is imported: no importlib, no
    functools.cache in the traced path."""
    fake_fla(hopper)
    assert ssd_fla.fla_importable() and lru_fla.fla_importable()
    B, T, H, P, N, K, V = 2, 5, 2, 4, 8, 8, 4
    a, x, h0 = F.logsigmoid(torch.randn(B, T, D)), torch.randn(B, T, D), torch.randn(B, D)
    for kernel in (None, "chunk", "recurrent"):
        fn = fullgraph(lambda *t, k=kernel: lru_fla.linear_recurrence_fla(*t, True, k))
        for got, want in zip(fn(a, x, h0), linear_recurrence(a, x, h0), strict=True):
            torch.testing.assert_close(got, want)
    ssd = [torch.randn(B, T, H, P, requires_grad=True), torch.rand(B, T, H), -torch.rand(H)]
    ssd += [torch.randn(B, T, 1, N), torch.randn(B, T, 1, N), torch.randn(B, H, P, N)]
    for kernel in (None, "simple_gla", "gla"):
        fullgraph(lambda *t, k=kernel: ssd_fla.ssd_fla(*t, True, k))(*ssd)
    qkv = [torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)]
    g, beta, s = F.logsigmoid(torch.randn(B, T, H)), torch.rand(B, T, H), torch.randn(B, H, K, V)
    qkv[2].requires_grad_(True)
    for kernel in la_fla.KERNELS:
        fullgraph(lambda *t, k=kernel: la_fla.gated_delta_rule_fla(*t, 0.5, s, True, k))(
            *qkv, g, beta
        )
    gk = F.logsigmoid(torch.randn(B, T, H, K))
    for kernel in ("chunk", "recurrent"):
        fullgraph(lambda *t, k=kernel: la_fla.gla_fla(*t, 0.5, s, True, k))(*qkv, gk)


def test_rg_lru_triton_step_traces_whole_with_fla_faked(fake_fla, monkeypatch):
    """The triton backend's decode step around fla's recurrent kernel (faked) compiles
    whole and equals the reference step. (fla's real ops are `torch.compiler.disable`d
    by fla itself: one graph break per call there, docs/profile.md.)"""
    fake_fla(False)
    monkeypatch.setattr(rg_layer, "triton_interpreted", lambda: True)  # lets it run on CPU
    block, x = rg_block()
    ref = block.allocate_cache(2, 8)
    block.step(x[:, :1], ref)
    block.backend = "triton"
    cache = block.allocate_cache(2, 8)
    block.step(x[:, :1], cache)
    got = fullgraph(block.step)(x[:, 1:2], cache)
    block.backend = "reference"
    torch.testing.assert_close(got, block.step(x[:, 1:2], ref))
