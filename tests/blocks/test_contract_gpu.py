"""The registry contract at realistic sizes on a CUDA GPU (d_model 2048, T = 4096).

For every kind: the fast backend that `auto` picks on CUDA, in bf16, against the float32
reference on the output and every gradient (docs/blocks.md's bf16 rule: at most about
twice the error of the reference itself run in bf16, plus a small floor); prefill +
token-by-token decode against the forward in float32; cache bytes and parameter counts.
Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch
from numerics import rel_err

from archlab.blocks.base import ModelConfig
from archlab.blocks.registry import kinds

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]

D_MODEL, T, B = 2048, 4096, 1
MODEL = ModelConfig(d_model=D_MODEL, vocab_size=32000, max_seq_len=T, dtype="bfloat16")
# every kind's first GPU example (a kind's record names them); composite kinds are
# covered through their branches
PARAMS = {
    name: dict(record.gpu_examples[0])
    for name, record in kinds().items()
    if record.gpu_examples and not record.composite
}


def run(block, x, dy):
    x = x.detach().clone().requires_grad_(True)
    y = block(x)
    y.backward(dy.to(y.dtype))
    grads = {n: p.grad.detach().clone() for n, p in block.named_parameters()}
    return y.detach(), x.grad.detach(), grads


def make(kind: str, backend: str, seed: int = 0) -> torch.nn.Module:
    """The block on CUDA with `backend` (kinds without backends ignore it), seeded."""
    record = kinds()[kind]
    raw = dict(PARAMS[kind])
    if "backend" in record.params.model_fields:
        raw["backend"] = backend
    torch.manual_seed(seed)
    block = record.build(record.params(**raw), MODEL).cuda().float()
    block.select_backend(torch.device("cuda"))
    return block


@pytest.mark.parametrize("kind", list(PARAMS))
def test_fast_backend_matches_reference_in_bf16(kind):
    ref = make(kind, "reference")
    low_ref = make(kind, "reference").bfloat16()
    fast = make(kind, "auto").bfloat16()
    x = torch.randn(B, T, D_MODEL, device="cuda")
    dy = torch.randn(B, T, D_MODEL, device="cuda")
    y_ref, dx_ref, g_ref = run(ref, x, dy)
    y_low, dx_low, g_low = run(low_ref, x.bfloat16(), dy)
    y_fast, dx_fast, g_fast = run(fast, x.bfloat16(), dy)
    report = {"backend": getattr(fast, "backend", None)}
    pairs = [("y", y_fast, y_low, y_ref), ("dx", dx_fast, dx_low, dx_ref)]
    pairs += [(n, g_fast[n], g_low[n], g_ref[n]) for n in g_ref]
    for name, f, low, r in pairs:
        err_fast, err_low = rel_err(f, r), rel_err(low, r)
        report[name] = (round(err_fast, 5), round(err_low, 5))
        assert err_fast <= 2 * err_low + 2e-3, (kind, name, err_fast, err_low, report)
    print(kind, report)


@pytest.mark.parametrize("kind", list(PARAMS))
def test_decode_equals_forward_float32(kind):
    mod = kinds()[kind]
    block = make(kind, "reference", seed=1)
    raw = {
        **PARAMS[kind],
        **({"backend": "reference"} if "backend" in mod.params.model_fields else {}),
    }
    params = mod.params(**raw)
    prompt, steps = T - 40, 40
    x = torch.randn(B, T, D_MODEL, device="cuda")
    with torch.no_grad():
        full = block(x)
        cache = block.allocate_cache(B, T, device=torch.device("cuda"), dtype=torch.float32)
        assert cache.nbytes() == mod.cache_bytes(params, D_MODEL, B, T, 4)
        outs = [block.prefill(x[:, :prompt], cache)]
        for t in range(prompt, prompt + steps):
            outs.append(block.step(x[:, t : t + 1], cache))
    assert rel_err(torch.cat(outs, 1), full) < 1e-4
    assert mod.param_count(params, D_MODEL) == sum(p.numel() for p in block.parameters())
