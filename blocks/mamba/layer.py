"""The `mamba` layer: the nn.Module of `archlab.blocks.mamba` (Mamba-1; the record's
docstring has the maths, backends and costs)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from archlab.blocks.base import (
    BackendUnavailable,
    ModelConfig,
    resolve_backend,
    runs_anywhere,
    select_cpu_backend,
)
from archlab.blocks.cache import LayerCache
from archlab.blocks.mamba import MAX_TRITON_D_STATE, STATE_BYTES, MambaSizes, Params
from archlab.kernels.runtime import triton_can_run
from archlab.kernels.selective_scan.reference import selective_scan, selective_scan_step
from archlab.kernels.short_conv import causal_conv1d, causal_conv1d_step

STATE_DTYPE = torch.float32
assert STATE_DTYPE.itemsize == STATE_BYTES  # the record counts the state's bytes


def _triton_scan():
    """archlab.kernels.selective_scan.triton's scan (imported on first use: importing it
    decorates its kernels, which must happen after TRITON_INTERPRET is set, if at all)."""
    from archlab.kernels.selective_scan.triton import selective_scan_triton

    return selective_scan_triton


def triton_check(device: torch.device, d_state: int, asked_by_name: bool) -> str | None:
    """The `triton` backend's check: CUDA (or, asked for by name, Triton's interpreter on the
    CPU), Triton installed, d_state <= MAX_TRITON_D_STATE."""
    reason = triton_can_run(device, asked_by_name)
    if reason is None and d_state > MAX_TRITON_D_STATE:
        reason = f"takes d_state <= {MAX_TRITON_D_STATE} (got {d_state})"
    return reason


class MambaBlock(nn.Module):
    """Mamba-1 mixer over u [B, T, d_model] (the record's docstring)."""

    # backend -> why it cannot run on a device (None: it can), in the order `auto` tries them;
    # triton on the CPU only when asked for by name under Triton's interpreter (the tests)
    BACKENDS = {
        "triton": lambda device: triton_can_run(device, asked_by_name=False),
        "reference": runs_anywhere,
    }

    def __init__(self, params: Params, model: ModelConfig) -> None:
        super().__init__()
        self.params, self.sizes = params, MambaSizes(params, model.d_model)
        s, d = self.sizes, model.d_model
        self.cache_dtype = model.torch_dtype
        self.in_proj = nn.Linear(d, 2 * s.inner, bias=False)
        self.conv1d = nn.Conv1d(s.inner, s.inner, s.kernel, groups=s.inner, bias=True)
        self.x_proj = nn.Linear(s.inner, s.x_proj, bias=False)
        self.dt_proj = nn.Linear(s.dt_rank, s.inner, bias=True)
        self.A_log = nn.Parameter(torch.empty(s.inner, s.d_state))
        self.D = nn.Parameter(torch.empty(s.inner))
        self.out_proj = nn.Linear(s.inner, d, bias=False)
        self.norm_eps = model.norm_eps
        if params.inner_norms:  # Jamba's names
            self.dt_layernorm = nn.RMSNorm(s.dt_rank, eps=model.norm_eps)
            self.b_layernorm = nn.RMSNorm(s.d_state, eps=model.norm_eps)
            self.c_layernorm = nn.RMSNorm(s.d_state, eps=model.norm_eps)
        self.reset_parameters()
        select_cpu_backend(self, self.BACKENDS)

    @torch.no_grad()
    def reset_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        """As mamba: dt_proj's weight U(-r^-0.5, r^-0.5), its bias softplus^-1(dt) with dt
        log-uniform in [dt_min, dt_max] (floor 1e-4); A = 1..d_state in every channel (A_log
        its log); D = 1; in_proj, out_proj and the conv as torch's default; the inner norms'
        weights 1."""
        s = self.sizes
        nn.init.uniform_(self.dt_proj.weight, -(s.dt_rank**-0.5), s.dt_rank**-0.5)
        log_dt = torch.rand(s.inner) * math.log(dt_max / dt_min) + math.log(dt_min)
        dt = log_dt.exp().clamp_min(1e-4)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        A = torch.arange(1, s.d_state + 1, dtype=torch.float32).repeat(s.inner, 1)
        self.A_log.copy_(A.log())
        self.D.fill_(1.0)
        for name in ("dt_layernorm", "b_layernorm", "c_layernorm"):
            if hasattr(self, name):
                nn.init.ones_(getattr(self, name).weight)

    def select_backend(self, device: torch.device | str) -> str:
        """Choose the backend for `device`; raises BackendUnavailable if the requested one
        cannot run (triton needs CUDA, or the interpreter when asked for by name, and
        d_state <= MAX_TRITON_D_STATE)."""
        self.backend = None
        by_name, n = self.params.backend == "triton", self.sizes.d_state
        table = dict(self.BACKENDS)
        table["triton"] = lambda dev: triton_check(dev, n, asked_by_name=by_name)
        self.backend = resolve_backend("mamba", self.params.backend, torch.device(device), table)
        return self.backend

    def _inner_norm(self, x: torch.Tensor, norm: nn.RMSNorm) -> torch.Tensor:
        """RMSNorm over the last dim in float32 (as Jamba's), returned in x's dtype."""
        y = F.rms_norm(x.float(), (x.shape[-1],), norm.weight.float(), self.norm_eps)
        return y.to(x.dtype)

    def _ssm_inputs(self, x: torch.Tensor):
        """Post-conv x [..., E] -> dt [..., E], A [E, N], B, C [..., N] (all float32); with
        inner_norms dt, B and C are RMS-normalised after x_proj (Jamba), before dt_proj."""
        s = self.sizes
        dt, Bm, Cm = self.x_proj(x).split([s.dt_rank, s.d_state, s.d_state], dim=-1)
        if self.params.inner_norms:
            dt = self._inner_norm(dt, self.dt_layernorm)
            Bm = self._inner_norm(Bm, self.b_layernorm)
            Cm = self._inner_norm(Cm, self.c_layernorm)
        dt = F.softplus(self.dt_proj(dt).float())
        return dt, -torch.exp(self.A_log.float()), Bm.float(), Cm.float()

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = (y + self.D.float() * x.float()) * F.silu(z.float())
        return self.out_proj(y.to(z.dtype))

    def _sequence(self, u_BTD, conv_state=None, ssm_state=None):
        """The pass over a sequence -> (out, new conv state, final SSM state)."""
        if self.backend not in ("triton", "reference"):
            raise BackendUnavailable("no mamba backend selected: call select_backend(device)")
        x, z = self.in_proj(u_BTD).chunk(2, dim=-1)
        x, conv_state = causal_conv1d(x, self.conv1d.weight[:, 0], self.conv1d.bias, conv_state)
        x = F.silu(x)
        scan = _triton_scan() if self.backend == "triton" else selective_scan
        y, state = scan(x, *self._ssm_inputs(x), ssm_state)
        return self._output(y, x, z), conv_state, state

    def forward(self, u_BTD: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] -> [B, T, d_model], causal over T."""
        return self._sequence(u_BTD)[0]

    def allocate_cache(
        self,
        batch: int,
        max_len: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LayerCache:
        """Zero states, independent of max_len: conv [B, d_inner, d_conv - 1] in `dtype`
        (default: the model's), ssm [B, d_inner, d_state] in float32."""
        s = self.sizes
        device = device or self.out_proj.weight.device
        conv = torch.zeros(
            batch, s.inner, s.kernel - 1, device=device, dtype=dtype or self.cache_dtype
        )
        ssm = torch.zeros(batch, s.inner, s.d_state, device=device, dtype=STATE_DTYPE)
        return LayerCache({"conv": conv, "ssm": ssm})

    def prefill(self, u_BTD: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Run u [B, T, d_model] in one pass, continuing from the cache's states (zero for a
        fresh cache), and leave the final states in the cache."""
        out, conv, ssm = self._sequence(u_BTD, cache["conv"], cache["ssm"])
        cache["conv"].copy_(conv)
        cache["ssm"].copy_(ssm)
        cache.length += u_BTD.shape[1]
        return out

    def step(self, u_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Decode one token [B, 1, d_model]: O(1) work and memory, whatever the position.
        Every backend runs the PyTorch step (`selective_scan_step`): one token is a handful of
        elementwise ops on the [B, d_inner, d_state] state, no loop; a fused Triton step
        kernel would only save their launches."""
        x, z = self.in_proj(u_B1D[:, 0]).chunk(2, dim=-1)
        x, conv = causal_conv1d_step(x, self.conv1d.weight[:, 0], self.conv1d.bias, cache["conv"])
        x = F.silu(x)
        y, ssm = selective_scan_step(x, *self._ssm_inputs(x), cache["ssm"])
        cache["conv"].copy_(conv)
        cache["ssm"].copy_(ssm)
        cache.length += 1
        return self._output(y, x, z)[:, None]
