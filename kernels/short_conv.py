"""The causal depthwise "short convolution" of the recurrent mixers (Mamba, Gated DeltaNet,
GLA, Griffin's recurrent block), in plain PyTorch: the parallel form over a sequence,
continuing from a state, and one decode step.

Channel c of the output at token t is sum_j weight[c, j] * x[t - (K - 1) + j, c] (+ bias):
weight[:, K - 1] multiplies the current token, weight[:, 0] the oldest (nn.Conv1d's
cross-correlation with K - 1 zeros of left padding). The state is the last K - 1 inputs
[B, C, K - 1] (oldest first): zeros for a fresh sequence. No activation is applied here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def causal_conv1d(
    x_BTC: torch.Tensor,
    weight_CK: torch.Tensor,
    bias_C: torch.Tensor | None = None,
    state_BCK: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """x [B, T, C] -> (y [B, T, C] in x's dtype, the new state [B, C, K - 1]: the last
    K - 1 inputs, reaching into `state_BCK` (zeros when None) when T < K - 1)."""
    K, C = weight_CK.shape[-1], weight_CK.shape[0]
    x_BCT = x_BTC.transpose(1, 2)
    if state_BCK is None:
        padded = F.pad(x_BCT, (K - 1, 0))
    else:
        padded = torch.cat([state_BCK.to(x_BTC.dtype), x_BCT], dim=-1)
    bias = None if bias_C is None else bias_C.to(x_BTC.dtype)
    y = F.conv1d(padded, weight_CK.to(x_BTC.dtype)[:, None, :], bias, groups=C)
    return y.transpose(1, 2), padded[:, :, padded.shape[-1] - (K - 1) :]


def causal_conv1d_step(
    x_BC: torch.Tensor,
    weight_CK: torch.Tensor,
    bias_C: torch.Tensor | None,
    state_BCK: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token x [B, C] after the state [B, C, K - 1] -> (y [B, C], the new state)."""
    window = torch.cat([state_BCK.to(x_BC.dtype), x_BC[:, :, None]], dim=-1)  # [B, C, K]
    y = (window * weight_CK.to(x_BC.dtype)).sum(dim=-1)
    if bias_C is not None:
        y = y + bias_C.to(x_BC.dtype)
    return y, window[:, :, 1:]
