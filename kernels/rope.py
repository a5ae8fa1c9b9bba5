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


def _rope_at(x_BTHD: torch.Tensor, positions_T: torch.Tensor, theta: float) -> torch.Tensor:
    cos, sin = rope_cos_sin(positions_T, x_BTHD.shape[-1], theta)
    return apply_rope(x_BTHD, cos, sin)


_compiled_rope = None


def rope(x_BTHD: torch.Tensor, positions_T: torch.Tensor, theta: float = 10000.0) -> torch.Tensor:
    """`apply_rope` at integer `positions`: the same function, and on CUDA for more than
    one token one fused kernel per direction (torch.compile of the table and the
    rotation: eager PyTorch makes about ten float32 passes over q or k, the backward as
    many again). Inside an enclosing torch.compile, and on the CPU, it runs as written."""
    global _compiled_rope
    if x_BTHD.device.type != "cuda" or x_BTHD.shape[1] < 2 or torch.compiler.is_compiling():
        return _rope_at(x_BTHD, positions_T, theta)
    if _compiled_rope is None:
        _compiled_rope = torch.compile(_rope_at, dynamic=True, fullgraph=True)
    return _compiled_rope(x_BTHD, positions_T, theta)
