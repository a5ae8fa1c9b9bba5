"""`rnn` (N): the gated linear RNN of the RAT paper (RAT with one chunk over the sequence)."""

from __future__ import annotations

from typing import Literal

from archlab.blocks.base import Backend, BlockParams

KIND = "rnn"
SYMBOL = "N"
IS_MIXER = True


class Params(BlockParams):
    kind: Literal["rnn"] = "rnn"
    bias: bool = False
    backend: Backend = "auto"


def check(p: Params, d_model: int) -> list[tuple[str, str]]:
    return []


EXAMPLES = [{"kind": "rnn"}, {"kind": "rnn", "bias": True}]
