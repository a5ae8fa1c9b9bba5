"""`rg_lru`: the recurrent block of Griffin and Hawk (De, Smith, Fernando et al. 2024,
"Griffin: Mixing Gated Linear Recurrences with Local Attention for Efficient Language
Models", arXiv:2402.19427; RecurrentGemma), as google-deepmind/recurrentgemma's PyTorch
`RecurrentBlock` with its `RGLRU`, without the pre-norm and residual archlab adds. The
layer is `archlab.blocks.rg_lru.layer.RGLRUBlock`. (`rnn` is the RAT paper's RNN.)

    y = gelu(linear_y(x))                                W = lru_width (default d_model)
    u = conv_1d(linear_x(x))                             causal, width conv1d_width, bias
    r = sigmoid(a_gate(u)), i = sigmoid(input_gate(u))   block-diagonal: `heads` blocks of
                                                         W / heads, with biases
    log a_t = -c * r_t * softplus(a_param)   (c = 8: a_t = a^(c r_t), a = sigmoid(-a_param)
                                              the learnt per-channel base)
    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * u_t)  (the multiplier is 1 at position 0,
                                                         where the state is reset)
    out = linear_out(h * y)

All three linears have biases (recurrentgemma's); gelu is the tanh approximation; the
gradient of the sqrt is clipped at 1000 (recurrentgemma's SqrtBoundDerivative).
Parameter names follow recurrentgemma (`linear_y`, `linear_x`, `linear_out`, `conv_1d.w`
[conv1d_width, W], `conv_1d.b`, `rg_lru.a_param`, `rg_lru.input_gate.w` [heads, W / heads,
W / heads], `rg_lru.input_gate.b`, `rg_lru.a_gate.w`, `rg_lru.a_gate.b`). The position is
the token's index in its sequence: `forward` and a prefill into a fresh cache start at 0
(from the zero state), a later prefill or step continues at the cache's length.

Backends: `reference` (float32 PyTorch: the gates, then a log-depth scan over T,
kernels/lru), `triton` (fla's `fused_recurrent_hgrn` for the recurrence, to train, prefill
and decode: fla's `chunk_hgrn` returned wrong states on this block's inputs on an H200,
kernels/lru/fla_backend.py; CUDA, needs `archlab[ssm]`), `auto` (triton on
CUDA when fla imports, else reference). The cache: the conv state (the last
conv1d_width - 1 inputs of the W conv channels, in the cache dtype) and the RG-LRU state
[B, W] in float32 (as recurrentgemma).

FLOPs (2 per multiply-add), per token (the recurrence is elementwise, so the forward is T
times one token and decode equals one token of it), W = lru_width, bw = W / heads,
K = conv1d_width:
- matmul: linear_x and linear_y 2 d W each, linear_out 2 W d, the two gates 2 W bw each.
- other, per element: the linears' biases (2W + d) and the gates' (2W); conv 2K + 1; the
  two sigmoids 3 each; log a 2 (times r, times -c softplus(a_param), computed once per
  call); a 1 (exp); a^2 2; sqrt(1 - a^2) 2; i * u 1; times the multiplier 1; the scan step
  2; gelu 8; h * y 1.
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
STATE_BYTES = 4  # the RG-LRU state is float32 (layer.STATE_DTYPE)
C = 8.0  # the RG-LRU's constant c: a_t = a^(c r_t)


class Params(BlockParams):
    """Griffin's recurrent block: two branches (GeLU gate; conv + RG-LRU), multiplied."""

    kind: Literal["rg_lru"] = "rg_lru"
    heads: int = Field(
        default=8,
        ge=1,
        le=4096,
        description="blocks of the block-diagonal gate projections (num_heads; "
        "RecurrentGemma's blocks are 256 wide)",
    )
    lru_width: int | None = Field(
        default=None, ge=1, le=1 << 20, description="width W of the recurrence (None: d_model)"
    )
    conv1d_width: int = Field(
        default=4, ge=1, le=64, description="temporal width of the causal conv (with bias)"
    )
    backend: str = backend_field(BACKENDS)


class RGLRUSizes:
    """The derived widths of an rg_lru block."""

    def __init__(self, p: Params, d_model: int) -> None:
        self.d_model, self.heads, self.kernel = d_model, p.heads, p.conv1d_width
        self.width = p.lru_width or d_model
        self.block = self.width // p.heads


def check(p: Params, d_model: int) -> Checks:
    """heads divides the width of the recurrence; the backend exists."""
    width = p.lru_width or d_model
    errors: Checks = []
    if width % p.heads:
        errors.append(("heads", f"must divide lru_width ({width}) (got {p.heads})"))
    return errors + backend_check(p.kind, BACKENDS, p.backend)


def param_count(p: Params, d_model: int) -> int:
    """linear_y, linear_x, linear_out (with biases), the conv (with bias), a_param, and the
    two block-diagonal gates (with biases)."""
    s = RGLRUSizes(p, d_model)
    W = s.width
    linears = 2 * (d_model * W + W) + W * d_model + d_model
    gates = 2 * (s.heads * s.block * s.block + W)
    return linears + s.kernel * W + W + W + gates


def _per_token(p: Params, d_model: int) -> FlopCount:
    """FLOPs of one token (the module docstring lists the constants)."""
    s = RGLRUSizes(p, d_model)
    W = s.width
    matmul = 2 * linear_flops(1, d_model, W) + linear_flops(1, W, d_model)
    matmul += 2 * linear_flops(1, s.block, W)  # each block: bw x bw, W / bw blocks
    elementwise = 2 + 2 + (2 * s.kernel + 1) + 2 * 3 + 2 + 1 + 2 + 2 + 1 + 1 + 2 + 8 + 1
    return FlopCount(matmul, d_model + W * elementwise)


flops, decode_flops = per_token_flops(_per_token)  # linear in T; decode = one token


def cache_bytes(p: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """B * W * (conv1d_width - 1) * dtype_bytes for the conv state, plus B * W * 4 for the
    float32 RG-LRU state; independent of seq_len."""
    s = RGLRUSizes(p, d_model)
    return batch * s.width * ((s.kernel - 1) * dtype_bytes + STATE_BYTES)


def activations(p: Params, d_model: int, seq_len: int) -> tuple[int, int]:
    """What one sequence keeps for backward: linear_x's and linear_y's outputs, the GeLU,
    the conv output, the two gates, the normalised input and h * y in the model dtype; the
    decay a and the state h in float32."""
    W, T = RGLRUSizes(p, d_model).width, seq_len
    return T * 8 * W, 4 * T * 2 * W


def scale(data: dict, d_old: int, d_new: int) -> dict:
    """An explicit lru_width scales with d_model; the gates' block width is kept (heads
    scale), heads lowered until they divide the new width."""
    out = dict(data)
    heads = out.get("heads", Params.model_fields["heads"].default)
    old_width = out.get("lru_width") or d_old
    block = max(1, old_width // heads)
    if out.get("lru_width"):
        out["lru_width"] = max(1, out["lru_width"] * d_new // d_old)
    width = out.get("lru_width") or d_new
    new_heads = max(1, min(heads, width // block))
    while width % new_heads:
        new_heads -= 1
    out["heads"] = new_heads
    return out


def _layer():
    from archlab.blocks.rg_lru.layer import RGLRUBlock

    return RGLRUBlock


KIND = BlockKind(
    name="rg_lru",
    summary="Griffin's recurrent block: conv + RG-LRU (real-gated diagonal recurrence) "
    "times a GeLU branch",
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
    color="#86bcb6",
    examples=(
        {"kind": "rg_lru", "heads": 2},
        {"kind": "rg_lru", "heads": 3, "lru_width": 24, "conv1d_width": 2},
    ),
    gpu_examples=({"kind": "rg_lru"},),
)
