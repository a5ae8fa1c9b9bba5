"""The analytic cost of a Plan: parameters, FLOPs, inference-cache and decode bytes.

Conventions (docs/cost.md): 2 FLOPs per multiply-add; `fwd` for B sequences of T tokens;
`bwd` = 2 x fwd for matmul-type work (and 2 x for the rest, an estimate); `train` = fwd +
bwd; decode figures are for one new token at position t (t tokens already cached).
Every number is a sum of the blocks' own pure functions over the Plan, plus the
embedding, norms and LM head.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from archlab.blocks import BLOCKS
from archlab.blocks.base import FlopCount, linear_flops
from archlab.config import ModelConfig
from archlab.plan import Plan

NORM_FLOPS_PER_ELEMENT = 4  # square, sum, scale, weight (rmsnorm); layernorm counted alike


def norm_params(model: ModelConfig) -> int:
    return model.d_model * (2 if model.norm == "layernorm" else 1)


@dataclass
class KindCost:
    """Totals for one block kind (or for one block)."""

    blocks: int = 0
    params: int = 0
    fwd_flops: int = 0
    fwd_other_flops: int = 0
    cache_bytes: int = 0
    decode_flops: int = 0


@dataclass
class Cost:
    """What a spec costs at `batch` x `seq_len` (see the module docstring)."""

    batch: int
    seq_len: int
    params: int
    fwd_flops: int  # matmul-type
    fwd_other_flops: int  # elementwise, scans, softmax, norms
    cache_bytes: int
    decode_flops: int  # matmul-type, one token per sequence at position seq_len
    decode_other_flops: int
    decode_bytes: int  # weights + cache read by one decode step (batch sequences)
    by_kind: dict[str, KindCost] = field(default_factory=dict)
    by_block: list[KindCost] = field(default_factory=list)

    @property
    def bwd_flops(self) -> int:
        return 2 * self.fwd_flops

    @property
    def train_flops(self) -> int:
        return self.fwd_flops + self.bwd_flops

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(bwd_flops=self.bwd_flops, train_flops=self.train_flops)
        return d


def param_count(plan: Plan) -> int:
    """Exact number of parameters of the built model."""
    m = plan.model
    total = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2) + norm_params(m)
    for b in plan.blocks:
        total += norm_params(m) + BLOCKS[b.kind].param_count(b.params, m.d_model)
    return total


def spec_cost(plan: Plan, batch: int = 1, seq_len: int | None = None) -> Cost:
    """Sum every block's analytic cost over the plan at batch x seq_len tokens."""
    m = plan.model
    T = seq_len or m.max_seq_len
    tokens, dbytes = batch * T, m.dtype_bytes
    n_norms = len(plan.blocks) + 1
    head = FlopCount(linear_flops(tokens, m.d_model, m.vocab_size),
                     NORM_FLOPS_PER_ELEMENT * tokens * m.d_model * n_norms)
    head_decode = FlopCount(linear_flops(batch, m.d_model, m.vocab_size),
                            NORM_FLOPS_PER_ELEMENT * batch * m.d_model * n_norms)
    fwd, dec, cache = head, head_decode, 0
    by_kind: dict[str, KindCost] = {}
    by_block = []
    for b in plan.order():
        mod = BLOCKS[b.kind]
        f = mod.flops(b.params, m.d_model, batch, T)
        d = mod.decode_flops(b.params, m.d_model, batch, T)
        c = mod.cache_bytes(b.params, m.d_model, batch, T, dbytes)
        p = mod.param_count(b.params, m.d_model) + norm_params(m)
        one = KindCost(1, p, f.matmul, f.other, c, d.matmul)
        by_block.append(one)
        k = by_kind.setdefault(b.kind, KindCost())
        for name in ("blocks", "params", "fwd_flops", "fwd_other_flops", "cache_bytes",
                     "decode_flops"):
            setattr(k, name, getattr(k, name) + getattr(one, name))
        fwd, dec, cache = fwd + f, dec + d, cache + c
    params = param_count(plan)
    embedding_rows_read = batch * m.d_model * (0 if m.tie_embeddings else 1)
    weights_read = (params - m.vocab_size * m.d_model * (0 if m.tie_embeddings else 1))
    decode_bytes = (weights_read + embedding_rows_read) * dbytes + cache
    return Cost(batch, T, params, fwd.matmul, fwd.other, cache, dec.matmul, dec.other,
                decode_bytes, by_kind, by_block)
