"""`gated_deltanet` (G): a Gated DeltaNet mixer (Yang, Kautz & Hatamizadeh 2024, "Gated
Delta Networks: Improving Mamba2 with Delta Rule", arXiv:2412.06464; the linear-attention
layers of Qwen3-Next), as fla's `GatedDeltaNet` layer (fla-org/flash-linear-attention,
`fla/layers/gated_deltanet.py`), without the pre-norm and residual archlab adds. The layer
is `archlab.blocks.gated_deltanet.layer.GatedDeltaNetBlock`.

    q, k = silu(conv(q_proj(x))), silu(conv(k_proj(x)))   H heads of K = head_dim
    v = silu(conv(v_proj(x)))                               HV = v_heads (default H) of
                                                            V = head_dim * expand_v
    g = -exp(A_log) * softplus(a_proj(x) + dt_bias);  beta = sigmoid(b_proj(x))  (x 2 with
    allow_neg_eigval)                                       per value head and token
    o = delta rule (kernels/linear_attn): with q, k L2-normalised, a_t = exp(g_t),
        S_t = a_t S_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T,  o_t = S_t q_t / sqrt(K)
    out = o_proj(rmsnorm(o) * weight * silu(g_proj(x)))    norm per value head

Without `use_short_conv` the convolutions are skipped (q, k, v = silu(proj(x)), as fla);
without `use_gate` there is no g_proj and the norm is a plain RMSNorm with weight. The
norm's eps is model.norm_eps. Parameter names follow fla (`q_proj`, `k_proj`, `v_proj`,
`a_proj`, `b_proj`, `A_log`, `dt_bias`, `q_conv1d`, `k_conv1d`, `v_conv1d`, `g_proj`,
`o_norm.weight`, `o_proj`), so weights map one to one.

Backends: `reference` (float32 PyTorch, a loop over tokens: T sequential steps of
O(B HV K V), every state kept under autograd; fine at small sizes), `triton` (fla's
`chunk_gated_delta_rule` to train and prefill, `fused_recurrent_gated_delta_rule` to
decode; CUDA, needs `archlab[ssm]`), `auto` (triton on CUDA when fla imports, else
reference; fla's kernels take head_dim <= 256, so above that `auto` runs reference). The
cache: the three conv states (the last conv_size - 1 inputs of the 2 H K + HV V conv
channels, in the cache dtype) and the recurrent state [B, HV, K, V] in float32 (4 bytes
per element).

FLOPs (2 per multiply-add), per token, counted for the recurrence as written (the work of
the step-by-step form, which decode runs; fla's chunked kernel adds intra-chunk products
of about 2 * 64 * (3K + 2V) per token and value head at its chunk of 64, not counted):
- matmul: the projections (q, k, v, a, b, g in; o out) and, per value head, S^T k, the
  rank-1 update k delta^T and S^T q: 6 K V.
- other, per element: conv 2 * conv_size (+ 1 with bias) and SiLU 4 per conv channel (SiLU
  alone without the conv); L2 norm 3 per q and k element; per value head the gate 5 (bias,
  softplus 3, times -exp(A_log)), its exp 1, sigmoid 3 (+ 1 doubling with neg eigenvalues),
  decay K V, delta 2 V (v - S^T k, times beta), the output scale V; norm 5 and gate 5
  (SiLU, product) per value channel.
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
    per_token_flops,
)

BACKENDS = ("triton", "reference")  # in the order `auto` tries them
STATE_BYTES = 4  # the recurrent state is float32 (layer.STATE_DTYPE)
FLA_CHUNK = 64  # the chunk of fla's chunked kernels (their WY matrix is kept per token)
FLA_MAX_HEAD_DIM = 256  # fla's chunked delta-rule kernels take K <= 256


class Params(BlockParams):
    """A Gated DeltaNet mixer (fla's `GatedDeltaNet` layer; defaults as fla's)."""

    kind: Literal["gated_deltanet"] = "gated_deltanet"
    heads: int = Field(default=6, ge=1, le=4096, description="query/key heads H (num_heads)")
    head_dim: int = Field(default=256, ge=1, le=4096, description="channels K per q/k head")
    expand_v: float = Field(
        default=2.0,
        gt=0,
        le=64,
        description="value head width V = head_dim * expand_v (must be a whole number)",
    )
    v_heads: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="value heads HV (num_v_heads), a multiple of heads: grouped value "
        "attention (Qwen3-Next); None: heads",
    )
    use_short_conv: bool = Field(
        default=True, description="causal depthwise convolutions (with SiLU) on q, k and v"
    )
    conv_size: int = Field(default=4, ge=1, le=64, description="width of the short convolutions")
    conv_bias: bool = Field(default=False, description="biases on the short convolutions")
    use_gate: bool = Field(
        default=True, description="output gate: g_proj and a gated RMSNorm (else a plain one)"
    )
    allow_neg_eigval: bool = Field(
        default=False, description="beta = 2 sigmoid(b): eigenvalues of the transition in (-1, 1]"
    )
    backend: str = backend_field(BACKENDS)


class GDNSizes:
    """The derived widths of a gated_deltanet block."""

    def __init__(self, p: Params, d_model: int) -> None:
        self.d_model, self.heads, self.head_k = d_model, p.heads, p.head_dim
        self.v_heads = p.v_heads or p.heads
        self.head_v = round(p.head_dim * p.expand_v)
        self.key_dim, self.value_dim = p.heads * p.head_dim, self.v_heads * self.head_v
        self.conv_channels = 2 * self.key_dim + self.value_dim  # q, k, v
        self.conv_dim = self.conv_channels if p.use_short_conv else 0
        self.kernel = p.conv_size
        gate = self.value_dim if p.use_gate else 0
        self.proj_out = 2 * self.key_dim + self.value_dim + 2 * self.v_heads + gate
        self.state = self.v_heads * self.head_k * self.head_v  # per sequence


def check(p: Params, d_model: int) -> Checks:
    """A whole value head width; v_heads a multiple of heads; head_dim <= 256 for triton
    (`auto` falls back to reference above that); the backend exists."""
    errors: Checks = []
    width = p.head_dim * p.expand_v
    if abs(width - round(width)) > 1e-9 or round(width) < 1:
        errors.append(
            ("expand_v", f"head_dim * expand_v must be a whole number >= 1 (got {width:g})")
        )
    if p.v_heads is not None and p.v_heads % p.heads:
        errors.append(("v_heads", f"must be a multiple of heads ({p.heads}) (got {p.v_heads})"))
    if p.backend == "triton" and p.head_dim > FLA_MAX_HEAD_DIM:
        errors.append(
            (
                "head_dim",
                f"backend triton (fla) takes head_dim <= {FLA_MAX_HEAD_DIM} (got {p.head_dim})",
            )
        )
    return errors + backend_check(p.kind, BACKENDS, p.backend)


def param_count(p: Params, d_model: int) -> int:
    """Projections in (q, k, v, a, b, g) and out, A_log and dt_bias, the convolutions, the
    norm weight (one head's width, shared by the heads)."""
    s = GDNSizes(p, d_model)
    conv = s.conv_dim * s.kernel + (s.conv_dim if p.conv_bias else 0)
    return d_model * s.proj_out + s.value_dim * d_model + 2 * s.v_heads + conv + s.head_v


def _per_token(p: Params, d_model: int) -> FlopCount:
    """Forward FLOPs of one token (the module docstring lists the constants)."""
    s = GDNSizes(p, d_model)
    matmul = linear_flops(1, d_model, s.proj_out) + linear_flops(1, s.value_dim, d_model)
    matmul += 6 * s.state
    conv = (2 * s.kernel + int(p.conv_bias) + 4) if p.use_short_conv else 4
    other = s.conv_channels * conv + 3 * 2 * s.key_dim
    other += s.v_heads * (5 + 1 + 3 + int(p.allow_neg_eigval)) + s.state + 3 * s.value_dim
    other += s.value_dim * (5 + (5 if p.use_gate else 0))
    return FlopCount(matmul, other)


flops, decode_flops = per_token_flops(_per_token)  # linear in T; decode = one token


def cache_bytes(p: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """B * conv channels * (conv_size - 1) * dtype_bytes for the conv states, plus
    B * HV * K * V * 4 for the float32 recurrent state; independent of seq_len."""
    s = GDNSizes(p, d_model)
    conv = batch * s.conv_dim * (s.kernel - 1) * dtype_bytes
    return conv + batch * s.state * STATE_BYTES


def activations(p: Params, d_model: int, seq_len: int) -> tuple[int, int]:
    """What fla's chunked kernel and the layer keep for backward, per sequence: the input
    projections, the conv (or SiLU) outputs, the kernel's per-chunk WY matrix (64 per token
    and value head), o and the norm output, in the model dtype; g and beta in float32 (the
    chunk states are recomputed in backward)."""
    s, T = GDNSizes(p, d_model), seq_len
    elems = T * (s.proj_out + s.conv_channels + s.v_heads * FLA_CHUNK + 2 * s.value_dim)
    return elems, 4 * T * 2 * s.v_heads


def scale(data: dict, d_old: int, d_new: int) -> dict:
    """Head sizes kept; heads (and v_heads, in proportion) scale with d_model."""
    out = dict(data)
    heads = out.get("heads", Params.model_fields["heads"].default)
    new_heads = max(1, heads * d_new // d_old)
    out["heads"] = new_heads
    if out.get("v_heads"):
        out["v_heads"] = new_heads * max(1, out["v_heads"] // heads)
    return out


def _layer():
    from archlab.blocks.gated_deltanet.layer import GatedDeltaNetBlock

    return GatedDeltaNetBlock


KIND = BlockKind(
    name="gated_deltanet",
    summary="Gated DeltaNet: gated delta-rule linear attention, short convs, gated RMSNorm "
    "(Qwen3-Next)",
    symbol="G",
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
    color="#eeca3b",
    examples=(
        {"kind": "gated_deltanet", "heads": 2, "head_dim": 4},
        {
            "kind": "gated_deltanet",
            "heads": 1,
            "head_dim": 8,
            "expand_v": 1.0,
            "v_heads": 2,
            "conv_size": 2,
            "conv_bias": True,
            "allow_neg_eigval": True,
        },
        {
            "kind": "gated_deltanet",
            "heads": 2,
            "head_dim": 4,
            "expand_v": 0.5,
            "use_short_conv": False,
            "use_gate": False,
        },
    ),
    gpu_examples=(
        {"kind": "gated_deltanet"},  # fla's defaults: 6 x 256, V = 512
        {"kind": "gated_deltanet", "heads": 16, "head_dim": 128, "expand_v": 1.0, "v_heads": 32},
    ),
)
