"""The diagonal (elementwise) linear recurrence in plain PyTorch, float32:

    h_t = exp(log_a_t) * h_{t-1} + x_t,      h_{-1} = the initial state (else 0)

over x, log_a [B, T, D] (log_a <= 0). `method="scan"` (the `reference` backend) is a
Hillis-Steele scan, log2(T) full-tensor steps (products of decays only, which underflow
harmlessly to 0); `method="loop"` is the ground truth, one token at a time. Both return
(h [B, T, D], final state [B, D]) in float32 and are differentiable in every input.
"""

from __future__ import annotations

import torch


def _scan(a: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Inclusive scan h_t = a_t h_{t-1} + x_t along dim 1 from h_{-1} = 0."""
    T, offset = x.shape[1], 1
    while offset < T:
        x = torch.cat([x[:, :offset], a[:, offset:] * x[:, :-offset] + x[:, offset:]], dim=1)
        if 2 * offset < T:
            a = torch.cat([a[:, :offset], a[:, offset:] * a[:, :-offset]], dim=1)
        offset *= 2
    return x


def linear_recurrence(
    log_a_BTD: torch.Tensor,
    x_BTD: torch.Tensor,
    initial_state_BD: torch.Tensor | None = None,
    method: str = "scan",
) -> tuple[torch.Tensor, torch.Tensor]:
    """h [B, T, D] and the final state [B, D] (the initial state, or 0, when T = 0)."""
    a, x = torch.exp(log_a_BTD.float()), x_BTD.float()
    B, T, D = x.shape
    h0 = initial_state_BD
    h0 = torch.zeros(B, D, device=x.device, dtype=torch.float32) if h0 is None else h0.float()
    if T == 0:
        return x, h0
    if method == "loop":
        h, states = h0, []
        for t in range(T):
            h = a[:, t] * h + x[:, t]
            states.append(h)
        H = torch.stack(states, dim=1)
    elif method == "scan":
        x = torch.cat([x[:, :1] + a[:, :1] * h0[:, None], x[:, 1:]], dim=1)  # fold in h_{-1}
        H = _scan(a, x)
    else:
        raise ValueError(f"method must be 'loop' or 'scan', got {method!r}")
    return H, H[:, -1]


def linear_recurrence_step(
    log_a_BD: torch.Tensor, x_BD: torch.Tensor, state_BD: torch.Tensor
) -> torch.Tensor:
    """One step: the new state [B, D] in float32 (`state_BD` is not modified)."""
    return torch.exp(log_a_BD.float()) * state_BD.float() + x_BD.float()
