"""Rotary position embedding (rotate-half / GPT-NeoX layout, as HF Llama and the RAT paper)."""

from __future__ import annotations

import torch


def rope_cos_sin(
    positions: torch.Tensor, head_dim: int, theta: float = 10000.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape [len(positions), head_dim] in float32 for integer `positions`."""
    inv_freq = 1.0 / (
        theta
        ** (torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    )
    freqs = positions.to(torch.float32)[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x_BTHD: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor) -> torch.Tensor:
    """Rotate `x` [B, T, H, D] by the angles of cos/sin [T, D]; computed in float32,
    returned in x's dtype."""
    x = x_BTHD.float()
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    cos, sin = cos_TD[None, :, None, :], sin_TD[None, :, None, :]
    return (x * cos + rotated * sin).to(x_BTHD.dtype)
