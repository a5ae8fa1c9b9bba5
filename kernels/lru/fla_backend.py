"""The diagonal linear recurrence through flash-linear-attention's HGRN kernels (package
`fla-core`, the `ssm` extra; CUDA, or Triton's interpreter in the tests).

fla's HGRN op is exactly `reference.linear_recurrence`: h_t = exp(g_t) h_{t-1} + x_t over
[B, T, D] (`g` the log decay). Two kernels compute it:
- `chunk_hgrn` (chunks of 128 tokens, parallel over chunks and channels): to train and
  prefill. Its backward neither reads the gradient of the final state nor returns one for
  the initial state, so where a forward needs gradients and has an initial state or
  returns its final state, `fused_recurrent` runs instead.
- `fused_recurrent_hgrn` (one program per channel block, sequential over T; a full
  backward): decode, and the case above.
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
    float32 if `output_final_state`, else None). `kernel`: "chunk", "recurrent", or None
    for chunk unless T = 1 or the case of the module docstring (then recurrent)."""
    ops = fla_module(MODULE)  # a dict read once imported: no graph break here
    if ops is None:
        raise ImportError(f"the rg_lru triton backend needs flash-linear-attention: {INSTALL_HINT}")
    if kernel is None:
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (log_a_BTD, x_BTD, initial_state_BD)
        )
        incomplete = needs_grad and (initial_state_BD is not None or output_final_state)
        kernel = "recurrent" if x_BTD.shape[1] == 1 or incomplete else "chunk"
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS} or None, got {kernel!r}")
    fn = ops.chunk_hgrn if kernel == "chunk" else ops.fused_recurrent_hgrn
    x, g = x_BTD.float().contiguous(), log_a_BTD.float().contiguous()
    h0 = None if initial_state_BD is None else initial_state_BD.float().contiguous()
    h, final = fn(x, g, initial_state=h0, output_final_state=output_final_state)
    return h, (final.float() if output_final_state else None)
