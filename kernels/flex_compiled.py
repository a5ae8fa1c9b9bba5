"""FlexAttention compiled once per process, shared by the attention blocks
(`blocks/_attention_common.py`) and RAT's flex backend (`kernels/rat/flex.py`): one
`torch.compile` wrapper each for `flex_attention` and `create_block_mask`, so that every
caller shares their compiled graphs. Their calls never fall back to eager execution
(`compile_guarded`)."""

from __future__ import annotations

import functools
import importlib.util

import torch

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover - torch without FlexAttention
    create_block_mask = flex_attention = None


def flex_available(device: torch.device | str) -> bool:
    """FlexAttention compiles to Triton kernels for CUDA devices only: True where torch has
    it, Triton is installed and `device` is a CUDA device."""
    return (
        flex_attention is not None
        and torch.device(device).type == "cuda"
        and importlib.util.find_spec("triton") is not None
    )


RECOMPILE_LIMIT = 64
"""Graphs per compiled function (one per length and mask). Dynamo's default is 8, past
which it runs the function eagerly, and eager flex_attention materializes the whole score
matrix: a benchmark that had compiled RAT's flex backend at a few lengths then asked local
attention at 4K for 64 GiB (benchmarks/results/2026-11-28b-h200, run 3)."""


class RecompileLimitError(RuntimeError):
    """A compiled FlexAttention function reached RECOMPILE_LIMIT graphs in this process."""


def compile_guarded(fn, **compile_kwargs):
    """torch.compile(fn) whose calls never fall back to eager: up to RECOMPILE_LIMIT graphs,
    then RecompileLimitError. Dynamo's settings for other code stay as they are; inside an
    enclosing torch.compile the call is traced under that compile's settings."""
    compiled = torch.compile(fn, **compile_kwargs)
    config = torch._dynamo.config
    limit_hit = getattr(torch._dynamo.exc, "FailOnRecompileLimitHit", ())

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            return compiled(*args, **kwargs)
        wanted = {"recompile_limit": RECOMPILE_LIMIT, "fail_on_recompile_limit_hit": True}
        patch = {name: value for name, value in wanted.items() if hasattr(config, name)}
        try:
            with config.patch(**patch):
                return compiled(*args, **kwargs)
        except limit_hit as e:
            raise RecompileLimitError(
                f"{fn.__name__} has been compiled for {RECOMPILE_LIMIT} shapes or masks in "
                "this process (archlab.kernels.flex_compiled.RECOMPILE_LIMIT); run fewer "
                "sequence lengths per process or raise the limit"
            ) from e

    return call


@functools.cache
def compiled_flex():
    """`flex_attention` under torch.compile (static shapes: one graph per length)."""
    return compile_guarded(flex_attention, dynamic=False)


@functools.cache
def compiled_create_block_mask():
    """`create_block_mask` under torch.compile: it never materializes the full mask."""
    return compile_guarded(create_block_mask)


def kernel_options(query_len: int) -> dict | None:
    """Below 128 queries, flex_attention's AUTO backend takes its decoding kernel, for
    which torch 2.11's inductor found no valid config on the H200 (float32, head_dim 16,
    77 queries: NoValidChoicesError, benchmarks/results/2026-11-28-h200). Ask for the main
    Triton kernel there; one query (decode) and full blocks keep AUTO, as run on the H200.
    Every flex_attention call of archlab passes this."""
    return {"BACKEND": "TRITON"} if 1 < query_len < 128 else None
