"""`mamba`: a Mamba-1 selective SSM mixer (Gu & Dao 2023, "Mamba: Linear-Time Sequence
Modeling with Selective State Spaces", arXiv:2312.00752), as mamba_ssm's `Mamba` layer
(`mamba_simple.py`, its defaults: no bias on in_proj and out_proj, a bias on the conv),
without the pre-norm and residual archlab adds. The layer is
`archlab.blocks.mamba.layer.MambaBlock`. (`ssm` is Mamba-2.) `inner_norms` adds Jamba's
RMSNorms of dt, B and C (Lieber et al. 2024, "Jamba: A Hybrid Transformer-Mamba Language
Model", arXiv:2403.19887; HF's `JambaMambaMixer`: `dt_layernorm`, `b_layernorm`,
`c_layernorm`, eps = the model's norm_eps), applied in PyTorch after x_proj's split and
before dt_proj, so both backends scan the normed inputs with the kernel unchanged.

    x, z = in_proj(u)                          E = d_inner = expand * d_model each
    x = silu(causal depthwise conv1d(x))       width d_conv, with bias
    dt, B, C = x_proj(x)                       dt_rank, d_state, d_state
    dt, B, C = rms(dt), rms(B), rms(C)         with inner_norms only (Jamba)
    dt = softplus(dt_proj(dt));  A = -exp(A_log)    dt [E] per token, A [E, d_state]
    y = selective scan (kernels/selective_scan): h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t,
        y_t = <h_t, C_t> per channel, + D * x
    out = out_proj(y * silu(z))

Parameter names follow mamba (`in_proj`, `conv1d`, `x_proj`, `dt_proj`, `A_log`, `D`,
`out_proj`; Jamba's `dt_layernorm`, `b_layernorm`, `c_layernorm`), so weights map one to
one. dt_rank "auto" is ceil(d_model / 16).

Backends, in `auto` order: `triton` (CUDA; archlab's own Triton selective scan,
kernels/selective_scan/triton.py: the [channels, d_state] state in registers, a loop over
tokens, states checkpointed every 64 tokens and recomputed chunk by chunk in the backward;
d_state <= 256) and `reference` (float32 PyTorch, a loop over tokens: T sequential steps of
O(B E d_state), every state kept under autograd; fine at small sizes). No installable
library serves a fast path on Hopper without a CUDA build: mamba_ssm's selective scan is a
CUDA extension built for the local CUDA and torch, which archlab does not depend on, and
fla has no Mamba-1 kernel. Decode (`step`) runs the PyTorch step on every backend. The
cache: the conv state (the last d_conv - 1 inputs of the E conv channels, in the cache
dtype) and the SSM state [B, E, d_state] in float32.

FLOPs (2 per multiply-add), per token (the scan is the recurrence, so the forward is T
times one token and decode equals one token of it), E = d_inner, N = d_state, R = dt_rank,
K = d_conv:
- matmul: in_proj 2 d 2E, x_proj 2 E (R + 2N), dt_proj 2 R E, out_proj 2 E d; the state
  update dt x B^T (2 E N) and the read-out <h, C> (2 E N).
- other, per element: conv 2K + 1 and SiLU 4 per channel; dt bias 1 and softplus 3, dt * x
  1 per channel; the decay dt A, its exp and its product with the state (3 E N); D skip 2,
  gate SiLU 4 + 1 per channel; with inner_norms, `INNER_NORM_FLOPS` (4: square, sum,
  rsqrt scale, weight) per element of dt, B and C (R + 2N).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field

from archlab.blocks.base import (
    BlockKind,
    BlockParams,
    Checks,
    FlopCount,
    backend_check,
    backend_field,
    linear_flops,
    per_token_flops,
)

BACKENDS = ("triton", "reference")  # in the order `auto` tries them
STATE_BYTES = 4  # the SSM state is float32 (layer.STATE_DTYPE)
MAX_TRITON_D_STATE = 256  # the Triton scan's limit (kernels/selective_scan/triton.py)
INNER_NORM_FLOPS = 4  # per element of dt, B and C under inner_norms


class Params(BlockParams):
    """A Mamba-1 mixer: in_proj, causal conv, selective scan, gate, out_proj (mamba's
    defaults)."""

    kind: Literal["mamba"] = "mamba"
    d_state: int = Field(default=16, ge=1, le=4096, description="state size N per channel")
    d_conv: int = Field(
        default=4, ge=1, le=64, description="width of the causal depthwise convolution"
    )
    expand: int = Field(
        default=2, ge=1, le=64, description="inner width d_inner = expand * d_model"
    )
    dt_rank: Annotated[int, Field(ge=1, le=1 << 20)] | Literal["auto"] = Field(
        default="auto", description='rank of the dt projection; "auto": ceil(d_model / 16)'
    )
    inner_norms: bool = Field(
        default=False,
        description="RMSNorms on dt, B and C after x_proj, before dt_proj (Jamba: "
        "dt_layernorm, b_layernorm, c_layernorm; eps = the model's norm_eps)",
    )
    backend: str = backend_field(BACKENDS)


def check(p: Params, d_model: int) -> Checks:
    """d_state <= 256 for backend triton (`auto` falls back to reference above that); the
    backend exists."""
    errors: Checks = []
    if p.backend == "triton" and p.d_state > MAX_TRITON_D_STATE:
        errors.append(
            ("d_state", f"backend triton takes d_state <= {MAX_TRITON_D_STATE} (got {p.d_state})")
        )
    return errors + backend_check(p.kind, BACKENDS, p.backend)


class MambaSizes:
    """The derived widths of a mamba block."""

    def __init__(self, p: Params, d_model: int) -> None:
        self.d_model, self.inner, self.d_state = d_model, p.expand * d_model, p.d_state
        self.dt_rank = math.ceil(d_model / 16) if p.dt_rank == "auto" else p.dt_rank
        self.kernel = p.d_conv
        self.x_proj = self.dt_rank + 2 * p.d_state


def param_count(p: Params, d_model: int) -> int:
    """in_proj, conv (weights and bias), x_proj, dt_proj (weights and bias), A_log, D,
    out_proj; with inner_norms the weights of the dt, B and C norms (dt_rank + 2 d_state)."""
    s = MambaSizes(p, d_model)
    E = s.inner
    conv = E * s.kernel + E
    dt = s.dt_rank * E + E
    norms = s.x_proj if p.inner_norms else 0
    core = d_model * 2 * E + conv + E * s.x_proj + dt + E * s.d_state + E + E * d_model
    return core + norms


def _per_token(p: Params, d_model: int) -> FlopCount:
    """FLOPs of one token (the module docstring lists the constants)."""
    s = MambaSizes(p, d_model)
    E, N = s.inner, s.d_state
    matmul = linear_flops(1, d_model, 2 * E) + linear_flops(1, E, s.x_proj)
    matmul += linear_flops(1, s.dt_rank, E) + linear_flops(1, E, d_model) + 4 * E * N
    other = E * (2 * s.kernel + 1 + 4) + E * (1 + 3 + 1) + 3 * E * N + E * (2 + 4 + 1)
    other += INNER_NORM_FLOPS * s.x_proj if p.inner_norms else 0
    return FlopCount(matmul, other)


flops, decode_flops = per_token_flops(_per_token)  # linear in T; decode = one token


def cache_bytes(p: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """B * d_inner * (d_conv - 1) * dtype_bytes for the conv state, plus
    B * d_inner * d_state * 4 for the float32 SSM state; independent of seq_len."""
    s = MambaSizes(p, d_model)
    return batch * s.inner * ((s.kernel - 1) * dtype_bytes + s.d_state * STATE_BYTES)


def activations(p: Params, d_model: int, seq_len: int) -> tuple[int, int]:
    """What a fused selective scan (mamba_ssm's) and the layer keep for backward, per
    sequence: in_proj's output, the conv output and its SiLU, x_proj's output, y and the
    gated y in the model dtype (and x_proj's output before the norms under inner_norms); dt
    in float32 (the states are recomputed). Beyond this
    estimate, the triton backend keeps its checkpoints, T / 64 * d_inner * d_state floats,
    and the reference backend every state, T * d_inner * d_state floats."""
    s, T = MambaSizes(p, d_model), seq_len
    elems = T * (2 * s.inner + 2 * s.inner + s.x_proj + 2 * s.inner)
    elems += T * s.x_proj if p.inner_norms else 0
    return elems, 4 * T * s.inner


def scale(data: dict, d_old: int, d_new: int) -> dict:
    """d_state, d_conv and expand kept; an explicit dt_rank scales with d_model."""
    out = dict(data)
    if isinstance(out.get("dt_rank"), int):
        out["dt_rank"] = max(1, math.ceil(out["dt_rank"] * d_new / d_old))
    return out


def _layer():
    from archlab.blocks.mamba.layer import MambaBlock

    return MambaBlock


KIND = BlockKind(
    name="mamba",
    summary="Mamba-1 selective SSM: causal conv, input-dependent dt, B, C, diagonal state "
    "per channel",
    symbol=None,
    is_mixer=True,
    params=Params,
    layer=_layer,
    param_count=param_count,
    flops=flops,
    decode_flops=decode_flops,
    cache_bytes=cache_bytes,
    activations=activations,
    check=check,
    backends=BACKENDS,
    scale=scale,
    branchable=True,
    color="#8cd17d",
    examples=(
        {"kind": "mamba", "d_state": 4},
        {"kind": "mamba", "d_state": 3, "d_conv": 2, "expand": 1, "dt_rank": 3},
        {"kind": "mamba", "d_state": 4, "dt_rank": 2, "inner_norms": True},
    ),
    gpu_examples=({"kind": "mamba"},),
)
