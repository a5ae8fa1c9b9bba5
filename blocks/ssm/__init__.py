"""`ssm` (M): a Mamba-2 (SSD) block (Dao & Gu 2024, "Transformers are SSMs: Generalized
Models and Efficient Algorithms Through Structured State Space Duality", arXiv:2405.21060),
as the mamba_ssm `Mamba2` layer (without the pre-norm and residual that archlab adds around
every block). The layer is `archlab.blocks.ssm.layer.SSMBlock`.

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
`chunk_size`), `triton` (fla's chunked kernels, CUDA only, needs `archlab[ssm]`; its
sequence pass also takes fla's `causal_conv1d` for conv + bias + SiLU and fla's gated
`rmsnorm_fn` for the norm, on y + D x rounded once to the compute dtype as mamba's fused
path does; float32 inside both), `auto` (triton when fla is there and the device is CUDA,
else reference). Where fla refuses `chunk_simple_gla`'s backward (Hopper with Triton
3.4-3.7.0) training runs fla's `chunk_gla` instead, and `backend_note` says so
(kernels/ssd/fla_backend.py). The decode `step` is the plain recurrence for both; on
`triton` its state update is one Triton kernel that reads and writes the float32 state
once, in place (kernels/ssd/triton_step.py), on `reference` PyTorch ops. The cache holds
the conv state (the last conv_kernel - 1 inputs of the conv channels, in the cache dtype)
and the SSM state [B, heads, head_dim, d_state], always float32 (it accumulates over the
whole context), so it counts 4 bytes per element.

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

from typing import Literal

from pydantic import Field

from archlab.blocks.base import (
    BlockKind,
    BlockParams,
    Checks,
    FlopCount,
    backend_check,
    backend_field,
    linear_flops,
)

BACKENDS = ("triton", "reference")  # in the order `auto` tries them
SSM_STATE_BYTES = 4  # the SSM state is float32 (layer.SSM_STATE_DTYPE)
FP32 = 4  # bytes of a float32


class Params(BlockParams):
    """A Mamba-2 mixer: in_proj, causal depthwise conv, SSD scan, gated RMSNorm, out_proj."""

    kind: Literal["ssm"] = "ssm"
    d_state: int = Field(default=128, ge=1, le=4096, description="state size N per head")
    expand: int = Field(
        default=2, ge=1, le=64, description="inner width d_inner = expand * d_model"
    )
    head_dim: int = Field(
        default=64, ge=1, le=4096, description="channels P per head (heads = d_inner / P)"
    )
    n_groups: int = Field(
        default=1, ge=1, le=4096, description="groups of heads sharing B and C (and a norm group)"
    )
    conv_kernel: int = Field(
        default=4, ge=1, le=64, description="width of the causal depthwise convolution"
    )
    chunk_size: int = Field(
        default=256, ge=1, le=1 << 20, description="chunk length L of the chunked SSD scan"
    )
    backend: str = backend_field(BACKENDS)


def check(p: Params, d_model: int) -> Checks:
    """head_dim divides d_inner, n_groups divides the heads, the backend exists for ssm."""
    errors: Checks = []
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
    return errors + backend_check(p.kind, BACKENDS, p.backend)


class SSMSizes:
    """The derived widths of an ssm block."""

    def __init__(self, p: Params, d_model: int) -> None:
        self.d_model, self.inner = d_model, p.expand * d_model
        self.heads, self.head_dim = self.inner // p.head_dim, p.head_dim
        self.groups, self.d_state, self.kernel = p.n_groups, p.d_state, p.conv_kernel
        self.bc = p.n_groups * p.d_state
        self.conv_dim = self.inner + 2 * self.bc
        self.in_proj = 2 * self.inner + 2 * self.bc + self.heads


def param_count(params: Params, d_model: int) -> int:
    """in_proj + conv (weights and bias) + dt_bias, A_log, D + norm weight + out_proj."""
    s = SSMSizes(params, d_model)
    conv = s.conv_dim * s.kernel + s.conv_dim
    return s.d_model * s.in_proj + conv + 3 * s.heads + s.inner + s.inner * s.d_model


def _elementwise(s: SSMSizes, tokens: int) -> int:
    """`other` FLOPs that scale with tokens alone (module docstring)."""
    conv = (2 * s.kernel + 1 + 4) * s.conv_dim
    dt = 5 * s.heads
    gate_norm = (1 + 2 + 4 + 1 + 4) * s.inner  # dt * x, D skip, silu(z), gate, rmsnorm
    return tokens * (conv + dt + gate_norm)


def flops(params: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """Forward FLOPs of the chunked algorithm (module docstring for the formula)."""
    s, L, T = SSMSizes(params, d_model), params.chunk_size, seq_len
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
    s = SSMSizes(params, d_model)
    states = s.heads * s.head_dim * s.d_state
    proj = linear_flops(1, s.d_model, s.in_proj) + linear_flops(1, s.inner, s.d_model)
    return FlopCount(batch * (proj + 4 * states), batch * (_elementwise(s, 1) + states + s.heads))


def cache_bytes(params: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """B * conv_dim * (conv_kernel - 1) * dtype_bytes for the conv state, plus
    B * heads * head_dim * d_state * 4 for the float32 SSM state; independent of seq_len."""
    s = SSMSizes(params, d_model)
    conv = batch * s.conv_dim * (s.kernel - 1) * dtype_bytes
    return conv + batch * s.heads * s.head_dim * s.d_state * SSM_STATE_BYTES


def activations(p: Params, d_model: int, seq_len: int) -> tuple[int, int]:
    """in_proj's output, the conv output, its SiLU and the norm's input in the model dtype;
    dt and y per token, and every chunk's state, in float32."""
    s, T = SSMSizes(p, d_model), seq_len
    chunks = -(-T // p.chunk_size)
    dtype_elems = T * (s.in_proj + 2 * s.conv_dim + s.inner)  # in_proj, conv, silu, norm
    fp32 = FP32 * (T * (s.heads + s.inner) + chunks * s.heads * s.head_dim * s.d_state)
    return dtype_elems, fp32  # dt, y; chunk states


def breakpoints(p: Params) -> tuple[set[int], int]:
    """The cost's ceil(T / chunk_size) pieces: periodic in T with period chunk_size."""
    return set(), p.chunk_size


def _layer():
    from archlab.blocks.ssm.layer import SSMBlock

    return SSMBlock


KIND = BlockKind(
    name="ssm",
    summary="Mamba-2 (SSD) mixer: causal conv, chunked state-space scan, gated RMSNorm",
    symbol="M",
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
    breakpoints=breakpoints,
    branchable=True,
    color="#54a24b",
    examples=(
        {"kind": "ssm", "d_state": 8, "head_dim": 8, "chunk_size": 4},
        {
            "kind": "ssm",
            "d_state": 4,
            "head_dim": 4,
            "n_groups": 2,
            "conv_kernel": 3,
            "chunk_size": 3,
        },
        {
            "kind": "ssm",
            "d_state": 6,
            "head_dim": 16,
            "expand": 1,
            "conv_kernel": 1,
            "chunk_size": 1,
        },
        {"kind": "ssm", "d_state": 5, "head_dim": 2, "n_groups": 4, "chunk_size": 64},
    ),
    gpu_examples=({"kind": "ssm"},),
)
