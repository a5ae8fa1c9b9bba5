"""The `local_attention` layer: the nn.Module of `archlab.blocks.local_attention`."""

from __future__ import annotations

from archlab.blocks.attention.layer import AttentionBlock, flex_can_run
from archlab.blocks.base import runs_anywhere


class LocalAttentionBlock(AttentionBlock):
    """Sliding-window causal attention over x [B, T, d_model] (the mixer alone); see
    `AttentionBlock`, which reads `params.window`."""

    KIND_NAME = "local_attention"
    BACKENDS = {"flex": flex_can_run, "sdpa": runs_anywhere, "reference": runs_anywhere}
