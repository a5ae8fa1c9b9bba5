"""`gla`: a gated linear attention mixer (Yang, Wang, Shen, Panda & Kim 2023, "Gated Linear
Attention Transformers with Hardware-Efficient Training", arXiv:2312.06635), as fla's
`GatedLinearAttention` layer (fla-org/flash-linear-attention, `fla/layers/gla.py`, with its
defaults: no feature map, one key/value head per query head, the swish output gate fused
with the norm), without the pre-norm and residual archlab adds. The layer is
`archlab.blocks.gla.layer.GLABlock`.

    q, k = q_proj(x), k_proj(x)          key_dim = expand_k * d_model, H heads of Kh
    v = v_proj(x)                        value_dim = expand_v * d_model, H heads of Vh
    gk = logsigmoid(gk_proj(x)) / gate_logit_normalizer   (clamped below at clamp_min)
         gk_proj = Linear(d, gate_low_rank_dim) then Linear(gate_low_rank_dim, key_dim, bias)
    o = GLA (kernels/linear_attn): S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T,
        o_t = S_t^T q_t / sqrt(Kh)                              per head, S [Kh, Vh]
    out = o_proj(rmsnorm(o) * weight * silu(g_proj(x)))    norm per head

With `use_short_conv`, q, k and v each pass a causal depthwise conv and SiLU first (as fla);
without `use_output_gate` there is no g_proj and the norm is a plain RMSNorm with weight.
The norm's eps is model.norm_eps. Parameter names follow fla (`q_proj`, `k_proj`,
`v_proj`, `g_proj`, `gk_proj.0`, `gk_proj.1`, `q_conv1d`, `k_conv1d`, `v_conv1d`,
`g_norm_swish_gate` with the gate or `g_norm` without, `o_proj`).

Backends: `reference` (float32 PyTorch, a loop over tokens: T sequential steps of
O(B H Kh Vh), every state kept under autograd; fine at small sizes), `triton` (fla's
`chunk_gla` to train and prefill, `fused_recurrent_gla` to decode; CUDA, needs
`archlab[ssm]`), `auto` (triton on CUDA when fla imports, else reference). The cache:
the conv states with `use_short_conv` (the last conv_size - 1 inputs of the 2 key_dim +
value_dim conv channels, in the cache dtype) and the recurrent state [B, H, Kh, Vh] in
float32.

FLOPs (2 per multiply-add), per token, counted for the recurrence as written (the
step-by-step form, which decode runs; fla's chunked kernel adds intra-chunk products of
about 2 * 64 * (Kh + Vh) per token and head at its chunk of 64, not counted):
- matmul: the projections (q, k, v, g, the two of gk in; o out) and, per head, the rank-1
  update k v^T and the read-out S^T q: 4 Kh Vh.
- other, per element: conv 2 * conv_size (+ 1 with bias) and SiLU 4 per conv channel; per
  key channel the gate bias 1, logsigmoid 4, the normaliser 1 (the clamp 1), exp 1; the
  decay Kh Vh per head; the output scale 1, norm 5 and gate 5 (SiLU, product) per value
  channel.
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


class Params(BlockParams):
    """A gated linear attention mixer (fla's `GatedLinearAttention` layer; its defaults)."""

    kind: Literal["gla"] = "gla"
    heads: int = Field(default=4, ge=1, le=4096, description="heads H (num_heads)")
    expand_k: float = Field(
        default=0.5, gt=0, le=64, description="key width key_dim = expand_k * d_model"
    )
    expand_v: float = Field(
        default=1.0, gt=0, le=64, description="value width value_dim = expand_v * d_model"
    )
    gate_low_rank_dim: int = Field(
        default=16, ge=1, le=4096, description="rank of the decay gate's projection gk_proj"
    )
    gate_logit_normalizer: int = Field(
        default=16, ge=1, le=4096, description="the log decay is logsigmoid(gk) / this"
    )
    clamp_min: float | None = Field(
        default=None, le=0, description="lower bound of the log decay (None: unclamped)"
    )
    use_output_gate: bool = Field(
        default=True, description="output gate: g_proj and a gated RMSNorm (else a plain one)"
    )
    use_short_conv: bool = Field(
        default=False, description="causal depthwise convolutions (with SiLU) on q, k and v"
    )
    conv_size: int = Field(default=4, ge=1, le=64, description="width of the short convolutions")
    conv_bias: bool = Field(default=False, description="biases on the short convolutions")
    backend: str = backend_field(BACKENDS)


def _width(d_model: int, expand: float) -> float:
    return d_model * expand


class GLASizes:
    """The derived widths of a gla block."""

    def __init__(self, p: Params, d_model: int) -> None:
        self.d_model, self.heads, self.rank = d_model, p.heads, p.gate_low_rank_dim
        self.key_dim = round(_width(d_model, p.expand_k))
        self.value_dim = round(_width(d_model, p.expand_v))
        self.head_k, self.head_v = self.key_dim // p.heads, self.value_dim // p.heads
        self.conv_channels = 2 * self.key_dim + self.value_dim  # q, k, v
        self.conv_dim = self.conv_channels if p.use_short_conv else 0
        self.kernel = p.conv_size
        self.gate = self.value_dim if p.use_output_gate else 0
        self.state = p.heads * self.head_k * self.head_v  # per sequence


def check(p: Params, d_model: int) -> Checks:
    """Whole key and value widths, divisible by the heads; the backend exists."""
    errors: Checks = []
    for field in ("expand_k", "expand_v"):
        width = _width(d_model, getattr(p, field))
        if abs(width - round(width)) > 1e-9 or round(width) < 1:
            errors.append((field, f"d_model * {field} must be a whole number (got {width:g})"))
        elif round(width) % p.heads:
            errors.append(
                ("heads", f"must divide d_model * {field} ({round(width)}) (got {p.heads})")
            )
    return errors + backend_check(p.kind, BACKENDS, p.backend)


def param_count(p: Params, d_model: int) -> int:
    """q, k, v, g in; the low-rank gate (two matrices and a bias); the convolutions; the
    norm weight (one head's width); o_proj."""
    s = GLASizes(p, d_model)
    proj = d_model * (2 * s.key_dim + s.value_dim + s.gate) + s.value_dim * d_model
    gk = d_model * s.rank + s.rank * s.key_dim + s.key_dim
    conv = s.conv_dim * s.kernel + (s.conv_dim if p.conv_bias else 0)
    return proj + gk + conv + s.head_v


def _per_token(p: Params, d_model: int) -> FlopCount:
    """Forward FLOPs of one token (the module docstring lists the constants)."""
    s = GLASizes(p, d_model)
    matmul = linear_flops(1, d_model, 2 * s.key_dim + s.value_dim + s.gate + s.rank)
    matmul += linear_flops(1, s.rank, s.key_dim) + linear_flops(1, s.value_dim, d_model)
    matmul += 4 * s.state
    other = s.conv_dim * (2 * s.kernel + int(p.conv_bias) + 4)
    other += s.key_dim * (1 + 4 + 1 + (1 if p.clamp_min is not None else 0) + 1) + s.state
    other += s.value_dim * (1 + 5) + 5 * s.gate
    return FlopCount(matmul, other)


flops, decode_flops = per_token_flops(_per_token)  # linear in T; decode = one token


def cache_bytes(p: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """B * conv channels * (conv_size - 1) * dtype_bytes for the conv states (with
    use_short_conv), plus B * H * Kh * Vh * 4 for the float32 state; independent of seq_len."""
    s = GLASizes(p, d_model)
    conv = batch * s.conv_dim * (s.kernel - 1) * dtype_bytes
    return conv + batch * s.state * STATE_BYTES


def activations(p: Params, d_model: int, seq_len: int) -> tuple[int, int]:
    """What fla's chunked kernel and the layer keep for backward, per sequence: the
    projections (q, k, v, g, the gate's low-rank and full outputs), the conv outputs, o and
    the norm output in the model dtype; the cumulative log decay per key channel in float32
    (the chunk states are recomputed in backward)."""
    s, T = GLASizes(p, d_model), seq_len
    proj = 2 * s.key_dim + s.value_dim + s.gate + s.rank + s.key_dim
    elems = T * (proj + s.conv_dim + 2 * s.value_dim)
    return elems, 4 * T * s.key_dim


def scale(data: dict, d_old: int, d_new: int) -> dict:
    """expand_k, expand_v and the gate rank kept; heads scale with d_model (head sizes kept),
    lowered until they divide the key and value widths."""
    out = dict(data)
    fields = Params.model_fields
    heads = out.get("heads", fields["heads"].default)
    widths = [_width(d_new, out.get(f, fields[f].default)) for f in ("expand_k", "expand_v")]
    new_heads = max(1, heads * d_new // d_old)
    while new_heads > 1 and any(round(w) % new_heads for w in widths):
        new_heads -= 1
    out["heads"] = new_heads
    return out


def _layer():
    from archlab.blocks.gla.layer import GLABlock

    return GLABlock


KIND = BlockKind(
    name="gla",
    summary="gated linear attention: a low-rank data-dependent decay per key channel, "
    "gated RMSNorm",
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
    color="#ff9da6",
    examples=(
        {"kind": "gla", "heads": 2, "gate_low_rank_dim": 4},
        {
            "kind": "gla",
            "heads": 1,
            "expand_k": 0.25,
            "expand_v": 0.5,
            "gate_logit_normalizer": 1,
            "clamp_min": -2.0,
            "use_output_gate": False,
            "use_short_conv": True,
            "conv_size": 3,
            "conv_bias": True,
        },
    ),
    gpu_examples=({"kind": "gla"},),
)
