"""What the tests of the recurrent kinds (gated_deltanet, gla, mamba, rg_lru) share:
decoding in pieces against the forward, a fast backend against the reference on every
gradient, and running fla's kernels under Triton's interpreter in a fresh process."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from numerics import rel_err


def assert_pieces_equal_forward(block, d_model: int) -> None:
    """prefill 17, step 10, prefill 12 more (continuing from the cache), step 6: the
    outputs equal the forward over all 45 tokens."""
    x = torch.randn(2, 45, d_model)
    with torch.no_grad():
        full = block(x)
        cache = block.allocate_cache(2, 45)
        outs = [block.prefill(x[:, :17], cache)]
        outs += [block.step(x[:, t : t + 1], cache) for t in range(17, 27)]
        outs.append(block.prefill(x[:, 27:39], cache))
        outs += [block.step(x[:, t : t + 1], cache) for t in range(39, 45)]
    assert cache.length == 45
    assert rel_err(torch.cat(outs, dim=1), full) < 1e-5


def assert_triton_matches_reference(block, T: int, d_model: int, label: str) -> None:
    """`block` run on its `triton` and its `reference` backend: output (through dx), the
    input gradient, every parameter gradient, and prefill of T - 4 tokens + 4 steps."""
    x, dy = torch.randn(2, T, d_model), torch.randn(2, T, d_model)
    results = {}
    for backend in ("reference", "triton"):
        block.backend = backend  # CUDA-only by select_backend; the interpreter runs it
        block.zero_grad()
        xb = x.clone().requires_grad_(True)
        (block(xb) * dy).sum().backward()
        grads = {n: p.grad.clone() for n, p in block.named_parameters()}
        with torch.no_grad():
            cache = block.allocate_cache(2, T)
            outs = [block.prefill(x[:, : T - 4], cache)]
            outs += [block.step(x[:, t : t + 1], cache) for t in range(T - 4, T)]
        results[backend] = {"dx": xb.grad, "decoded": torch.cat(outs, 1), **grads}
    for name, want in results["reference"].items():
        err = rel_err(results["triton"][name], want)
        assert err < 1e-4, f"{label} {name}: rel err {err:.2e}"


def fla_present() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("fla", "einops"))


def run_under_interpreter(test_file: str, check: str) -> None:
    """Run `python test_file check` with TRITON_INTERPRET=1 set before triton and fla are
    imported (with test_ssd.py's interpreter shims importable): a fresh process. It must
    print `ok` last, or `skip: why` for a check the interpreter cannot run."""
    tests = Path(__file__).resolve().parents[1]
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    path = [str(tests), str(tests / "kernels"), env.get("PYTHONPATH")]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    run = subprocess.run(
        [sys.executable, test_file, check], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    last = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    if last.startswith("skip: "):
        pytest.skip(last[len("skip: ") :])
    assert last.endswith("ok"), run.stdout[-3000:]
