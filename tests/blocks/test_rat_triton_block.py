"""The `rat` block's `triton` backend end to end (forward, every gradient, fused prefill,
decode) against its `reference` backend, with the same weights. On the CPU the kernels run
under Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 there)."""

from __future__ import annotations

import pytest
import torch
from numerics import rel_err

from archlab.blocks.base import ModelConfig
from archlab.blocks.rat import Params
from archlab.blocks.rat.layer import RATBlock
from archlab.kernels.runtime import triton_interpreted

D_MODEL = 32
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=64, max_seq_len=64, dtype="float32")
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not triton_interpreted(),
    reason="needs CUDA or Triton's interpreter",
)
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pair(seed: int, **kw) -> tuple[RATBlock, RATBlock]:
    """The same random weights under the reference and the triton backend."""
    torch.manual_seed(seed)
    ref = RATBlock(Params(**kw, backend="reference"), MODEL).to(DEVICE)
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    fast = RATBlock(Params(**kw, backend="triton"), MODEL).to(DEVICE)
    fast.load_state_dict(ref.state_dict())
    assert fast.select_backend(DEVICE) == "triton"
    ref.select_backend(DEVICE)
    return ref, fast


@pytest.mark.parametrize("T,L,G", [(13, 4, 2), (9, 16, 1), (8, 1, 2)])
def test_forward_and_gradients(T, L, G):
    ref, fast = pair(T, heads=2, chunk_size=L, qk_groups=G)
    x = torch.randn(2, T, D_MODEL, device=DEVICE, requires_grad=True)
    dy = torch.randn(2, T, D_MODEL, device=DEVICE)
    outs = []
    for block in (ref, fast):
        x.grad = None
        y = block(x)
        y.backward(dy)
        grads = {n: p.grad.clone() for n, p in block.named_parameters()}
        outs.append((y.detach(), x.grad.clone(), grads))
    (y_r, dx_r, g_r), (y_f, dx_f, g_f) = outs
    tol = 1e-4 if DEVICE.type == "cpu" else 3e-3  # fp32 interpreter / tf32 on a GPU
    assert rel_err(y_f, y_r) < tol and rel_err(dx_f, dx_r) < tol
    for name in g_r:
        assert rel_err(g_f[name], g_r[name]) < tol, name


@pytest.mark.parametrize("T,L,prompt", [(11, 4, 6), (10, 3, 9), (7, 16, 2)])
def test_fused_prefill_and_decode_match_reference(T, L, prompt):
    ref, fast = pair(T + L, heads=2, chunk_size=L)
    x = torch.randn(2, T, D_MODEL, device=DEVICE)
    results = []
    with torch.no_grad():
        for block in (ref, fast):
            cache = block.allocate_cache(2, T, device=DEVICE, dtype=torch.float32)
            outs = [block.prefill(x[:, :prompt], cache)]
            outs += [block.step(x[:, t : t + 1], cache) for t in range(prompt, T)]
            results.append((torch.cat(outs, 1), cache["k"].clone(), cache["v"].clone()))
    (y_r, k_r, v_r), (y_f, k_f, v_f) = results
    assert rel_err(y_f, y_r) < 1e-4
    assert rel_err(k_f, k_r) < 1e-4 and rel_err(v_f, v_r) < 1e-4


def test_triton_needs_a_power_of_two_head_dim():
    from archlab.blocks.base import BackendUnavailable

    with pytest.raises(BackendUnavailable, match="power of two"):
        RATBlock(Params(heads=4, chunk_size=4, backend="triton"), MODEL).select_backend(DEVICE)
