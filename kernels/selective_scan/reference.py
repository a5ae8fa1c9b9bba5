"""The selective scan of Mamba-1 (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling
with Selective State Spaces", arXiv:2312.00752) in plain PyTorch, float32, one token at a
time: mamba_ssm's `selective_scan_ref` without the D skip and the z gate (the block adds
those).

Shapes: B batch, T tokens, E channels (d_inner), N d_state. Given x and the positive step
sizes dt [B, T, E], A [E, N] (negative), B_in and C_in [B, T, N] (shared by the channels),
each channel e keeps a state h [N]:

    h_t = exp(dt_t A) * h_{t-1} + dt_t x_t B_t,        y_t = <h_t, C_t>

Cost: T sequential steps of O(B E N) work (a Python loop); under autograd every step's
state [B, E, N] is kept, O(T B E N) memory. Fine for tests and small models.

The fast path is `triton.py` (the `triton` backend of `mamba`): mamba_ssm's selective
scan is a CUDA extension that must be built for the local CUDA and torch, so archlab does
not depend on it, and fla has no Mamba-1 kernel.
"""

from __future__ import annotations

import torch


def selective_scan_step(
    x_BE: torch.Tensor,
    dt_BE: torch.Tensor,
    A_EN: torch.Tensor,
    B_BN: torch.Tensor,
    C_BN: torch.Tensor,
    state_BEN: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step -> (y [B, E], new state [B, E, N]), float32; the state is not modified."""
    x, dt, A, Bm, Cm = (t.float() for t in (x_BE, dt_BE, A_EN, B_BN, C_BN))
    h = torch.exp(dt[..., None] * A) * state_BEN.float() + (dt * x)[..., None] * Bm[:, None, :]
    return torch.einsum("ben,bn->be", h, Cm), h


def selective_scan(
    x_BTE: torch.Tensor,
    dt_BTE: torch.Tensor,
    A_EN: torch.Tensor,
    B_BTN: torch.Tensor,
    C_BTN: torch.Tensor,
    initial_state_BEN: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scan over T tokens -> (y [B, T, E], final state [B, E, N]), both float32."""
    Bsz, T, E = x_BTE.shape
    h = initial_state_BEN
    if h is None:
        h = torch.zeros(Bsz, E, A_EN.shape[-1], device=x_BTE.device, dtype=torch.float32)
    ys = []
    for t in range(T):
        y, h = selective_scan_step(x_BTE[:, t], dt_BTE[:, t], A_EN, B_BTN[:, t], C_BTN[:, t], h)
        ys.append(y)
    y = torch.stack(ys, dim=1) if ys else x_BTE.new_zeros(x_BTE.shape, dtype=torch.float32)
    return y, h.float()
