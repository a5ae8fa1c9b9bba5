"""The `ssm` layer: the nn.Module of `archlab.blocks.ssm` (Mamba-2; the record's docstring
has the maths, backends and costs)."""

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
from archlab.blocks.ssm import SSM_STATE_BYTES, Params, SSMSizes
from archlab.kernels import runtime
from archlab.kernels.runtime import triton_interpreted
from archlab.kernels.short_conv import causal_conv1d, causal_conv1d_step
from archlab.kernels.ssd.fla_backend import (
    INSTALL_HINT,
    conv_silu_fla,
    fla_glue_importable,
    fla_importable,
    gated_rmsnorm_fla,
    simple_gla_backward_refused,
    ssd_fla,
)
from archlab.kernels.ssd.reference import ssd_chunked, ssd_step

SSM_STATE_DTYPE = torch.float32
assert SSM_STATE_DTYPE.itemsize == SSM_STATE_BYTES  # the record counts the state's bytes


def _triton_step():
    """archlab.kernels.ssd.triton_step (imported on first use: it imports triton and
    registers a custom op)."""
    from archlab.kernels.ssd import triton_step

    return triton_step


def triton_can_run(device: torch.device) -> str | None:
    """A backend check: fla's Triton kernels need a CUDA device and the fla package."""
    reason = needs_cuda(device)
    if reason is None and not fla_importable():
        reason = f"needs flash-linear-attention (fla): {INSTALL_HINT}"
    return reason


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


class SSMBlock(nn.Module):
    """Mamba-2 mixer over x [B, T, d_model] (the record's docstring)."""

    # backend -> why it cannot run on a device (None: it can), in the order `auto` tries them
    BACKENDS = {"triton": triton_can_run, "reference": runs_anywhere}

    def __init__(self, params: Params, model: ModelConfig) -> None:
        super().__init__()
        self.params, self.sizes = params, SSMSizes(params, model.d_model)
        s = self.sizes
        self.in_proj = nn.Linear(s.d_model, s.in_proj, bias=False)
        self.conv1d = nn.Conv1d(s.conv_dim, s.conv_dim, s.kernel, groups=s.conv_dim, bias=True)
        self.dt_bias = nn.Parameter(torch.empty(s.heads))
        self.A_log = nn.Parameter(torch.empty(s.heads))
        self.D = nn.Parameter(torch.empty(s.heads))
        self.norm = GatedRMSNorm(s.inner, s.groups, model.norm_eps)
        self.out_proj = nn.Linear(s.inner, s.d_model, bias=False)
        self.reset_parameters()
        self.backend_note: str | None = None  # a caveat of the selected fast path
        select_cpu_backend(self, self.BACKENDS)

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
        self.backend = resolve_backend(
            "ssm", self.params.backend, torch.device(device), self.BACKENDS
        )
        # where fla refuses chunk_simple_gla's backward, training takes chunk_gla: say so
        self.backend_note = simple_gla_backward_refused() if self.backend == "triton" else None
        return self.backend

    def _scan(self, x, dt, A, Bm, Cm, state_BHPN, keep_state: bool):
        """SSD by the selected backend: (y [B, T, H, P], final state [B, H, P, N] float32,
        None from triton unless `keep_state`)."""
        if self.backend == "triton":
            self._triton_device(x)
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

    @staticmethod
    def _triton_device(t: torch.Tensor) -> None:
        if not t.is_cuda and not triton_interpreted():
            raise BackendUnavailable(f"ssm backend 'triton' cannot run on {t.device}")

    def _fla_glue(self, x_BTD: torch.Tensor) -> bool:
        """Whether the sequence pass runs its conv and norm through fla's kernels: on the
        triton backend, where this fla has them (kernels/ssd/fla_backend.py)."""
        if self.backend != "triton":
            return False
        self._triton_device(x_BTD)
        return fla_glue_importable()

    def _output(self, y_HP, x_HP, z, fla_glue: bool = False) -> torch.Tensor:
        """out_proj(gated rmsnorm(y + D x, z)). By fla (`fla_glue`): y + D x in one pass
        (float32 inside, one rounding to the dtype of y, x and D), then fla's gated norm,
        as mamba's fused path; else all in float32 (GatedRMSNorm)."""
        if fla_glue:
            y = torch.addcmul(y_HP, x_HP, self.D[:, None]).flatten(-2)
            h = gated_rmsnorm_fla(y, z, self.norm.weight, self.norm.groups, self.norm.eps)
            return self.out_proj(h.to(z.dtype))
        y = y_HP.float() + self.D.float()[:, None] * x_HP.float()
        return self.out_proj(self.norm(y.flatten(-2), z))

    def _conv(self, xBC_BTC, conv_state_BCK, keep_state: bool, fla_glue: bool):
        """silu(causal depthwise conv(xBC)) [B, T, conv_dim] and the new conv state (the
        last K - 1 inputs; None from fla unless `keep_state`)."""
        w_CK = self.conv1d.weight[:, 0]
        if fla_glue:
            return conv_silu_fla(xBC_BTC, w_CK, self.conv1d.bias, conv_state_BCK, keep_state)
        conv, state = causal_conv1d(xBC_BTC, w_CK, self.conv1d.bias, conv_state_BCK)
        return F.silu(conv), state

    def _sequence(self, x_BTD, conv_state_BCK=None, ssm_state_BHPN=None, keep_state=False):
        """The parallel pass; returns (out, new conv state, final SSM state)."""
        z, xBC, dt_raw = self._split(self.in_proj(x_BTD))
        fla_glue = self._fla_glue(x_BTD)
        xBC, conv_state = self._conv(xBC, conv_state_BCK, keep_state, fla_glue)
        x, dt, A, Bm, Cm = self._ssm_inputs(xBC, dt_raw)
        y, final = self._scan(x, dt, A, Bm, Cm, ssm_state_BHPN, keep_state)
        return self._output(y, x, z, fla_glue), conv_state, final

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
        conv, conv_state = causal_conv1d_step(
            xBC, self.conv1d.weight[:, 0], self.conv1d.bias, cache["conv"]
        )
        x, dt, A, Bm, Cm = self._ssm_inputs(F.silu(conv), dt_raw)
        if self._step_in_place(x, cache["ssm"]):
            y = _triton_step().ssd_step_triton(x, dt, A, Bm, Cm, cache["ssm"])
        else:
            y, state = ssd_step(x, dt, A, Bm, Cm, cache["ssm"])
            cache["ssm"].copy_(state)
        cache["conv"].copy_(conv_state)
        cache.length += 1
        return self._output(y, x, z)[:, None]

    def _step_in_place(self, x_BHP: torch.Tensor, state_BHPN: torch.Tensor) -> bool:
        """Whether `step` updates the SSM state in place by the Triton kernel: on the
        triton backend, on CUDA or under the interpreter (read from kernels/runtime.py
        itself), for a float32 state with unit stride along d_state (the cache's)."""
        return (
            self.backend == "triton"
            and (x_BHP.is_cuda or runtime.triton_interpreted())
            and state_BHPN.dtype == torch.float32
            and state_BHPN.stride(-1) == 1
        )
