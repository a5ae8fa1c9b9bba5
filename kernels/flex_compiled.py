"""FlexAttention compiled once per process, shared by the attention blocks
(`blocks/_attention_common.py`) and RAT's flex backend (`kernels/rat/flex.py`): one
`torch.compile` wrapper each for `flex_attention` and `create_block_mask`, so that every
caller shares their compiled graphs and recompile budget."""

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


@functools.cache
def compiled_flex():
    """`flex_attention` under torch.compile (static shapes: one graph per length)."""
    return torch.compile(flex_attention, dynamic=False)


@functools.cache
def compiled_create_block_mask():
    """`create_block_mask` under torch.compile: it never materializes the full mask."""
    return torch.compile(create_block_mask)
