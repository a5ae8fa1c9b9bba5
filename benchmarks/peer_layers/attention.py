"""The attention and local_attention peers: q/k/v/o projections, rotate-half RoPE from
cached float32 tables, and `F.scaled_dot_product_attention(is_causal=True)` or, with a
window, `flex_attention` with a sliding-window mask; decode attends to a cache (a ring
buffer of `window` slots for local attention)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .common import PeerUnavailable, VariantPeer, _copy_named, _wrap, compiled_variants
from .run_setup import Setup

try:  # FlexAttention (torch >= 2.5)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover
    create_block_mask = flex_attention = None


def rope_tables(length: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, ...]:
    """cos, sin [length, head_dim] (float32) of rotate-half RoPE."""
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    )
    freqs = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x_BTHD: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE in float32, returned in x's dtype."""
    x = x_BTHD.float()
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos_TD[:, None] + rotated * sin_TD[:, None]).to(x_BTHD.dtype)


def sliding_window_mask(window: int) -> Callable:
    """flex mask_mod: key j is visible from query i iff j <= i and i - j < window (the
    token itself counts), as archlab's local_attention. A plain function, not a method."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    return mask_mod


class AttentionPeer(VariantPeer):
    """Causal attention (window=None) or sliding-window attention, the plain way."""

    def __init__(self, setup: Setup, window: int | None = None, bias: bool = False) -> None:
        super().__init__()
        d, H = setup.d_model, setup.heads
        self.heads, self.kv_heads, self.head_dim = H, H, d // H
        self.window, self.theta = window, setup.rope_theta
        inner = H * self.head_dim
        self.q_proj = nn.Linear(d, inner, bias=bias)
        self.k_proj = nn.Linear(d, inner, bias=bias)
        self.v_proj = nn.Linear(d, inner, bias=bias)
        self.o_proj = nn.Linear(inner, d, bias=bias)
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self._masks: dict = {}
        if window is not None and flex_attention is None:
            raise PeerUnavailable("this torch has no FlexAttention")
        # eager flex materialises every score: no eager fallback at real sizes
        self.use_variants(setup.compile, compiled_variants(setup.compile, window is None))

    @property
    def impl(self) -> str:
        core = (
            "sdpa(is_causal=True)"
            if self.window is None
            else f"flex_attention(window={self.window})"
        )
        return f"projections + RoPE + {core}, {self.variant_name}"

    def _build(self) -> None:
        self._train = self._compiled(self._layer)
        self._prefill = self._compiled(self._layer_kv)

    def rope(self, start: int, stop: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin rows start..stop-1 (tables cached, grown when needed)."""
        if (
            self._tables is None
            or self._tables[0].shape[0] < stop
            or self._tables[0].device != device
        ):
            length = max(stop, 2 * (self._tables[0].shape[0] if self._tables else 0))
            self._tables = rope_tables(length, self.head_dim, self.theta, device)
        cos, sin = self._tables
        return cos[start:stop], sin[start:stop]

    def block_mask(self, T: int, device):
        key = (T, str(device))
        if key not in self._masks:
            make = create_block_mask
            if device.type == "cuda":
                make = functools.partial(create_block_mask, _compile=True)
            self._masks[key] = make(
                sliding_window_mask(self.window), None, None, T, T, device=device
            )
        return self._masks[key]

    def _qkv(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _layer_kv(self, x, cos, sin, block_mask=None):
        """out [B, T, d], and k, v [B, K, T, D] (k rotated) for the cache."""
        B, T, _ = x.shape
        q, k, v = (t.transpose(1, 2) for t in self._qkv(x, cos, sin))
        scale, gqa = self.head_dim**-0.5, self.heads != self.kv_heads
        if self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        else:
            y = flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1)), k, v

    def _layer(self, x, cos, sin, block_mask=None):
        return self._layer_kv(x, cos, sin, block_mask)[0]

    def _args(self, x):
        T = x.shape[1]
        cos, sin = self.rope(0, T, x.device)
        return x, cos, sin, (self.block_mask(T, x.device) if self.window else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window is not None and x.device.type == "cpu" and torch.is_grad_enabled():
            raise PeerUnavailable("not available: FlexAttention has no backward on the CPU")
        return self._train(*self._args(x))

    def allocate_cache(self, batch: int, max_len: int) -> dict:
        slots = max_len if self.window is None else min(max_len, self.window)
        w = self.q_proj.weight
        shape = (batch, self.kv_heads, slots, self.head_dim)
        return {n: torch.zeros(shape, device=w.device, dtype=w.dtype) for n in ("k", "v")}

    def prefill(self, x: torch.Tensor, cache: dict) -> torch.Tensor:
        out, k, v = self._prefill(*self._args(x))
        T, slots = x.shape[1], cache["k"].shape[2]
        if T <= slots:
            cache["k"][:, :, :T].copy_(k)
            cache["v"][:, :, :T].copy_(v)
        else:  # ring buffer: position p in slot p % slots
            ring = torch.arange(T - slots, T, device=x.device) % slots
            cache["k"][:, :, ring] = k[:, :, T - slots :]
            cache["v"][:, :, ring] = v[:, :, T - slots :]
        return out

    @torch.no_grad()
    def step(self, x_B1D: torch.Tensor, cache: dict, pos: int) -> torch.Tensor:
        """Decode the token at position `pos` (pos tokens cached); eager."""
        B = x_B1D.shape[0]
        cos, sin = self.rope(pos, pos + 1, x_B1D.device)
        q, k, v = self._qkv(x_B1D, cos, sin)
        slots = cache["k"].shape[2]
        cache["k"][:, :, pos % slots] = k[:, 0]
        cache["v"][:, :, pos % slots] = v[:, 0]
        valid = min(pos + 1, slots)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            cache["k"][:, :, :valid],
            cache["v"][:, :, :valid],
            scale=self.head_dim**-0.5,
            enable_gqa=self.heads != self.kv_heads,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, 1, -1))


def load_attention(peer: AttentionPeer, block: nn.Module) -> None:
    """q/k/v/o weights (and biases) one to one; archlab's qk-norm has no peer here."""
    mixer, _ = _wrap("attention", block)
    names = {f"{p}.weight": f"{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    names |= {f"{p}.bias": f"{p}.bias" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    _copy_named(peer, mixer, {k: v for k, v in names.items() if k in peer.state_dict()})
