"""The `rg_lru` layer: the nn.Module of `archlab.blocks.rg_lru` (Griffin's recurrent block;
the record's docstring has the maths, backends and costs)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlab.blocks.base import (
    BackendUnavailable,
    ModelConfig,
    needs_cuda,
    resolve_backend,
    runs_anywhere,
    select_cpu_backend,
)
from archlab.blocks.cache import LayerCache
from archlab.blocks.rg_lru import STATE_BYTES, C, Params, RGLRUSizes
from archlab.kernels.lru.fla_backend import INSTALL_HINT, fla_importable, linear_recurrence_fla
from archlab.kernels.lru.reference import linear_recurrence, linear_recurrence_step
from archlab.kernels.runtime import triton_interpreted
from archlab.kernels.short_conv import causal_conv1d, causal_conv1d_step

STATE_DTYPE = torch.float32
assert STATE_DTYPE.itemsize == STATE_BYTES  # the record counts the state's bytes
MAX_SQRT_GRADIENT = 1000.0  # recurrentgemma's clip of d sqrt(x) / dx


def triton_can_run(device: torch.device) -> str | None:
    """A backend check: fla's Triton kernels need a CUDA device and the fla package."""
    reason = needs_cuda(device)
    if reason is None and not fla_importable():
        reason = f"needs flash-linear-attention (fla): {INSTALL_HINT}"
    return reason


class SqrtBoundDerivative(torch.autograd.Function):
    """sqrt(x), with the gradient 1 / sqrt(max(4x, 1 / 1000^2)) (recurrentgemma's)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sqrt(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad / torch.sqrt(torch.clip(4.0 * x, min=1 / MAX_SQRT_GRADIENT**2))


class BlockDiagonalLinear(nn.Module):
    """y = x W_h + b_h on each of `blocks` blocks of the channels (w [blocks, bw, bw]), in
    x's dtype."""

    def __init__(self, width: int, blocks: int) -> None:
        super().__init__()
        self.blocks, bw = blocks, width // blocks
        self.w = nn.Parameter(torch.empty(blocks, bw, bw))
        self.b = nn.Parameter(torch.zeros(blocks, bw))
        nn.init.normal_(self.w, std=math.sqrt(1.0 / bw))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.unflatten(-1, (self.blocks, -1))
        w, b = self.w.to(x.dtype), self.b.to(x.dtype)
        return (torch.einsum("...hi,hij->...hj", x, w) + b).flatten(-2)


class RGLRU(nn.Module):
    """The RG-LRU's parameters: the per-channel a_param and the two gates."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.a_param = nn.Parameter(torch.empty(width))
        self.input_gate = BlockDiagonalLinear(width, heads)
        self.a_gate = BlockDiagonalLinear(width, heads)
        self.reset_a_param()

    @torch.no_grad()
    def reset_a_param(self, min_rad: float = 0.9, max_rad: float = 0.999) -> None:
        """a = sigmoid(-a_param) with a^2 uniform in [min_rad^2, max_rad^2]
        (recurrentgemma's ring init)."""
        a = torch.empty_like(self.a_param).uniform_(min_rad**2 + 1e-8, max_rad**2 + 1e-8)
        self.a_param.copy_(torch.log(torch.exp(-0.5 * a.log()) - 1.0))

    def inputs(
        self, u: torch.Tensor, first: torch.Tensor | bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """u [..., W] (post-conv) and `first` (True where the position is 0: a tensor
        broadcastable to u, or one Python bool for every row, as the decode step passes, so
        that no tensor is made from host data) -> (log a, the normalised input
        sqrt(1 - a^2) i u; i u at position 0), float32."""
        u = u.float()
        gate_x = torch.sigmoid(self.input_gate(u))
        gate_a = torch.sigmoid(self.a_gate(u))
        log_a = -C * gate_a * F.softplus(self.a_param.float())
        multiplier = SqrtBoundDerivative.apply(1 - torch.exp(2 * log_a))
        if isinstance(first, bool):
            multiplier = torch.ones_like(multiplier) if first else multiplier
        else:
            multiplier = torch.where(first, torch.ones_like(multiplier), multiplier)
        return log_a, u * gate_x * multiplier


class Conv1D(nn.Module):
    """recurrentgemma's temporal conv: w [K, W] (w[K - 1] reads the current token), b [W]."""

    def __init__(self, width: int, temporal_width: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.empty(temporal_width, width))
        self.b = nn.Parameter(torch.zeros(width))
        nn.init.normal_(self.w, std=math.sqrt(0.01 / temporal_width))


class RGLRUBlock(nn.Module):
    """Griffin's recurrent block over x [B, T, d_model] (the record's docstring)."""

    # backend -> why it cannot run on a device (None: it can), in the order `auto` tries them
    BACKENDS = {"triton": triton_can_run, "reference": runs_anywhere}

    def __init__(self, params: Params, model: ModelConfig) -> None:
        super().__init__()
        self.params, self.sizes = params, RGLRUSizes(params, model.d_model)
        s, d = self.sizes, model.d_model
        self.cache_dtype = model.torch_dtype
        self.linear_y = nn.Linear(d, s.width)
        self.linear_x = nn.Linear(d, s.width)
        self.linear_out = nn.Linear(s.width, d)
        self.conv_1d = Conv1D(s.width, s.kernel)
        self.rg_lru = RGLRU(s.width, s.heads)
        self.reset_linears()
        select_cpu_backend(self, self.BACKENDS)

    @torch.no_grad()
    def reset_linears(self) -> None:
        """linear_x, linear_y ~ N(0, 1 / d_model), linear_out ~ N(0, 1 / W), biases 0
        (recurrentgemma's)."""
        for lin in (self.linear_x, self.linear_y):
            nn.init.normal_(lin.weight, std=math.sqrt(1.0 / self.sizes.d_model))
            nn.init.zeros_(lin.bias)
        nn.init.normal_(self.linear_out.weight, std=math.sqrt(1.0 / self.sizes.width))
        nn.init.zeros_(self.linear_out.bias)

    def select_backend(self, device: torch.device | str) -> str:
        """Choose the backend for `device`; raises BackendUnavailable if the requested one
        cannot run (triton needs CUDA and the `fla` package)."""
        self.backend = resolve_backend(
            "rg_lru", self.params.backend, torch.device(device), self.BACKENDS
        )
        return self.backend

    def _recurrence(self, log_a, x, state, keep_state: bool):
        """h over a sequence by the selected backend -> (h [B, T, W], final state or None)."""
        if self.backend == "triton":
            if not x.is_cuda and not triton_interpreted():
                raise BackendUnavailable(f"rg_lru backend 'triton' cannot run on {x.device}")
            return linear_recurrence_fla(log_a, x, state, output_final_state=keep_state)
        if self.backend != "reference":
            raise BackendUnavailable("no rg_lru backend selected: call select_backend(device)")
        return linear_recurrence(log_a, x, state)

    def _sequence(self, x_BTD, conv_state=None, state=None, start: int = 0):
        """The pass over a sequence starting at position `start` -> (out, new conv state,
        final RG-LRU state)."""
        y = F.gelu(self.linear_y(x_BTD), approximate="tanh")
        w = self.conv_1d.w.t()
        u, conv_state = causal_conv1d(self.linear_x(x_BTD), w, self.conv_1d.b, conv_state)
        first = (torch.arange(x_BTD.shape[1], device=x_BTD.device) + start == 0)[:, None]
        log_a, inp = self.rg_lru.inputs(u, first)
        h, final = self._recurrence(log_a, inp, state, keep_state=state is not None)
        return self.linear_out(h.to(y.dtype) * y), conv_state, final

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] -> [B, T, d_model], causal over T (positions 0 .. T - 1)."""
        return self._sequence(x_BTD)[0]

    def allocate_cache(
        self,
        batch: int,
        max_len: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LayerCache:
        """Zero states, independent of max_len: conv [B, W, conv1d_width - 1] in `dtype`
        (default: the model's), rg_lru [B, W] in float32."""
        s = self.sizes
        device = device or self.linear_out.weight.device
        conv = torch.zeros(
            batch, s.width, s.kernel - 1, device=device, dtype=dtype or self.cache_dtype
        )
        state = torch.zeros(batch, s.width, device=device, dtype=STATE_DTYPE)
        return LayerCache({"conv": conv, "rg_lru": state})

    def prefill(self, x_BTD: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Run x [B, T, d_model] in one pass from position cache.length, continuing from the
        cache's states (zero for a fresh cache), and leave the final states in the cache."""
        out, conv, state = self._sequence(x_BTD, cache["conv"], cache["rg_lru"], cache.length)
        cache["conv"].copy_(conv)
        if x_BTD.shape[1]:
            cache["rg_lru"].copy_(state)
        cache.length += x_BTD.shape[1]
        return out

    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Decode one token [B, 1, d_model] at position cache.length: O(1) work and memory,
        free of host syncs (the position-0 reset is decided on the host from the Python
        `cache.length`), so that it can be captured in a CUDA graph (a graph captured past
        position 0 replays as past it, as `archlab profile` uses it)."""
        x = x_B1D[:, 0]
        y = F.gelu(self.linear_y(x), approximate="tanh")
        w = self.conv_1d.w.t()
        u, conv = causal_conv1d_step(self.linear_x(x), w, self.conv_1d.b, cache["conv"])
        log_a, inp = self.rg_lru.inputs(u, cache.length == 0)  # a bool: no host-to-device copy
        if self.backend == "triton":
            h, _ = self._recurrence(log_a[:, None], inp[:, None], cache["rg_lru"], True)
            h = h[:, 0]
        else:
            h = linear_recurrence_step(log_a, inp, cache["rg_lru"])
        cache["conv"].copy_(conv)
        cache["rg_lru"].copy_(h)
        cache.length += 1
        return self.linear_out(h.to(y.dtype) * y)[:, None]
