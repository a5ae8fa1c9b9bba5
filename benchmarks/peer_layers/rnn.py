"""The rnn peer: the gated recurrence s_t = g_t s_{t-1} + (1 - g_t) v_t through
`torch._higher_order_ops.associative_scan` (`linear_scan`), with its own backward, the
reverse scan (`gated_scan_function`), under torch.compile; a plain one-step update for
decode."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .common import PeerUnavailable, VariantPeer, _copy_named, _wrap, compiled
from .run_setup import Setup

try:
    from torch._higher_order_ops.associative_scan import associative_scan
except ImportError:  # pragma: no cover
    associative_scan = None


def _combine(left, right):
    """(a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2): s_t = a_t s_{t-1} + b_t."""
    return right[0] * left[0], right[0] * left[1] + right[1]


def linear_scan(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """s_t = a_t s_{t-1} + b_t along dim 1 (from the end when `reverse`), s_{-1} = 0."""
    if associative_scan is None:  # pragma: no cover
        raise PeerUnavailable("this torch has no associative_scan")
    mode = "pointwise" if a.is_cuda else "generic"  # pointwise: CUDA under torch.compile
    return associative_scan(_combine, (a, b), dim=1, reverse=reverse, combine_mode=mode)[1]


def gated_scan_function(scan: Callable) -> type[torch.autograd.Function]:
    """An autograd Function for s = scan(g, b): its backward is the reverse scan
    lam_t = grad_t + g_{t+1} lam_{t+1}, d b = lam, d g = lam * s_{t-1} (associative_scan's
    own autograd materialises a T x T matrix)."""

    class GatedScan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, g, b):
            s = scan(g, b, False)
            ctx.save_for_backward(g, s)
            return s

        @staticmethod
        def backward(ctx, grad_s):
            g, s = ctx.saved_tensors
            g_next = F.pad(g[:, 1:], (0, 0, 0, 1))
            lam = scan(g_next, grad_s.contiguous(), True)
            s_prev = F.pad(s[:, :-1], (0, 0, 1, 0))
            return lam * s_prev, lam

    return GatedScan


class RNNPeer(VariantPeer):
    """z, v, g = in_proj(x); g = sigmoid(g + gate_bias) (float32);
    s_t = g_t s_{t-1} + (1 - g_t) v_t (float32, associative_scan); out_proj(sigmoid(z) s)."""

    def __init__(self, setup: Setup, bias: bool = False) -> None:
        super().__init__()
        d = setup.d_model
        self.in_proj = nn.Linear(d, 3 * d, bias=bias)
        self.gate_bias = nn.Parameter(torch.zeros(d))
        self.out_proj = nn.Linear(d, d, bias=bias)
        variants = (
            ["eager"]
            if setup.compile == "none"
            else [  # torch 2.11's inductor cannot lower associative_scan with dynamic
                # shapes ("lifted arguments"): static shapes, one graph per shape
                "layer compiled, static shapes",
                "scan compiled (fwd and bwd apart), rest eager",
            ]
        )
        self.use_variants(setup.compile, variants)

    @property
    def impl(self) -> str:
        return f"gated recurrence by associative_scan, {self.variant_name}"

    def _build(self) -> None:
        if self.variant_name.startswith("scan compiled"):
            scan = compiled(linear_scan, self.compile, False)
            self._scan_fn = gated_scan_function(scan)
            self._fn = self._layer
        else:
            self._scan_fn = gated_scan_function(linear_scan)
            self._fn = self._compiled(self._layer)

    def _layer(self, x):
        """(out [B, T, d], the last state [B, d] float32)."""
        z, v, g = self.in_proj(x).chunk(3, dim=-1)
        g = torch.sigmoid(g.float() + self.gate_bias.float())
        s = self._scan_fn.apply(g, (1 - g) * v.float())
        return self.out_proj(torch.sigmoid(z) * s.to(z.dtype)), s[:, -1]

    def forward(self, x):
        return self._fn(x)[0]

    def allocate_cache(self, batch: int, max_len: int) -> dict:
        w = self.out_proj.weight
        return {"state": torch.zeros(batch, w.shape[0], device=w.device, dtype=w.dtype)}

    def prefill(self, x, cache):
        out, last = self._fn(x)
        cache["state"].copy_(last)
        return out

    @torch.no_grad()
    def step(self, x_B1D, cache, pos):
        z, v, g = self.in_proj(x_B1D[:, 0]).chunk(3, dim=-1)
        g = torch.sigmoid(g.float() + self.gate_bias.float())
        s = g * cache["state"].float() + (1 - g) * v.float()
        cache["state"].copy_(s)
        return self.out_proj(torch.sigmoid(z) * s.to(z.dtype))[:, None]


def load_rnn(peer: RNNPeer, block: nn.Module) -> None:
    mixer, _ = _wrap("rnn", block)
    names = {n: n for n in peer.state_dict()}
    _copy_named(peer, mixer, names)
