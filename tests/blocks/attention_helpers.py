"""Helpers shared by the attention and local_attention tests."""

from __future__ import annotations

import torch
from numerics import rel_err

from archlab.blocks.base import ModelConfig


def clone(block, backend: str, model: ModelConfig):
    twin = type(block)(block.params.model_copy(update={"backend": backend}), model)
    twin.load_state_dict(block.state_dict())
    return twin


def run(block, x: torch.Tensor, g: torch.Tensor):
    """Output, input gradient and parameter gradients for upstream gradient g."""
    x = x.detach().clone().requires_grad_(True)
    y = block(x)
    (y * g).sum().backward()
    return y.detach(), x.grad, {n: p.grad for n, p in block.named_parameters()}


def assert_grads_close(grads: dict, grads_ref: dict, tol: float = 1e-5) -> None:
    """Every parameter gradient within `tol`, relative to its norm, floored at 10% of the
    largest one: with one visible key (T = 1, window 1) q and k get exactly zero gradient
    from the reference and rounding noise from sdpa."""
    assert grads.keys() == grads_ref.keys()
    floor = 0.1 * max(g.norm().item() for g in grads_ref.values())
    for name, grad in grads.items():
        assert rel_err(grad, grads_ref[name], floor) < tol, name


def check_low_precision(kind, kwargs: dict, backend: str) -> None:
    """GPU check shared by attention and local_attention (`kind`: the kind's record):
    `backend` in bf16 against the float32 reference, on the output and every gradient; its
    error must be at most about twice that of the reference run in bf16 (flash-attention's
    rule)."""
    model = ModelConfig(d_model=512, vocab_size=64, max_seq_len=1024, dtype="bfloat16")
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    ref32 = kind.layer()(kind.params(**kwargs, backend="reference"), model)
    with torch.no_grad():
        for p in ref32.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ref16 = clone(ref32, "reference", model).to(cuda, torch.bfloat16)
    fast = clone(ref32, backend, model).to(cuda, torch.bfloat16)
    ref32 = ref32.to(cuda)
    for block in (ref32, ref16):
        block.select_backend(cuda)
    assert fast.select_backend(cuda) == backend
    x, g = torch.randn(2, 1024, 512, device=cuda), torch.randn(2, 1024, 512, device=cuda)
    want = run(ref32, x, g)
    low = run(ref16, x.bfloat16(), g.bfloat16())
    got = run(fast, x.bfloat16(), g.bfloat16())
    pairs = [("output", got[0], low[0], want[0]), ("input grad", got[1], low[1], want[1])]
    pairs += [(n, got[2][n], low[2][n], want[2][n]) for n in want[2]]
    for what, a, b, ref in pairs:
        err, ref_err = (a.float() - ref).abs().max(), (b.float() - ref).abs().max()
        floor = 1e-3 * ref.abs().max()
        assert err <= 2 * ref_err + floor, f"{what}: {err:.3g} vs bf16 reference {ref_err:.3g}"


def check_flex_prefix_and_decode(ref, fast, seq_len: int, d_model: int) -> None:
    """GPU check: the flex block on a prompt of `seq_len` tokens, then prefill and three
    decode steps, against the reference block (same weights) on the whole sequence."""
    ref, fast = ref.cuda(), fast.cuda()
    assert fast.select_backend("cuda") == "flex"
    x = torch.randn(2, seq_len + 3, d_model, device="cuda")
    with torch.no_grad():
        want = ref(x)
        assert rel_err(fast(x[:, :seq_len]), want[:, :seq_len]) < 1e-3
        cache = fast.allocate_cache(2, seq_len + 3)
        outs = [fast.prefill(x[:, :seq_len], cache)]
        outs += [fast.step(x[:, t : t + 1], cache) for t in range(seq_len, seq_len + 3)]
    assert rel_err(torch.cat(outs, dim=1), want) < 1e-3
