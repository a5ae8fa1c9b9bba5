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
_compiled_rope_table = None
_TABLES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}


def _key(head_dim: int, theta: float, device: torch.device | str) -> tuple:
    """The table's key; "cuda" and "cuda:<current>" are the same device."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return head_dim, float(theta), str(device)


def cos_sin_table(
    length: int, head_dim: int, theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [n, head_dim] (float32, n >= length) of positions 0..n-1: made once per
    (head_dim, theta, device) and grown by doubling, so that a sequence's RoPE reads rows
    of a table, as a plain layer with cached tables does, instead of computing a cosine
    and a sine for every element of q and k. Call it outside torch.compile'd code."""
    key = _key(head_dim, theta, device)
    table = _TABLES.get(key)
    if table is None or table[0].shape[0] < length:
        n = max(length, 2 * table[0].shape[0] if table is not None else 0)
        table = rope_cos_sin(torch.arange(n, device=device), head_dim, theta)
        _TABLES[key] = table
    return table


def existing_table(
    length: int, head_dim: int, theta: float, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """`cos_sin_table`'s table if one covering `length` positions was made already, else
    None; never makes one, so it may run inside torch.compile'd code (the table becomes an
    input of the graph instead of a cosine and a sine computed per element)."""
    table = _TABLES.get(_key(head_dim, theta, device))
    return table if table is not None and table[0].shape[0] >= length else None


def _rope_from(x_BTHD, positions_T, cos_ND, sin_ND):
    return apply_rope(x_BTHD, cos_ND[positions_T], sin_ND[positions_T])


def rope(
    x_BTHD: torch.Tensor,
    positions_T: torch.Tensor,
    theta: float = 10000.0,
    table: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """`apply_rope` at integer `positions`: the angles from `table` (`cos_sin_table`,
    covering every position) when given, else computed. The same function either way; on
    CUDA for more than one token one fused kernel per direction (torch.compile of the
    table lookup or computation and the rotation: eager PyTorch makes about ten float32
    passes over q or k, the backward as many again). Inside an enclosing torch.compile,
    and on the CPU, it runs as written."""
    global _compiled_rope, _compiled_rope_table
    eager = x_BTHD.device.type != "cuda" or x_BTHD.shape[1] < 2 or torch.compiler.is_compiling()
    if table is not None:
        if eager:
            return _rope_from(x_BTHD, positions_T, *table)
        if _compiled_rope_table is None:
            _compiled_rope_table = torch.compile(_rope_from, dynamic=True, fullgraph=True)
        return _compiled_rope_table(x_BTHD, positions_T, *table)
    if eager:
        return _rope_at(x_BTHD, positions_T, theta)
    if _compiled_rope is None:
        _compiled_rope = torch.compile(_rope_at, dynamic=True, fullgraph=True)
    return _compiled_rope(x_BTHD, positions_T, theta)
