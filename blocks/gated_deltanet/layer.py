"""The `gated_deltanet` layer: the nn.Module of `archlab.blocks.gated_deltanet` (the
record's docstring has the maths, backends and costs)."""

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
from archlab.blocks.gated_deltanet import FLA_MAX_HEAD_DIM, STATE_BYTES, GDNSizes, Params
from archlab.kernels.linear_attn.fla_backend import (
    INSTALL_HINT,
    fla_importable,
    gated_delta_backward_refused,
    gated_delta_rule_fla,
)
from archlab.kernels.linear_attn.reference import (
    gated_delta_rule,
    gated_delta_rule_step,
    rms_norm_gated,
)
from archlab.kernels.runtime import triton_interpreted
from archlab.kernels.short_conv import causal_conv1d, causal_conv1d_step

STATE_DTYPE = torch.float32
assert STATE_DTYPE.itemsize == STATE_BYTES  # the record counts the state's bytes


def triton_can_run(device: torch.device) -> str | None:
    """A backend check: fla's Triton kernels need a CUDA device and the fla package."""
    reason = needs_cuda(device)
    if reason is None and not fla_importable("gated_delta_rule"):
        reason = f"needs flash-linear-attention (fla): {INSTALL_HINT}"
    return reason


def triton_fits(head_dim: int) -> str | None:
    """Why fla's chunked kernels cannot take heads of `head_dim` channels (else None)."""
    if head_dim > FLA_MAX_HEAD_DIM:
        return f"fla's gated delta rule kernels take head_dim <= {FLA_MAX_HEAD_DIM}"
    return None


def init_dt_bias_(bias: torch.Tensor, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
    """bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max] (floor 1e-4), as mamba
    and fla."""
    n = bias.numel()
    dt = torch.exp(torch.rand(n) * math.log(dt_max / dt_min) + math.log(dt_min)).clamp_min(1e-4)
    bias.copy_(dt + torch.log(-torch.expm1(-dt)))


class GatedDeltaNetBlock(nn.Module):
    """Gated DeltaNet over x [B, T, d_model] (the record's docstring)."""

    # backend -> why it cannot run on a device (None: it can), in the order `auto` tries them
    BACKENDS = {"triton": triton_can_run, "reference": runs_anywhere}

    def __init__(self, params: Params, model: ModelConfig) -> None:
        super().__init__()
        self.params, self.sizes = params, GDNSizes(params, model.d_model)
        s, d = self.sizes, model.d_model
        self.cache_dtype, self.eps = model.torch_dtype, model.norm_eps
        self.q_proj = nn.Linear(d, s.key_dim, bias=False)
        self.k_proj = nn.Linear(d, s.key_dim, bias=False)
        self.v_proj = nn.Linear(d, s.value_dim, bias=False)
        self.a_proj = nn.Linear(d, s.v_heads, bias=False)
        self.b_proj = nn.Linear(d, s.v_heads, bias=False)
        self.A_log = nn.Parameter(torch.empty(s.v_heads))
        self.dt_bias = nn.Parameter(torch.empty(s.v_heads))
        if params.use_short_conv:
            for name, width in (("q", s.key_dim), ("k", s.key_dim), ("v", s.value_dim)):
                conv = nn.Conv1d(width, width, s.kernel, groups=width, bias=params.conv_bias)
                setattr(self, f"{name}_conv1d", conv)
        self.g_proj = nn.Linear(d, s.value_dim, bias=False) if params.use_gate else None
        self.o_norm = nn.Module()
        self.o_norm.weight = nn.Parameter(torch.ones(s.head_v))
        self.o_proj = nn.Linear(s.value_dim, d, bias=False)
        self.reset_parameters()
        select_cpu_backend(self, self.BACKENDS)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Projections ~ N(0, 0.02); A ~ U(1e-4, 16) (A_log its log), dt_bias as mamba; convs
        as torch's default; norm weight 1 (fla's init)."""
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.a_proj, self.b_proj):
            nn.init.normal_(lin.weight, std=0.02)
        for lin in (self.g_proj, self.o_proj):
            if lin is not None:
                nn.init.normal_(lin.weight, std=0.02)
        self.A_log.copy_(torch.empty_like(self.A_log).uniform_(1e-4, 16).log())
        init_dt_bias_(self.dt_bias)
        self.o_norm.weight.fill_(1.0)

    def select_backend(self, device: torch.device | str) -> str:
        """Choose the backend for `device`; raises BackendUnavailable if the requested one
        cannot run (triton needs CUDA, the `fla` package and head_dim <= 256)."""
        table = dict(self.BACKENDS)
        table["triton"] = lambda dev: triton_can_run(dev) or triton_fits(self.sizes.head_k)
        self.backend = resolve_backend(
            "gated_deltanet", self.params.backend, torch.device(device), table
        )
        # where fla refuses chunk_gated_delta_rule's backward, training takes chunk_kda: say so
        self.backend_note = gated_delta_backward_refused() if self.backend == "triton" else None
        return self.backend

    def _convs(self):
        return [getattr(self, f"{n}_conv1d") for n in ("q", "k", "v")]

    def _inputs(self, x, conv_states=None):
        """x [..., d] (a sequence [B, T, d], or one token [B, d] with `conv_states`) ->
        q, k [.., H, K], v [.., HV, V], g, beta [.., HV] (float32), and the new conv states."""
        s, p = self.sizes, self.params
        qkv = [self.q_proj(x), self.k_proj(x), self.v_proj(x)]
        new_states = []
        if p.use_short_conv:
            for i, conv in enumerate(self._convs()):
                weight, state = conv.weight[:, 0], None if conv_states is None else conv_states[i]
                if x.dim() == 2:
                    y, state = causal_conv1d_step(qkv[i], weight, conv.bias, state)
                else:
                    y, state = causal_conv1d(qkv[i], weight, conv.bias, state)
                qkv[i] = y
                new_states.append(state)
        q, k, v = (F.silu(t) for t in qkv)
        g = -torch.exp(self.A_log.float()) * F.softplus(self.a_proj(x).float() + self.dt_bias)
        beta = torch.sigmoid(self.b_proj(x).float()) * (2.0 if p.allow_neg_eigval else 1.0)
        q, k = (t.unflatten(-1, (s.heads, s.head_k)) for t in (q, k))
        return q, k, v.unflatten(-1, (s.v_heads, s.head_v)), g, beta, new_states

    def _output(self, o_HV: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o [..., HV, V] -> out_proj(norm(o) (* silu(g))) [..., d] in x's dtype."""
        gate = None
        if self.g_proj is not None:
            gate = self.g_proj(x).unflatten(-1, (self.sizes.v_heads, self.sizes.head_v))
        o = rms_norm_gated(o_HV, gate, self.o_norm.weight, self.eps).to(x.dtype)
        return self.o_proj(o.flatten(-2))

    def _rule(self, q, k, v, g, beta, state, keep_state: bool, kernel: str = "chunk"):
        """The delta rule over a sequence by the selected backend -> (o, final state)."""
        scale = self.sizes.head_k**-0.5
        if self.backend == "triton":
            if not q.is_cuda and not triton_interpreted():
                raise BackendUnavailable(
                    f"gated_deltanet backend 'triton' cannot run on {q.device}"
                )
            return gated_delta_rule_fla(q, k, v, g, beta, scale, state, keep_state, kernel)
        if self.backend != "reference":
            raise BackendUnavailable(
                "no gated_deltanet backend selected: call select_backend(device)"
            )
        return gated_delta_rule(q, k, v, g, beta, scale, state)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] -> [B, T, d_model], causal over T."""
        q, k, v, g, beta, _ = self._inputs(x_BTD)
        o, _ = self._rule(q, k, v, g, beta, None, keep_state=False)
        return self._output(o, x_BTD)

    def allocate_cache(
        self,
        batch: int,
        max_len: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LayerCache:
        """Zero states, independent of max_len: conv_q, conv_k, conv_v [B, channels,
        conv_size - 1] in `dtype` (default: the model's; none without short convs) and
        state [B, HV, K, V] in float32."""
        s = self.sizes
        device = device or self.o_proj.weight.device
        dtype = dtype or self.cache_dtype
        tensors = {}
        if self.params.use_short_conv:
            for name, width in (("q", s.key_dim), ("k", s.key_dim), ("v", s.value_dim)):
                tensors[f"conv_{name}"] = torch.zeros(
                    batch, width, s.kernel - 1, device=device, dtype=dtype
                )
        tensors["state"] = torch.zeros(
            batch, s.v_heads, s.head_k, s.head_v, device=device, dtype=STATE_DTYPE
        )
        return LayerCache(tensors)

    def _conv_states(self, cache: LayerCache):
        if not self.params.use_short_conv:
            return None
        return [cache[f"conv_{n}"] for n in ("q", "k", "v")]

    def _store(self, cache: LayerCache, conv_states, state) -> None:
        for name, new in zip(("q", "k", "v"), conv_states, strict=False):
            cache[f"conv_{name}"].copy_(new)
        cache["state"].copy_(state)

    def prefill(self, x_BTD: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Run x [B, T, d_model] in one pass, continuing from the cache's states (zero for a
        fresh cache), and leave the final states in the cache."""
        q, k, v, g, beta, convs = self._inputs(x_BTD, self._conv_states(cache))
        o, state = self._rule(q, k, v, g, beta, cache["state"], keep_state=True)
        self._store(cache, convs, state)
        cache.length += x_BTD.shape[1]
        return self._output(o, x_BTD)

    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Decode one token [B, 1, d_model]: O(1) work and memory, whatever the position."""
        x = x_B1D[:, 0]
        q, k, v, g, beta, convs = self._inputs(x, self._conv_states(cache))
        if self.backend == "triton":
            seq = (t[:, None] for t in (q, k, v, g, beta))
            o, state = self._rule(*seq, cache["state"], keep_state=True, kernel="recurrent")
            o = o[:, 0]
        else:
            scale = self.sizes.head_k**-0.5
            o, state = gated_delta_rule_step(q, k, v, g, beta, scale, cache["state"])
        self._store(cache, convs, state)
        cache.length += 1
        return self._output(o, x)[:, None]
