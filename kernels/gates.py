"""Forget-gate initialisation shared by the gated recurrences (`rat`, `rnn`)."""

from __future__ import annotations

import torch


def init_gate_bias_(bias: torch.Tensor, span: int) -> None:
    """The paper's forget-gate bias init, in place: log(U(1, span - 1)), so that a gate
    remembers over about `span` steps at the start of training (zeros for span <= 2)."""
    with torch.no_grad():
        if span > 2:
            bias.uniform_(1.0, span - 1.0).log_()
        else:
            bias.zero_()
