"""The diagonal linear recurrence through flash-linear-attention's HGRN kernels (package
`fla-core`, the `ssm` extra; CUDA, or Triton's interpreter in the tests).

fla's HGRN op is exactly `reference.linear_recurrence`: h_t = exp(g_t) h_{t-1} + x_t over
[B, T, D] (`g` the log decay). Two kernels compute it:
- `fused_recurrent_hgrn` (one program per channel block, sequential over T; a full
  backward): what the block runs, to train, prefill and decode.
- `chunk_hgrn` (chunks of 128 tokens, parallel over chunks and channels), only when asked
  for (`kernel="chunk"`). On an H200 (fla-core 0.6.0, Triton 3.6) it returned wrong states
  on the rg_lru block's own inputs (d_model 2048, T 4096: 1.1-1.8% relative error against
  the loop, different at each call, largest at the first tokens of a chunk, where the
  previous chunk's state is carried in), while random inputs of the same shape came out
  right (1.2e-7); the recurrent kernel was exact on the same inputs (4.0e-7) and faster at
  64 x 4096 x 2048 in float32: 9.1 ms against 12.9 ms forward and backward, 2.5 against
  3.7 ms forward (`benchmarks/results/2026-11-30b-h200x2/run3/diag2.txt`). Its backward
  also neither reads the gradient of the final state nor returns one for the initial
  state.
x and g are passed in float32 (the recurrence is memory-bound and cheap; the state stays
exact), so the outputs are float32. `fla` is imported on first use (`fla_module`: after
that, a lookup Dynamo traces).
"""

from __future__ import annotations

import torch

from archlab.kernels.ssd.fla_backend import INSTALL_HINT, fla_module

__all__ = ["INSTALL_HINT", "KERNELS", "fla_importable", "linear_recurrence_fla"]

KERNELS = ("chunk", "recurrent")
MODULE = "fla.ops.hgrn"


def fla_importable() -> bool:
    """True if fla's HGRN kernels can be imported here (and, once asked, imported)."""
    return fla_module(MODULE) is not None


def linear_recurrence_fla(
    log_a_BTD: torch.Tensor,
    x_BTD: torch.Tensor,
    initial_state_BD: torch.Tensor | None = None,
    output_final_state: bool = False,
    kernel: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`reference.linear_recurrence` by fla -> (h [B, T, D] float32, final state [B, D]
    float32 if `output_final_state`, else None). `kernel`: "recurrent" (None: the
    default) or "chunk" (see the module docstring: not used by the block)."""
    ops = fla_module(MODULE)  # a dict read once imported: no graph break here
    if ops is None:
        raise ImportError(f"the rg_lru triton backend needs flash-linear-attention: {INSTALL_HINT}")
    kernel = "recurrent" if kernel is None else kernel
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS} or None, got {kernel!r}")
    fn = ops.chunk_hgrn if kernel == "chunk" else ops.fused_recurrent_hgrn
    x, g = x_BTD.float().contiguous(), log_a_BTD.float().contiguous()
    h0 = None if initial_state_BD is None else initial_state_BD.float().contiguous()
    h, final = fn(x, g, initial_state=h0, output_final_state=output_final_state)
    return h, (final.float() if output_final_state else None)
