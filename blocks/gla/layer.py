"""The `gla` layer: the nn.Module of `archlab.blocks.gla` (the record's docstring has the
maths, backends and costs)."""

from __future__ import annotations

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
from archlab.blocks.gla import STATE_BYTES, GLASizes, Params
from archlab.kernels.linear_attn.fla_backend import INSTALL_HINT, fla_importable, gla_fla
from archlab.kernels.linear_attn.reference import gla, gla_step, rms_norm_gated
from archlab.kernels.runtime import triton_interpreted
from archlab.kernels.short_conv import causal_conv1d, causal_conv1d_step

STATE_DTYPE = torch.float32
assert STATE_DTYPE.itemsize == STATE_BYTES  # the record counts the state's bytes
NAMES = ("q", "k", "v")


def triton_can_run(device: torch.device) -> str | None:
    """A backend check: fla's Triton kernels need a CUDA device and the fla package."""
    reason = needs_cuda(device)
    if reason is None and not fla_importable("gla"):
        reason = f"needs flash-linear-attention (fla): {INSTALL_HINT}"
    return reason


class GLABlock(nn.Module):
    """Gated linear attention over x [B, T, d_model] (the record's docstring)."""

    # backend -> why it cannot run on a device (None: it can), in the order `auto` tries them
    BACKENDS = {"triton": triton_can_run, "reference": runs_anywhere}

    def __init__(self, params: Params, model: ModelConfig) -> None:
        super().__init__()
        self.params, self.sizes = params, GLASizes(params, model.d_model)
        s, d = self.sizes, model.d_model
        self.cache_dtype, self.eps = model.torch_dtype, model.norm_eps
        self.q_proj = nn.Linear(d, s.key_dim, bias=False)
        self.k_proj = nn.Linear(d, s.key_dim, bias=False)
        self.v_proj = nn.Linear(d, s.value_dim, bias=False)
        self.g_proj = nn.Linear(d, s.value_dim, bias=False) if params.use_output_gate else None
        if params.use_short_conv:
            for name, width in zip(NAMES, (s.key_dim, s.key_dim, s.value_dim), strict=True):
                conv = nn.Conv1d(width, width, s.kernel, groups=width, bias=params.conv_bias)
                setattr(self, f"{name}_conv1d", conv)
        self.gk_proj = nn.Sequential(
            nn.Linear(d, s.rank, bias=False), nn.Linear(s.rank, s.key_dim, bias=True)
        )
        self.o_proj = nn.Linear(s.value_dim, d, bias=False)
        norm = nn.Module()
        norm.weight = nn.Parameter(torch.ones(s.head_v))
        # fla's names: the norm fused with the swish gate, or a plain RMSNorm
        self.norm_name = "g_norm_swish_gate" if params.use_output_gate else "g_norm"
        setattr(self, self.norm_name, norm)
        self.reset_parameters()
        select_cpu_backend(self, self.BACKENDS)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Projections ~ N(0, 0.02) (the gate's bias 0); convs as torch's default; norm
        weight 1."""
        for lin in (self.q_proj, self.k_proj, self.v_proj, self.g_proj, self.o_proj):
            if lin is not None:
                nn.init.normal_(lin.weight, std=0.02)
        nn.init.normal_(self.gk_proj[0].weight, std=0.02)
        nn.init.normal_(self.gk_proj[1].weight, std=0.02)
        nn.init.zeros_(self.gk_proj[1].bias)
        getattr(self, self.norm_name).weight.fill_(1.0)

    def select_backend(self, device: torch.device | str) -> str:
        """Choose the backend for `device`; raises BackendUnavailable if the requested one
        cannot run (triton needs CUDA and the `fla` package)."""
        self.backend = resolve_backend(
            "gla", self.params.backend, torch.device(device), self.BACKENDS
        )
        return self.backend

    def _inputs(self, x, conv_states=None):
        """x [..., d] (a sequence [B, T, d], or one token [B, d] with `conv_states`) ->
        q, k, gk [.., H, Kh] (gk float32), v [.., H, Vh], and the new conv states."""
        s, p = self.sizes, self.params
        qkv = [self.q_proj(x), self.k_proj(x), self.v_proj(x)]
        new_states = []
        if p.use_short_conv:
            for i, name in enumerate(NAMES):
                conv = getattr(self, f"{name}_conv1d")
                weight, state = conv.weight[:, 0], None if conv_states is None else conv_states[i]
                if x.dim() == 2:
                    y, state = causal_conv1d_step(qkv[i], weight, conv.bias, state)
                else:
                    y, state = causal_conv1d(qkv[i], weight, conv.bias, state)
                qkv[i] = F.silu(y)
                new_states.append(state)
        gk = F.logsigmoid(self.gk_proj(x).float()) / p.gate_logit_normalizer
        if p.clamp_min is not None:
            gk = gk.clamp_min(p.clamp_min)
        q, k, v = qkv
        q, k, gk = (t.unflatten(-1, (s.heads, s.head_k)) for t in (q, k, gk))
        return q, k, v.unflatten(-1, (s.heads, s.head_v)), gk, new_states

    def _output(self, o_HV: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """o [..., H, Vh] -> o_proj(norm(o) (* silu(g))) [..., d] in x's dtype."""
        gate = None
        if self.g_proj is not None:
            gate = self.g_proj(x).unflatten(-1, (self.sizes.heads, self.sizes.head_v))
        weight = getattr(self, self.norm_name).weight
        o = rms_norm_gated(o_HV, gate, weight, self.eps).to(x.dtype)
        return self.o_proj(o.flatten(-2))

    def _scan(self, q, k, v, gk, state, keep_state: bool, kernel: str = "chunk"):
        """GLA over a sequence by the selected backend -> (o, final state)."""
        scale = self.sizes.head_k**-0.5
        if self.backend == "triton":
            if not q.is_cuda and not triton_interpreted():
                raise BackendUnavailable(f"gla backend 'triton' cannot run on {q.device}")
            return gla_fla(q, k, v, gk, scale, state, keep_state, kernel)
        if self.backend != "reference":
            raise BackendUnavailable("no gla backend selected: call select_backend(device)")
        return gla(q, k, v, gk, scale, state)

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] -> [B, T, d_model], causal over T."""
        q, k, v, gk, _ = self._inputs(x_BTD)
        o, _ = self._scan(q, k, v, gk, None, keep_state=False)
        return self._output(o, x_BTD)

    def allocate_cache(
        self,
        batch: int,
        max_len: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LayerCache:
        """Zero states, independent of max_len: with short convs conv_q, conv_k, conv_v
        [B, channels, conv_size - 1] in `dtype` (default: the model's); state
        [B, H, Kh, Vh] in float32."""
        s = self.sizes
        device = device or self.o_proj.weight.device
        dtype = dtype or self.cache_dtype
        tensors = {}
        if self.params.use_short_conv:
            for name, width in zip(NAMES, (s.key_dim, s.key_dim, s.value_dim), strict=True):
                tensors[f"conv_{name}"] = torch.zeros(
                    batch, width, s.kernel - 1, device=device, dtype=dtype
                )
        tensors["state"] = torch.zeros(
            batch, s.heads, s.head_k, s.head_v, device=device, dtype=STATE_DTYPE
        )
        return LayerCache(tensors)

    def _conv_states(self, cache: LayerCache):
        return [cache[f"conv_{n}"] for n in NAMES] if self.params.use_short_conv else None

    def _store(self, cache: LayerCache, conv_states, state) -> None:
        for name, new in zip(NAMES, conv_states, strict=False):
            cache[f"conv_{name}"].copy_(new)
        cache["state"].copy_(state)

    def prefill(self, x_BTD: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Run x [B, T, d_model] in one pass, continuing from the cache's states (zero for a
        fresh cache), and leave the final states in the cache."""
        q, k, v, gk, convs = self._inputs(x_BTD, self._conv_states(cache))
        o, state = self._scan(q, k, v, gk, cache["state"], keep_state=True)
        self._store(cache, convs, state)
        cache.length += x_BTD.shape[1]
        return self._output(o, x_BTD)

    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Decode one token [B, 1, d_model]: O(1) work and memory, whatever the position."""
        x = x_B1D[:, 0]
        q, k, v, gk, convs = self._inputs(x, self._conv_states(cache))
        if self.backend == "triton":
            seq = (t[:, None] for t in (q, k, v, gk))
            o, state = self._scan(*seq, cache["state"], keep_state=True, kernel="recurrent")
            o = o[:, 0]
        else:
            o, state = gla_step(q, k, v, gk, self.sizes.head_k**-0.5, cache["state"])
        self._store(cache, convs, state)
        cache.length += 1
        return self._output(o, x)[:, None]
