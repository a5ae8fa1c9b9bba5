"""`moe` (E): a mixture-of-experts channel mixer, the sparse replacement of `mlp` (Shazeer
et al. 2017, "Outrageously Large Neural Networks", arXiv:1701.06538; top-k routing with a
load-balancing loss as GShard, Lepikhin et al. 2020, arXiv:2006.16668, and Switch
Transformers, Fedus et al. 2021, arXiv:2101.03961; shared always-on experts as
DeepSeekMoE, Dai et al. 2024, arXiv:2401.06066). `E` is its symbol in Megatron-LM's
hybrid patterns.

A router `Linear(d_model, num_experts)` scores every token (softmax, or sigmoid as
DeepSeek-V3); each token goes to its `top_k` experts, whose outputs are summed weighted by
the scores (renormalised over the top k when `norm_topk_prob`). Every expert is an MLP of
width `hidden` (`activation` as `mlp`'s, swiglu by default); `shared_experts` more, of
width `shared_hidden` each, see every token (optionally scaled by a sigmoid gate
`Linear(d_model, 1)`, as Qwen2-MoE). Routing is dropless by default; a `capacity_factor`
drops the tokens beyond ceil(capacity_factor * tokens * top_k / num_experts) per expert
(first come, first served) in a training-mode forward; evaluation, prefill and decode are
dropless, so that decode equals the forward.

The load-balancing loss num_experts * sum_i f_i P_i (f_i: the fraction of the
tokens * top_k routing choices that picked expert i; P_i: the mean router probability of
expert i, the sigmoid scores normalised per token) times `aux_loss_coef` is left on the
layer as `aux_loss` by every forward (1 * coef when the load is even).

Backends: `grouped` (the experts as grouped GEMMs, `torch._grouped_mm`, CUDA sm90+, bf16;
other dtypes run the loop), `reference` (tokens sorted by expert, a loop over the experts,
any device). Routing, the sort by expert and the capacity cut keep fixed shapes (no host
sync): `grouped` traces into one graph and its decode step can be captured in a CUDA
graph; the reference's loop reads the counts on the host. The layer is
`archlab.blocks.moe.layer.MoEBlock`.

Costs (2 FLOPs per multiply-add). `param_count` is the total (every expert);
`active_param_count` is what one token uses (router, top_k experts, the shared experts and
their gate). FLOPs count the active path only: the router, the top_k experts and the shared
experts per token (dropless: with a capacity factor the dropped tokens do less). `other`:
`ROUTER_FLOPS` (5) per router score (softmax or sigmoid, top-k), the activation's
`ACTIVATION_FLOPS` per hidden element used, `COMBINE_FLOPS` (2) per output element per
routed expert (scale and add), d_model per token to add the shared experts' output and,
with the shared gate, `SIGMOID_FLOPS` (4) + d_model (the scale) per token.
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
    scale_widths,
)
from archlab.blocks.mlp import ACTIVATION_FLOPS, GATED

BACKENDS = ("grouped", "reference")  # in the order `auto` tries them
ROUTER_FLOPS = 5
COMBINE_FLOPS = 2
SIGMOID_FLOPS = 4
FP32 = 4


class Params(BlockParams):
    """Top-k routed experts (MLPs) plus optional shared experts."""

    kind: Literal["moe"] = "moe"
    num_experts: int = Field(default=8, ge=1, le=1 << 14, description="routed experts")
    top_k: int = Field(default=2, ge=1, le=1 << 14, description="experts each token is routed to")
    hidden: int | None = Field(
        default=None,
        ge=1,
        le=1 << 24,
        description="inner width of each expert (default 4 * d_model)",
    )
    shared_experts: int = Field(
        default=0, ge=0, le=64, description="always-on experts every token goes through"
    )
    shared_hidden: int | None = Field(
        default=None,
        ge=1,
        le=1 << 24,
        description="inner width of each shared expert (default: hidden)",
    )
    shared_gate: bool = Field(
        default=False,
        description="scale the shared experts' output by sigmoid(Linear(d_model, 1)) (Qwen2-MoE)",
    )
    activation: Literal["gelu", "silu", "relu2", "swiglu", "geglu"] = Field(
        default="swiglu", description="the experts' activation (swiglu and geglu are gated)"
    )
    router: Literal["softmax", "sigmoid"] = Field(
        default="softmax",
        description="router scores: softmax over the experts, or a sigmoid each (DeepSeek-V3)",
    )
    norm_topk_prob: bool = Field(
        default=True,
        description="renormalise the top-k scores of a token to sum to 1 (Mixtral, "
        "Qwen3-MoE); off: the raw scores weight the experts (Qwen2-MoE, Switch)",
    )
    capacity_factor: float | None = Field(
        default=None,
        gt=0,
        description="None: dropless; else an expert takes at most "
        "ceil(capacity_factor * tokens * top_k / num_experts) tokens of a training-mode "
        "forward (the rest skip it)",
    )
    aux_loss_coef: float = Field(
        default=0.01,
        ge=0,
        description="weight of the load-balancing loss num_experts * sum(f_i * P_i) that "
        "the layer leaves in `aux_loss`",
    )
    backend: str = backend_field(BACKENDS)


def hidden_size(p: Params, d_model: int) -> int:
    """An expert's inner width: `hidden`, or 4 * d_model."""
    return 4 * d_model if p.hidden is None else p.hidden


def shared_width(p: Params, d_model: int) -> int:
    """The shared experts' inner widths together (they run as one MLP that wide)."""
    each = hidden_size(p, d_model) if p.shared_hidden is None else p.shared_hidden
    return p.shared_experts * each


def _matrices(p: Params) -> int:
    return 3 if p.activation in GATED else 2


def check(p: Params, d_model: int) -> Checks:
    """The backend exists; top_k at most num_experts; shared_hidden and shared_gate only
    with shared experts."""
    errors = backend_check(p.kind, BACKENDS, p.backend)
    if p.top_k > p.num_experts:
        errors.append(("top_k", f"must be at most num_experts ({p.num_experts}) (got {p.top_k})"))
    if p.shared_experts == 0 and p.shared_hidden is not None:
        errors.append(("shared_hidden", "needs shared_experts >= 1"))
    if p.shared_experts == 0 and p.shared_gate:
        errors.append(("shared_gate", "needs shared_experts >= 1"))
    return errors


def _shared_params(p: Params, d_model: int) -> int:
    gate = d_model if p.shared_gate else 0
    return _matrices(p) * d_model * shared_width(p, d_model) + gate


def param_count(p: Params, d_model: int) -> int:
    """Total parameters: router d_model * E, E experts of matrices * d_model * hidden, the
    shared experts' matrices * d_model * shared_width, and the shared gate's d_model."""
    experts = p.num_experts * _matrices(p) * d_model * hidden_size(p, d_model)
    return d_model * p.num_experts + experts + _shared_params(p, d_model)


def active_param_count(p: Params, d_model: int) -> int:
    """Parameters one token uses: the router, top_k experts, the shared experts (and gate)."""
    experts = p.top_k * _matrices(p) * d_model * hidden_size(p, d_model)
    return d_model * p.num_experts + experts + _shared_params(p, d_model)


def flops(p: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """Forward FLOPs of the active path over batch x seq_len tokens (module docstring)."""
    tokens, hidden, shared = batch * seq_len, hidden_size(p, d_model), shared_width(p, d_model)
    n = _matrices(p)
    matmul = linear_flops(tokens, d_model, p.num_experts)  # the router
    matmul += p.top_k * n * linear_flops(tokens, d_model, hidden)
    matmul += n * linear_flops(tokens, d_model, shared)
    act = ACTIVATION_FLOPS[p.activation]
    other = tokens * (ROUTER_FLOPS * p.num_experts + COMBINE_FLOPS * p.top_k * d_model)
    other += tokens * act * (p.top_k * hidden + shared)
    other += tokens * d_model if p.shared_experts else 0  # adding the shared output
    if p.shared_gate:
        matmul += linear_flops(tokens, d_model, 1)
        other += tokens * (SIGMOID_FLOPS + d_model)
    return FlopCount(matmul, other)


def decode_flops(p: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """One new token per sequence: the forward cost of one token, whatever t."""
    return flops(p, d_model, batch, 1)


def cache_bytes(p: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """The MoE keeps no decode state."""
    return 0


def activations(p: Params, d_model: int, seq_len: int) -> tuple[int, int]:
    """Per token: the router logits, top_k gathered inputs and expert outputs, each routed
    expert's up (and gate) outputs and activation (and gating product), the shared
    experts' alike; the float32 router probabilities."""
    per_hidden = 4 if p.activation in GATED else 2
    width = p.top_k * hidden_size(p, d_model) + shared_width(p, d_model)
    elems = seq_len * (p.num_experts + 2 * p.top_k * d_model + per_hidden * width)
    return elems, FP32 * seq_len * p.num_experts


def scale(data: dict, d_old: int, d_new: int) -> dict:
    """At a smaller d_model: expert widths (`hidden`, `shared_hidden`) scale with d_model,
    the number of experts and top_k are kept."""
    out = scale_widths(data, d_old, d_new)
    if isinstance(out.get("shared_hidden"), int):
        out["shared_hidden"] = max(8, round(out["shared_hidden"] * d_new / d_old / 8) * 8)
    return out


def _layer():
    from archlab.blocks.moe.layer import MoEBlock

    return MoEBlock


KIND = BlockKind(
    name="moe",
    summary="mixture of experts: top-k routed MLP experts (softmax or sigmoid router, "
    "dropless or capacity), shared experts, load-balancing loss",
    symbol="E",
    is_mixer=False,
    params=Params,
    layer=_layer,
    param_count=param_count,
    active_param_count=active_param_count,
    flops=flops,
    decode_flops=decode_flops,
    cache_bytes=cache_bytes,
    activations=activations,
    check=check,
    backends=BACKENDS,
    scale=scale,
    color="#9d755d",
    examples=(
        {"kind": "moe", "num_experts": 4, "top_k": 2, "hidden": 8},
        {
            "kind": "moe",
            "num_experts": 6,
            "top_k": 3,
            "hidden": 8,
            "shared_experts": 1,
            "shared_hidden": 12,
            "shared_gate": True,
            "norm_topk_prob": False,
        },
        {"kind": "moe", "num_experts": 5, "top_k": 1, "hidden": 12, "activation": "gelu"},
        {
            "kind": "moe",
            "num_experts": 8,
            "top_k": 2,
            "hidden": 8,
            "shared_experts": 2,
            "router": "sigmoid",
            "activation": "relu2",
        },
    ),
    gpu_examples=(
        {"kind": "moe", "num_experts": 16, "top_k": 2, "hidden": 1408, "shared_experts": 1},
    ),
)
