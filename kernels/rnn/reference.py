"""Float32 references of the `rnn` block's core (the ground truth of the Triton kernels).

Given the in_proj output u = [z | v | gpre] [B, T, 3D] and gate_bias [D]:
    g_t = sigmoid(gpre_t + gate_bias), s_t = g_t * s_{t-1} + (1 - g_t) * v_t (s_{-1} = the
    given state, else 0), y_t = sigmoid(z_t) * s_t,
all in float32; y is returned in u's dtype, the last state in float32. Differentiable
(plain autograd) in u, gate_bias and the state.
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def _split(u: Tensor, gate_bias: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """z, v, g in float32 from u [..., 3D]."""
    z, v, gpre = u.float().chunk(3, dim=-1)
    return z, v, torch.sigmoid(gpre + gate_bias.float())


def _scan(g: Tensor, x: Tensor) -> Tensor:
    """Inclusive scan s_t = g_t * s_{t-1} + x_t along dim 1 from s_{-1} = 0 (Hillis-Steele:
    log2(T) full-tensor steps; products of gates only)."""
    T, offset = x.shape[1], 1
    while offset < T:
        x = torch.cat([x[:, :offset], g[:, offset:] * x[:, :-offset] + x[:, offset:]], dim=1)
        if 2 * offset < T:
            g = torch.cat([g[:, :offset], g[:, offset:] * g[:, :-offset]], dim=1)
        offset *= 2
    return x


def rnn_core_reference(
    u_BT3D: Tensor, gate_bias_D: Tensor, state_BD: Tensor | None = None, method: str = "loop"
) -> tuple[Tensor, Tensor]:
    """-> (y [B, T, D] in u's dtype, last state [B, D] float32). `method`: "loop" (a Python
    loop over tokens, the ground truth) or "scan" (log-depth, for long sequences)."""
    B, T, D3 = u_BT3D.shape
    z, v, g = _split(u_BT3D, gate_bias_D)
    s0 = (
        state_BD.float()
        if state_BD is not None
        else torch.zeros(B, D3 // 3, device=u_BT3D.device, dtype=torch.float32)
    )
    if T == 0:
        return u_BT3D.new_empty(B, 0, D3 // 3), s0
    if method == "loop":
        s, states = s0, []
        for t in range(T):
            s = g[:, t] * s + (1 - g[:, t]) * v[:, t]
            states.append(s)
        S = torch.stack(states, dim=1)
    elif method == "scan":
        x = (1 - g) * v
        x = torch.cat([x[:, :1] + g[:, :1] * s0[:, None], x[:, 1:]], dim=1)  # fold in s_{-1}
        S = _scan(g, x)
    else:
        raise ValueError(f"method must be 'loop' or 'scan', got {method!r}")
    return (torch.sigmoid(z) * S).to(u_BT3D.dtype), S[:, -1]


def rnn_step_reference(
    u_B3D: Tensor, gate_bias_D: Tensor, state_BD: Tensor, has_state: bool
) -> tuple[Tensor, Tensor]:
    """One decode step: -> (y [B, D] in u's dtype, new state [B, D] float32). The state is
    read only when `has_state` (else s_{-1} = 0); it is not modified."""
    z, v, g = _split(u_B3D, gate_bias_D)
    s = (1 - g) * v
    if has_state:
        s = s + g * state_BD.float()
    return (torch.sigmoid(z) * s).to(u_B3D.dtype), s
