"""`attention` (A): causal multi-head softmax attention (Vaswani et al. 2017, "Attention Is
All You Need", arXiv:1706.03762) with grouped-query / multi-query heads (Ainslie et al.
2023, "GQA", arXiv:2305.13245), RoPE (Su et al. 2021, "RoFormer", arXiv:2104.09864) and
optional qk-norm (an RMSNorm over each head of q and k). Extras that published models use:
`attn_softcap` (Gemma Team 2024, "Gemma 2", arXiv:2408.00118: logits capped as
cap * tanh(logit / cap)), `sinks` (learned per-head sink logits in the softmax denominator,
as gpt-oss; OpenAI 2025, "gpt-oss-120b & gpt-oss-20b Model Card", arXiv:2508.10925; after
Xiao et al. 2023, "StreamingLLM", arXiv:2309.17453), `partial_rotary` (RoPE on the
first fraction of each head, as GPT-NeoX and Phi), `output_gate` (gated attention: Qiu et
al. 2025, "Gated Attention for Large Language Models", arXiv:2505.06708, as Qwen3-Next:
q_proj also emits a gate per head and each head's output is multiplied by sigmoid(gate)
before o_proj) and `o_bias` (the output projection's bias apart from q/k/v's: Qwen2 has
biases on q, k and v only, RecurrentGemma, Botev et al. 2024, arXiv:2404.07839, on o only).

The output gate's layout is HF's `Qwen3NextAttention`'s: q_proj has heads * head_dim * 2
output rows, head by head the head's head_dim query rows then its head_dim gate rows, so a
Qwen3-Next q_proj (and its bias) loads unchanged.

Backends: `reference` (explicit float32 matmuls and masked softmax), `sdpa` (torch's
scaled_dot_product_attention, any device), `flex` (compiled flex_attention, CUDA only);
`auto` is sdpa. sdpa can neither cap logits nor add sink logits: with `attn_softcap` or
`sinks`, `auto` is flex on CUDA and reference elsewhere, and asking for sdpa is an error.
The layer is `archlab.blocks.attention.layer.AttentionBlock`; the cores it runs are in
`archlab.blocks.attention.common`.

The pure cost helpers here are shared with `local_attention`. Costs count FLOPs as 2 per
multiply-add. Matmul-type work is exact: the four projections, and QK^T and PV at
2 * head_dim FLOPs each per visible (query, key) pair per head. `other` uses these
per-element constants:
- softmax: `SOFTMAX_FLOPS` (5) per visible score per head (scale, max, exp, sum, divide);
- RoPE: `ROPE_FLOPS` (3) per rotated element of q and k (two multiplies, one add): all of
  head_dim, or its first rotary_dim = int(head_dim * partial_rotary);
- qk-norm: `QK_NORM_FLOPS` (4) per element of q and k (square, sum, rsqrt scale, weight);
- bias: 1 per output element of each projection that has one;
- output gate: the gate's projection columns are matmul work (q_proj twice as wide), and
  `OUTPUT_GATE_FLOPS` (5) per gated element (sigmoid 4, multiply 1);
- soft-capping: `SOFTCAP_FLOPS` (3) per visible score per head (divide, tanh, multiply);
- sinks: `SOFTMAX_FLOPS` per sink logit per query token per head (one more score).
"""

from __future__ import annotations

from typing import Literal, Protocol

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

BACKENDS = ("sdpa", "reference", "flex")  # in the order `auto` tries them
SOFTMAX_FLOPS = 5
ROPE_FLOPS = 3
QK_NORM_FLOPS = 4
SOFTCAP_FLOPS = 3
OUTPUT_GATE_FLOPS = 5
FP32 = 4  # bytes of a float32 (the log-sum-exp kept per head and token)


class Params(BlockParams):
    """Causal softmax attention: q/k/v/o projections, heads sharing kv heads in groups."""

    kind: Literal["attention"] = "attention"
    heads: int = Field(ge=1, le=4096, description="query heads")
    kv_heads: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description="key/value heads, dividing heads (default: heads; 1 is multi-query)",
    )
    head_dim: int | None = Field(
        default=None, ge=1, le=4096, description="width of a head (default d_model // heads)"
    )
    rope: bool = Field(default=True, description="rotary position embeddings on q and k")
    rope_theta: float = Field(default=10000.0, gt=0, description="RoPE base frequency")
    qk_norm: bool = Field(default=False, description="RMSNorm over each head of q and k")
    bias: bool = Field(
        default=False,
        description="biases on the q, k and v projections, and on o's unless o_bias says otherwise",
    )
    o_bias: bool | None = Field(
        default=None,
        description="a bias on the output projection; None: as `bias` (RecurrentGemma: "
        "bias false, o_bias true; Qwen2: bias true, o_bias false)",
    )
    output_gate: bool = Field(
        default=False,
        description="gated attention (Qwen3-Next): q_proj also emits a gate per head (HF's "
        "layout: each head's query rows, then its gate rows) and each head's output is "
        "multiplied by sigmoid(gate) before o_proj",
    )
    attn_softcap: float | None = Field(
        default=None,
        gt=0,
        description="soft-capping of the attention logits, cap * tanh(logit / cap) (Gemma-2: "
        "50.0); None: off. sdpa cannot: auto picks flex on CUDA, else reference",
    )
    sinks: int = Field(
        default=0,
        ge=0,
        le=64,
        description="learned sink logits per head (gpt-oss: 1): each adds exp(sink) to its "
        "head's softmax denominator and reads no value. sdpa cannot: auto picks flex on "
        "CUDA, else reference",
    )
    partial_rotary: float = Field(
        default=1.0,
        gt=0,
        le=1,
        description="fraction of head_dim that RoPE rotates: its first "
        "int(head_dim * partial_rotary) dims (GPT-NeoX 0.25, Phi 0.5; 1.0: all)",
    )
    backend: str = backend_field(BACKENDS)
    share_cache: int | None = Field(
        default=None,
        ge=0,
        description="index of the earlier block whose keys/values this block reads (the "
        "compiler resolves `share_cache: N | name` to it); the block then has no k/v "
        "projections and no cache of its own",
    )


class AttentionParams(Protocol):
    """What the cost helpers read (`attention` and `local_attention` params)."""

    kind: str
    heads: int
    kv_heads: int | None
    head_dim: int | None
    rope: bool
    rope_theta: float
    qk_norm: bool
    bias: bool
    o_bias: bool | None
    output_gate: bool
    attn_softcap: float | None
    sinks: int
    partial_rotary: float
    backend: str
    share_cache: int | None


def shape_checks(p: AttentionParams, d_model: int) -> Checks:
    """head_dim derivable from d_model, kv_heads dividing heads, head_dim even under RoPE."""
    errors: Checks = []
    if p.head_dim is None and d_model % p.heads:
        errors.append(
            (
                "heads",
                f"d_model ({d_model}) must be divisible by heads ({p.heads}) "
                "when head_dim is not given",
            )
        )
    if p.kv_heads is not None and p.heads % p.kv_heads:
        errors.append(("kv_heads", f"must divide heads ({p.heads}) (got {p.kv_heads})"))
    if p.rope and p.partial_rotary == 1 and (p.head_dim or d_model // p.heads) % 2:
        errors.append(("head_dim", "must be even when rope is on"))
    return errors


def logit_mods(p: AttentionParams) -> bool:
    """Whether the softmax is modified (soft-capped logits or sink logits): sdpa cannot."""
    return p.attn_softcap is not None or p.sinks > 0


def extras_checks(p: AttentionParams, d_model: int) -> Checks:
    """sdpa not asked for with soft-capping or sinks; rotary_dim even and at least 2 under
    partial RoPE."""
    errors: Checks = []
    if p.backend == "sdpa" and logit_mods(p):
        what = "soft-cap attention logits" if p.attn_softcap is not None else "add sink logits"
        errors.append(
            ("backend", f"sdpa cannot {what}: use flex (CUDA) or reference (auto picks them)")
        )
    if p.rope and p.partial_rotary < 1 and (p.head_dim or d_model % p.heads == 0):
        rd = rotary_dim(p, d_model)
        if rd < 2 or rd % 2:
            errors.append(
                (
                    "partial_rotary",
                    f"int(head_dim * partial_rotary) must be even and at least 2 (it is {rd})",
                )
            )
    return errors


def check(p: Params, d_model: int) -> Checks:
    """Checks that need the model: the kind has the backend asked for; head_dim
    derivable, kv_heads dividing heads, head_dim even under RoPE (rotary_dim under partial
    RoPE); sdpa not asked for with soft-capping or sinks."""
    return (
        backend_check(p.kind, BACKENDS, p.backend)
        + shape_checks(p, d_model)
        + extras_checks(p, d_model)
    )


def head_dims(p: AttentionParams, d_model: int) -> tuple[int, int, int]:
    """(heads, kv_heads, head_dim) with the defaults filled in."""
    return p.heads, p.kv_heads or p.heads, p.head_dim or d_model // p.heads


def rotary_dim(p: AttentionParams, d_model: int) -> int:
    """Dims of each head that RoPE rotates: int(head_dim * partial_rotary) (HF's rule)."""
    return int((p.head_dim or d_model // p.heads) * p.partial_rotary)


def visible_pairs(seq_len: int, window: int | None) -> int:
    """(query, key) pairs that a causal mask, optionally limited to `window` keys, allows."""
    if window is None or window >= seq_len:
        return seq_len * (seq_len + 1) // 2
    return window * (window + 1) // 2 + (seq_len - window) * window


def out_bias(p: AttentionParams) -> bool:
    """Whether o_proj has a bias: `o_bias`, or `bias` when o_bias is None."""
    return p.bias if p.o_bias is None else p.o_bias


def q_width(p: AttentionParams, d_model: int) -> int:
    """q_proj's output width: heads * head_dim, twice that with the output gate."""
    H, _, dh = head_dims(p, d_model)
    return H * dh * (2 if p.output_gate else 1)


def own_kv_heads(p: AttentionParams, d_model: int) -> int:
    """kv heads this block projects itself: none when it reads another block's (sharing)."""
    return 0 if p.share_cache is not None else head_dims(p, d_model)[1]


def param_count(p: AttentionParams, d_model: int) -> int:
    """Parameters of the q/(k/v)/o projections (q twice as wide with the output gate), their
    biases, the qk-norm weights and the sink logits (heads x sinks); a block that shares
    another's cache has no k/v projections and no k-norm weight."""
    H, _, dh = head_dims(p, d_model)
    K, Q = own_kv_heads(p, d_model), q_width(p, d_model)
    weights = d_model * Q + d_model * H * dh + 2 * d_model * K * dh
    biases = (Q + 2 * K * dh if p.bias else 0) + (d_model if out_bias(p) else 0)
    norms = dh * (2 if K else 1) if p.qk_norm else 0
    return weights + biases + norms + H * p.sinks


def cost(p: AttentionParams, d_model: int, batch: int, tokens: int, pairs: int) -> FlopCount:
    """FLOPs for `tokens` new tokens per sequence whose queries see `pairs` keys in all."""
    H, _, dh = head_dims(p, d_model)
    K, Q = own_kv_heads(p, d_model), q_width(p, d_model)
    proj = linear_flops(tokens, d_model, Q) + linear_flops(tokens, H * dh, d_model)
    proj += 2 * linear_flops(tokens, d_model, K * dh)
    products = 2 * 2 * dh * pairs * H
    qk_elems = tokens * (H + K) * dh
    other = SOFTMAX_FLOPS * pairs * H
    other += ROPE_FLOPS * tokens * (H + K) * rotary_dim(p, d_model) if p.rope else 0
    other += QK_NORM_FLOPS * qk_elems if p.qk_norm else 0
    other += tokens * (Q + 2 * K * dh) if p.bias else 0
    other += tokens * d_model if out_bias(p) else 0
    other += OUTPUT_GATE_FLOPS * tokens * H * dh if p.output_gate else 0
    other += SOFTCAP_FLOPS * pairs * H if p.attn_softcap is not None else 0
    other += SOFTMAX_FLOPS * tokens * H * p.sinks
    return FlopCount(batch * (proj + products), batch * other)


def flops(params: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """Forward FLOPs over batch x seq_len tokens; T(T+1)/2 visible pairs per sequence."""
    return cost(params, d_model, batch, seq_len, visible_pairs(seq_len, None))


def decode_flops(params: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """FLOPs of one new token at position t: it sees t + 1 keys."""
    return cost(params, d_model, batch, 1, t + 1)


def cache_bytes(params: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """k and v for every position: 2 * B * T * kv_heads * head_dim * dtype_bytes (0 for a
    block that reads another block's cache)."""
    K, dh = own_kv_heads(params, d_model), head_dims(params, d_model)[2]
    return 2 * batch * seq_len * K * dh * dtype_bytes


def activations(p: AttentionParams, d_model: int, seq_len: int) -> tuple[int, int]:
    """q, k, v and the output (plus the pre-norm q and k under qk-norm, and the gate and
    the gated output under the output gate) in the model dtype; a float32 log-sum-exp per
    head and token (fused attention keeps no T x T scores)."""
    H, dh = p.heads, p.head_dim or d_model // p.heads
    K = p.kv_heads or H
    qk_norm = (H + K) * dh if p.qk_norm else 0  # the pre-norm q and k
    gate = 2 * H * dh if p.output_gate else 0  # the gate logits and the gated output
    return seq_len * (2 * H * dh + 2 * K * dh + qk_norm + gate), FP32 * seq_len * H


def cache_geometry(p: AttentionParams, d_model: int) -> dict:
    """What must agree between a cache's source and a block that reads it (`share_cache`):
    the kv heads, head_dim, RoPE (and the rotated fraction) and the window (None for full
    attention)."""
    return {
        "kind": p.kind,
        "kv_heads": p.kv_heads or p.heads,
        "head_dim": p.head_dim or d_model // p.heads,
        "rope": p.rope,
        "rope_theta": p.rope_theta,
        "partial_rotary": p.partial_rotary,
        "window": getattr(p, "window", None),
    }


def _layer():
    from archlab.blocks.attention.layer import AttentionBlock

    return AttentionBlock


KIND = BlockKind(
    name="attention",
    summary="causal multi-head softmax attention: GQA / MQA, RoPE (or partial RoPE), optional "
    "qk-norm, logit soft-capping, sink logits and output gate, cache sharing",
    symbol="A",
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
    cache_geometry=cache_geometry,
    branchable=True,
    color="#e45756",
    examples=(
        {"kind": "attention", "heads": 4},
        {"kind": "attention", "heads": 4, "kv_heads": 2, "qk_norm": True, "bias": True},
        {"kind": "attention", "heads": 4, "kv_heads": 1, "head_dim": 8, "rope": False},
        {
            "kind": "attention",
            "heads": 2,
            "kv_heads": 1,
            "head_dim": 6,
            "qk_norm": True,
            "bias": True,
        },
        {"kind": "attention", "heads": 4, "kv_heads": 2, "attn_softcap": 2.0, "sinks": 1},
        {"kind": "attention", "heads": 2, "sinks": 2, "partial_rotary": 0.25, "qk_norm": True},
        {
            "kind": "attention",
            "heads": 4,
            "kv_heads": 2,
            "output_gate": True,
            "qk_norm": True,
            "partial_rotary": 0.5,
        },
        {"kind": "attention", "heads": 2, "head_dim": 6, "output_gate": True, "bias": True},
        {"kind": "attention", "heads": 4, "kv_heads": 1, "o_bias": True, "sinks": 1},
        {"kind": "attention", "heads": 2, "bias": True, "o_bias": False, "output_gate": True},
    ),
    gpu_examples=({"kind": "attention", "heads": 16, "head_dim": 128},),
)
