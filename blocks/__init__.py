"""The block kinds of the spec language, one module each. `BLOCKS` is the registry."""

from types import ModuleType

from archlab.blocks import attention, local_attention, mlp, parallel, rat, rnn, ssm

BLOCKS: dict[str, ModuleType] = {
    "attention": attention,
    "local_attention": local_attention,
    "rat": rat,
    "rnn": rnn,
    "ssm": ssm,
    "mlp": mlp,
    "parallel": parallel,
}

__all__ = ["BLOCKS"]
