"""Pure numbers of RAT's chunk-causal attention, shared by the block's cost model
(`archlab.blocks.rat`, which must not import torch) and the kernels' FLOP formulas
(`triton_ops`): no torch here."""

from __future__ import annotations


def scored_pairs(seq_len: int, chunk_size: int) -> int:
    """(query, key) pairs scored per head and sequence under the chunk-causal mask: token
    t < seq_len scores against the t // chunk_size earlier chunk ends plus its own running
    key, i.e. the sum over t of (t // chunk_size + 1)."""
    n, r = divmod(seq_len, chunk_size)
    return seq_len + chunk_size * n * (n - 1) // 2 + r * n
