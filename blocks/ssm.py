"""`ssm` (M): a Mamba-2 (SSD) block, as the mamba_ssm `Mamba2` layer (without the pre-norm
and residual that archlab adds around every block).

    z, xBC, dt = in_proj(u)                    d_inner, conv_dim, heads
    xBC = silu(causal depthwise conv1d(xBC))    conv_dim = d_inner + 2 * n_groups * d_state
    x, B, C = xBC;  dt = softplus(dt + dt_bias);  A = -exp(A_log)
    y = SSD(x, dt, A, B, C) + D * x             (kernels/ssd: h_t = exp(dt A) h + dt x B^T)
    out = out_proj(rmsnorm(y * silu(z)) * weight)

The gated RMSNorm normalises each group of d_inner / n_groups channels on its own, as
mamba's `RMSNormGated(group_size=d_inner // ngroups)` does (eps = model.norm_eps).
Parameter names follow mamba (`in_proj`, `conv1d`, `dt_bias`, `A_log`, `D`, `norm.weight`,
`out_proj`), so weights map one to one.

Backends: `reference` (kernels/ssd/reference.py, the chunked SSD in float32 with
`chunk_size`), `triton` (fla's chunked kernels, CUDA only, needs `archlab[ssm]`), `auto`
(triton when fla is there and the device is CUDA, else reference). Where fla refuses
`chunk_simple_gla`'s backward (Hopper with Triton 3.4-3.7.0) training runs fla's
`chunk_gla` instead, and `backend_note` says so (kernels/ssd/fla_backend.py). The decode
`step` is the plain recurrence for both. The cache holds the conv state (the last conv_kernel - 1
inputs of the conv channels, in the cache dtype) and the SSM state [B, heads, head_dim,
d_state], always float32 (it accumulates over the whole context), so it counts 4 bytes
per element.

FLOPs (2 per multiply-add), per sequence of T tokens, with Q = sum over chunks of the
squared chunk lengths (the last chunk may be shorter), H heads, P head_dim, N d_state,
G n_groups, K conv_kernel:
- matmul: in_proj and out_proj; C B^T per group 2 G N Q; its product with v, 2 H P Q; the
  chunk states 2 T H P N; the state-to-output products 2 T H P N (every chunk computes
  both, as the chunked algorithm does).
- other, per element: conv 2K + 1 and SiLU 4 per conv channel and token; dt 5 per head
  and token (bias, softplus 3, times A); dt * x 1; the decay mask 3 per head and (i, j) of
  a chunk (segment sum, exp, multiply); decay weights 2 per head and token plus 1 per
  element of v and of C expanded to heads; state passing 2 H P N per chunk; y_diag + y_off
  1, D skip 2, gate SiLU 4 + 1, RMSNorm 4 per inner channel and token.
"""

from __future__ import annotations

import math
import os
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from archlab.blocks.base import (
    Backend,
    BackendUnavailable,
    BlockParams,
    FlopCount,
    LayerCache,
    linear_flops,
    resolve_backend,
)
from archlab.config import ModelConfig
from archlab.kernels.ssd.fla_backend import (
    INSTALL_HINT,
    fla_importable,
    simple_gla_backward_refused,
    ssd_fla,
)
from archlab.kernels.ssd.reference import ssd_chunked, ssd_step

KIND = "ssm"
SYMBOL = "M"
IS_MIXER = True
BACKENDS = ("triton", "reference")  # in the order `auto` tries them
SSM_STATE_DTYPE = torch.float32


class Params(BlockParams):
    kind: Literal["ssm"] = "ssm"
    d_state: int = Field(default=128, ge=1, le=4096)
    expand: int = Field(default=2, ge=1, le=64)
    head_dim: int = Field(default=64, ge=1, le=4096)
    n_groups: int = Field(default=1, ge=1, le=4096)
    conv_kernel: int = Field(default=4, ge=1, le=64)
    chunk_size: int = Field(default=256, ge=1, le=1 << 20)
    backend: Backend = "auto"


def check(p: Params, d_model: int) -> list[tuple[str, str]]:
    """head_dim divides d_inner, n_groups divides the heads, the backend exists for ssm."""
    errors = []
    inner = p.expand * d_model
    if inner % p.head_dim:
        errors.append(("head_dim", f"must divide expand * d_model ({inner}) (got {p.head_dim})"))
    elif (inner // p.head_dim) % p.n_groups:
        errors.append(
            (
                "n_groups",
                f"must divide the number of heads ({inner // p.head_dim}) (got {p.n_groups})",
            )
        )
    if p.backend not in ("auto", *BACKENDS):
        errors.append(("backend", f"must be auto, triton or reference for ssm (got {p.backend})"))
    return errors


EXAMPLES = [
    {"kind": "ssm", "d_state": 8, "head_dim": 8, "chunk_size": 4},
    {"kind": "ssm", "d_state": 4, "head_dim": 4, "n_groups": 2, "conv_kernel": 3, "chunk_size": 3},
    {"kind": "ssm", "d_state": 6, "head_dim": 16, "expand": 1, "conv_kernel": 1, "chunk_size": 1},
    {"kind": "ssm", "d_state": 5, "head_dim": 2, "n_groups": 4, "chunk_size": 64},
]


class Sizes:
    """The derived widths of an ssm block."""

    def __init__(self, p: Params, d_model: int) -> None:
        self.d_model, self.inner = d_model, p.expand * d_model
        self.heads, self.head_dim = self.inner // p.head_dim, p.head_dim
        self.groups, self.d_state, self.kernel = p.n_groups, p.d_state, p.conv_kernel
        self.bc = p.n_groups * p.d_state
        self.conv_dim = self.inner + 2 * self.bc
        self.in_proj = 2 * self.inner + 2 * self.bc + self.heads


class GatedRMSNorm(nn.Module):
    """rmsnorm(y * silu(z)) * weight, normalised per group of channels, in float32."""

    def __init__(self, dim: int, groups: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.groups, self.eps = groups, eps

    def forward(self, y_BTE: torch.Tensor, z_BTE: torch.Tensor) -> torch.Tensor:
        """y, z [..., dim] -> [..., dim] in z's dtype."""
        h = y_BTE.float() * F.silu(z_BTE.float())
        h = h.unflatten(-1, (self.groups, -1))
        h = h * torch.rsqrt(h.square().mean(dim=-1, keepdim=True) + self.eps)
        return (h.flatten(-2) * self.weight.float()).to(z_BTE.dtype)


class Block(nn.Module):
    """Mamba-2 mixer over x [B, T, d_model] (module docstring)."""

    def __init__(self, params: Params, model: ModelConfig) -> None:
        super().__init__()
        self.params, self.sizes = params, Sizes(params, model.d_model)
        s = self.sizes
        self.in_proj = nn.Linear(s.d_model, s.in_proj, bias=False)
        self.conv1d = nn.Conv1d(s.conv_dim, s.conv_dim, s.kernel, groups=s.conv_dim, bias=True)
        self.dt_bias = nn.Parameter(torch.empty(s.heads))
        self.A_log = nn.Parameter(torch.empty(s.heads))
        self.D = nn.Parameter(torch.empty(s.heads))
        self.norm = GatedRMSNorm(s.inner, s.groups, model.norm_eps)
        self.out_proj = nn.Linear(s.inner, s.d_model, bias=False)
        self.reset_parameters()
        self.backend: str | None = None
        self.backend_note: str | None = None  # a caveat of the selected fast path
        if params.backend != "triton":  # a triton block is resolved once it has a device
            self.select_backend(torch.device("cpu"))

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 1e-3, dt_max: float = 1e-1) -> None:
        """Projections ~ N(0, 0.02), conv as torch's default; dt_bias = softplus^-1(dt) with
        dt log-uniform in [dt_min, dt_max] (floor 1e-4), A_log = log U(1, 16), D = 1,
        norm weight 1 (as mamba)."""
        nn.init.normal_(self.in_proj.weight, std=0.02)
        nn.init.normal_(self.out_proj.weight, std=0.02)
        self.conv1d.reset_parameters()
        log_dt = torch.rand(self.sizes.heads) * math.log(dt_max / dt_min) + math.log(dt_min)
        dt = log_dt.exp().clamp_min(1e-4)
        self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        self.A_log.copy_(torch.empty(self.sizes.heads).uniform_(1.0, 16.0).log())
        self.D.fill_(1.0)
        self.norm.weight.fill_(1.0)

    def select_backend(self, device: torch.device | str) -> str:
        """Choose the SSD backend for `device`; raises BackendUnavailable if the requested
        one cannot run (triton needs CUDA and the `fla` package)."""
        device = torch.device(device)
        on_cuda = device.type == "cuda"
        if self.params.backend == "triton" and not on_cuda:
            raise BackendUnavailable(f"ssm backend 'triton' needs a CUDA device (got {device})")
        available = {"triton": on_cuda and fla_importable(), "reference": True}
        if self.params.backend == "triton" and not available["triton"]:
            raise BackendUnavailable(
                f"ssm backend 'triton' needs flash-linear-attention (fla): {INSTALL_HINT}"
            )
        self.backend = resolve_backend(self.params.backend, device, available)
        # where fla refuses chunk_simple_gla's backward, training takes chunk_gla: say so
        self.backend_note = simple_gla_backward_refused() if self.backend == "triton" else None
        return self.backend

    def _scan(self, x, dt, A, Bm, Cm, state_BHPN, keep_state: bool):
        """SSD by the selected backend: (y [B, T, H, P], final state [B, H, P, N] float32,
        None from triton unless `keep_state`)."""
        if self.backend == "triton":
            if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
                raise BackendUnavailable(f"ssm backend 'triton' cannot run on {x.device}")
            return ssd_fla(x, dt, A, Bm, Cm, state_BHPN, output_final_state=keep_state)
        if self.backend != "reference":
            raise BackendUnavailable("no ssm backend selected: call select_backend(device)")
        return ssd_chunked(x, dt, A, Bm, Cm, self.params.chunk_size, state_BHPN)

    def _split(self, zxbcdt: torch.Tensor):
        s = self.sizes
        return zxbcdt.split([s.inner, s.conv_dim, s.heads], dim=-1)

    def _ssm_inputs(self, xBC: torch.Tensor, dt_raw: torch.Tensor):
        """Post-conv channels [..., conv_dim] and raw dt [..., H] -> x [..., H, P], dt
        (float32), A (float32), B and C [..., G, N]."""
        s = self.sizes
        x, Bm, Cm = xBC.split([s.inner, s.bc, s.bc], dim=-1)
        dt = F.softplus(dt_raw.float() + self.dt_bias.float())
        A = -torch.exp(self.A_log.float())
        x = x.unflatten(-1, (s.heads, s.head_dim))
        return x, dt, A, Bm.unflatten(-1, (s.groups, -1)), Cm.unflatten(-1, (s.groups, -1))

    def _output(self, y_HP: torch.Tensor, x_HP: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = y_HP.float() + self.D.float()[:, None] * x_HP.float()
        return self.out_proj(self.norm(y.flatten(-2), z))

    def _sequence(self, x_BTD, conv_state_BCK=None, ssm_state_BHPN=None, keep_state=False):
        """The parallel pass; returns (out, new conv state, final SSM state)."""
        z, xBC, dt_raw = self._split(self.in_proj(x_BTD))
        K = self.sizes.kernel
        xBC_BCT = xBC.transpose(1, 2)
        if conv_state_BCK is None:
            padded = F.pad(xBC_BCT, (K - 1, 0))
        else:
            padded = torch.cat([conv_state_BCK.to(xBC.dtype), xBC_BCT], dim=-1)
        conv = F.conv1d(padded, self.conv1d.weight, self.conv1d.bias, groups=self.sizes.conv_dim)
        x, dt, A, Bm, Cm = self._ssm_inputs(F.silu(conv).transpose(1, 2), dt_raw)
        y, final = self._scan(x, dt, A, Bm, Cm, ssm_state_BHPN, keep_state)
        return self._output(y, x, z), padded[:, :, padded.shape[-1] - (K - 1) :], final

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] -> [B, T, d_model], causal over T."""
        return self._sequence(x_BTD)[0]

    def allocate_cache(
        self,
        batch: int,
        max_len: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LayerCache:
        """Zero states: conv [B, conv_dim, conv_kernel - 1] in `dtype` (default: the
        weights'), ssm [B, heads, head_dim, d_state] in float32. Independent of max_len."""
        s, w = self.sizes, self.in_proj.weight
        device = device or w.device
        conv = torch.zeros(batch, s.conv_dim, s.kernel - 1, device=device, dtype=dtype or w.dtype)
        ssm = torch.zeros(
            batch, s.heads, s.head_dim, s.d_state, device=device, dtype=SSM_STATE_DTYPE
        )
        return LayerCache({"conv": conv, "ssm": ssm})

    def prefill(self, x_BTD: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Run x [B, T, d_model] in one parallel pass, continuing from the cache's states
        (zero for a fresh cache), and leave the final states in the cache."""
        out, conv, ssm = self._sequence(x_BTD, cache["conv"], cache["ssm"], keep_state=True)
        cache["conv"].copy_(conv)
        cache["ssm"].copy_(ssm)
        cache.length += x_BTD.shape[1]
        return out

    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Decode one token [B, 1, d_model]: O(1) work and memory, whatever the position."""
        z, xBC, dt_raw = self._split(self.in_proj(x_B1D[:, 0]))
        window = torch.cat([cache["conv"].to(xBC.dtype), xBC[:, :, None]], dim=-1)
        conv = (window * self.conv1d.weight[:, 0]).sum(dim=-1) + self.conv1d.bias
        x, dt, A, Bm, Cm = self._ssm_inputs(F.silu(conv), dt_raw)
        y, state = ssd_step(x, dt, A, Bm, Cm, cache["ssm"])
        cache["conv"].copy_(window[:, :, 1:])
        cache["ssm"].copy_(state)
        cache.length += 1
        return self._output(y, x, z)[:, None]


def param_count(params: Params, d_model: int) -> int:
    """in_proj + conv (weights and bias) + dt_bias, A_log, D + norm weight + out_proj."""
    s = Sizes(params, d_model)
    conv = s.conv_dim * s.kernel + s.conv_dim
    return s.d_model * s.in_proj + conv + 3 * s.heads + s.inner + s.inner * s.d_model


def _elementwise(s: Sizes, tokens: int) -> int:
    """`other` FLOPs that scale with tokens alone (module docstring)."""
    conv = (2 * s.kernel + 1 + 4) * s.conv_dim
    dt = 5 * s.heads
    gate_norm = (1 + 2 + 4 + 1 + 4) * s.inner  # dt * x, D skip, silu(z), gate, rmsnorm
    return tokens * (conv + dt + gate_norm)


def flops(params: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """Forward FLOPs of the chunked algorithm (module docstring for the formula)."""
    s, L, T = Sizes(params, d_model), params.chunk_size, seq_len
    chunks = -(-T // L)
    squares = (T // L) * L * L + (T % L) ** 2
    states = s.heads * s.head_dim * s.d_state
    proj = linear_flops(T, s.d_model, s.in_proj) + linear_flops(T, s.inner, s.d_model)
    ssd = 2 * s.groups * s.d_state * squares + 2 * s.heads * s.head_dim * squares
    ssd += 2 * 2 * T * states
    other = _elementwise(s, T) + 3 * s.heads * squares + 2 * chunks * states
    other += T * (2 * s.heads + s.inner + s.heads * s.d_state) + T * s.inner  # decays, y sum
    return FlopCount(batch * (proj + ssd), batch * other)


def decode_flops(params: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """One token at any position t (the same for every t): projections, the state update
    dt x B^T (2 H P N) and the read-out h C (2 H P N) are matmul-type; conv, gates, the state
    decay (exp per head, multiply per state element) and the norm are `other`."""
    s = Sizes(params, d_model)
    states = s.heads * s.head_dim * s.d_state
    proj = linear_flops(1, s.d_model, s.in_proj) + linear_flops(1, s.inner, s.d_model)
    return FlopCount(batch * (proj + 4 * states), batch * (_elementwise(s, 1) + states + s.heads))


def cache_bytes(params: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """B * conv_dim * (conv_kernel - 1) * dtype_bytes for the conv state, plus
    B * heads * head_dim * d_state * 4 for the float32 SSM state; independent of seq_len."""
    s = Sizes(params, d_model)
    conv = batch * s.conv_dim * (s.kernel - 1) * dtype_bytes
    return conv + batch * s.heads * s.head_dim * s.d_state * SSM_STATE_DTYPE.itemsize
