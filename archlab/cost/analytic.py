"""The analytic cost of a Plan: parameters, FLOPs, inference-cache and decode bytes.

Conventions (docs/cost.md): 2 FLOPs per multiply-add; `fwd` for `batch` sequences of
`seq_len` tokens; `bwd` = 2 x fwd (exact for matmul-type work, an estimate for the rest);
`train` = fwd + bwd; decode figures are for one new token per sequence at position
`seq_len` (that many tokens already cached). Every number is a sum of the blocks' own pure
functions (each kind's record, `blocks/<kind>/`) over the Plan, plus the embedding, norms,
residual adds and LM head, so `sum(by_block) + head == total` for every field.

Crossovers between specs (`archlab.cost.crossover`) are found exactly from the same
integer functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields

from archlab.blocks.base import BlockParams, FlopCount, ModelConfig, linear_flops
from archlab.blocks.registry import kind as block_kind
from archlab.lang.plan import Plan, PlannedBlock

NORM_FLOPS_PER_ELEMENT = 4  # square, sum, scale, weight (rmsnorm); layernorm counted alike
SOFTCAP_FLOPS = 3  # per logit of a soft-capped head: divide, tanh, multiply
RESIDUAL_FLOPS_PER_ELEMENT = 1  # x + block(norm(x))
METRICS = ("fwd_flops", "train_flops", "decode_flops", "cache_bytes", "decode_bytes")


def norm_params(model: ModelConfig) -> int:
    """Parameters of one norm over d_model (RMSNorm: weight; LayerNorm: weight and bias)."""
    return model.d_model * (2 if model.norm == "layernorm" else 1)


@dataclass
class KindCost:
    """Totals for one block kind, one block, or the embedding + final norm + LM head.

    FLOPs are forward (`fwd_*`) over batch x seq_len tokens and one decode step (`decode_*`)
    for `batch` sequences; `*_flops` is matmul-type work and `*_other_flops` the rest."""

    blocks: int = 0
    params: int = 0
    active_params: int = 0  # those one token uses (fewer than params with routed experts)
    fwd_flops: int = 0
    fwd_other_flops: int = 0
    cache_bytes: int = 0
    decode_flops: int = 0
    decode_other_flops: int = 0
    decode_bytes: int = 0  # weights + cache read by one decode step

    @property
    def train_flops(self) -> int:
        return 3 * self.fwd_flops

    def add(self, other: KindCost) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict:
        return {**asdict(self), "train_flops": self.train_flops}


@dataclass
class Cost:
    """What a spec costs at `batch` x `seq_len` (see the module docstring).

    `fwd_flops`, `train_flops` and `decode_flops` are matmul-type FLOPs (projections,
    attention products, LM head); the `*_other_flops` fields hold the rest (scans, gates,
    norms, softmax, activations). `decode_bytes` is weights + cache read by one decode step
    of `batch` sequences at position `seq_len`; `cache_bytes` is the inference cache after
    `seq_len` tokens."""

    batch: int
    seq_len: int
    params: int
    fwd_flops: int
    fwd_other_flops: int
    cache_bytes: int
    decode_flops: int
    decode_other_flops: int
    decode_bytes: int
    weight_bytes: int  # the weight part of decode_bytes
    active_params: int = 0  # the parameters one token uses (routed experts: top_k of them)
    by_kind: dict[str, KindCost] = field(default_factory=dict)
    by_block: list[KindCost] = field(default_factory=list)
    head: KindCost = field(default_factory=KindCost)  # embedding, final norm, LM head

    @property
    def tokens(self) -> int:
        return self.batch * self.seq_len

    @property
    def bwd_flops(self) -> int:
        return 2 * self.fwd_flops

    @property
    def train_flops(self) -> int:
        return self.fwd_flops + self.bwd_flops

    @property
    def train_other_flops(self) -> int:
        """Non-matmul training work, estimated as 3 x forward (backward ~ 2 x forward)."""
        return 3 * self.fwd_other_flops

    def to_dict(self) -> dict:
        """Every figure as an exact integer, with by_kind / by_block / head broken out."""
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["by_kind"] = {k: v.to_dict() for k, v in self.by_kind.items()}
        d["by_block"] = [b.to_dict() for b in self.by_block]
        d["head"] = self.head.to_dict()
        d.update(
            bwd_flops=self.bwd_flops,
            train_flops=self.train_flops,
            train_other_flops=self.train_other_flops,
        )
        return d


def param_count(plan: Plan) -> int:
    """Exact number of parameters of the built model (tied embeddings counted once)."""
    m = plan.model
    total = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2) + norm_params(m)
    for b in plan.blocks:
        total += norm_params(m) + block_kind(b.kind).param_count(b.params, m.d_model)
    return total


def block_cost(
    block: PlannedBlock, model: ModelConfig, batch: int, seq_len: int, shared_read: int = 0
) -> KindCost:
    """One residual block (its pre-norm, mixer and residual add) at batch x seq_len;
    `shared_read`: bytes of other blocks' caches that its decode step reads (share_cache,
    its parallel branches' included)."""
    mod, d, dbytes = block_kind(block.kind), model.d_model, model.dtype_bytes
    wrap = NORM_FLOPS_PER_ELEMENT + RESIDUAL_FLOPS_PER_ELEMENT  # per element of the stream
    f = mod.flops(block.params, d, batch, seq_len) + FlopCount(0, wrap * batch * seq_len * d)
    dec = mod.decode_flops(block.params, d, batch, seq_len) + FlopCount(0, wrap * batch * d)
    cache = mod.cache_bytes(block.params, d, batch, seq_len, dbytes)
    params = mod.param_count(block.params, d) + norm_params(model)
    active = params
    if mod.active_param_count is not None:
        active = mod.active_param_count(block.params, d) + norm_params(model)
    read = params * dbytes + cache + shared_read
    return KindCost(1, params, active, f.matmul, f.other, cache, dec.matmul, dec.other, read)


def mixer_figures(block: PlannedBlock, model: ModelConfig, batch: int, seq_len: int) -> dict:
    """One block's mixer alone (no norm, no residual): the figures a layer timing is read
    against (forward and training matmul FLOPs, cache bytes, decode FLOPs and bytes)."""
    kind, p, d = block_kind(block.kind), block.params, model.d_model
    fwd = kind.flops(p, d, batch, seq_len).matmul
    cache = kind.cache_bytes(p, d, batch, seq_len, model.dtype_bytes)
    weights = kind.param_count(p, d) * model.dtype_bytes
    return {
        "fwd_flops": fwd,
        "train_flops": 3 * fwd,
        "cache_bytes": cache,
        "decode_flops": kind.decode_flops(p, d, batch, seq_len).matmul,
        "decode_bytes": weights + cache,
    }


def shared_sources(plan: Plan) -> dict[int, list[BlockParams]]:
    """Block index -> the mixers (a block's params, or a parallel branch's) whose caches
    it reads instead of its own (`share_cache`, its branches' included)."""
    by_index = {b.index: b for b in plan.blocks}
    out: dict[int, list[BlockParams]] = {}
    for b in plan.blocks:
        reads = b.cache_reads()
        if reads:
            out[b.index] = [by_index[block].mixer(branch) for block, branch in reads.values()]
    return out


def _cache_of(params: BlockParams, model: ModelConfig, batch: int, seq_len: int) -> int:
    """The cache bytes of one mixer (a block's params or a branch's)."""
    return block_kind(params.kind).cache_bytes(
        params, model.d_model, batch, seq_len, model.dtype_bytes
    )


def head_cost(model: ModelConfig, batch: int, seq_len: int) -> KindCost:
    """Embedding, final norm and LM head (and the logits' soft-cap: divide, tanh, multiply,
    3 FLOPs per logit). A decode step reads the whole LM head but only `batch` rows of an
    untied embedding table (all of it when tied: it is the LM head)."""
    d, V, tokens = model.d_model, model.vocab_size, batch * seq_len
    cap = SOFTCAP_FLOPS if model.logit_softcap is not None else 0
    params = V * d * (1 if model.tie_embeddings else 2) + norm_params(model)
    embedding_rows = 0 if model.tie_embeddings else batch * d
    read = params - (0 if model.tie_embeddings else V * d) + embedding_rows
    return KindCost(
        0,
        params,
        params,
        linear_flops(tokens, d, V),
        NORM_FLOPS_PER_ELEMENT * tokens * d + cap * tokens * V,
        0,
        linear_flops(batch, d, V),
        NORM_FLOPS_PER_ELEMENT * batch * d + cap * batch * V,
        read * model.dtype_bytes,
    )


def spec_cost(plan: Plan, batch: int = 1, seq_len: int | None = None) -> Cost:
    """Sum every block's analytic cost over the plan at batch x seq_len tokens
    (seq_len defaults to the spec's max_seq_len)."""
    m = plan.model
    T = m.max_seq_len if seq_len is None else seq_len
    if batch < 1 or T < 1:
        raise ValueError(f"batch and seq_len must be >= 1 (got {batch}, {T})")
    head = head_cost(m, batch, T)
    total = KindCost()
    total.add(head)
    by_kind: dict[str, KindCost] = {}
    by_block = []
    sources = shared_sources(plan)
    weight_bytes = head.decode_bytes
    for b in plan.order():
        read = sum(_cache_of(src, m, batch, T) for src in sources.get(b.index, ()))
        one = block_cost(b, m, batch, T, read)
        by_block.append(one)
        by_kind.setdefault(b.kind, KindCost()).add(one)
        total.add(one)
        weight_bytes += one.params * m.dtype_bytes
    totals = {f.name: getattr(total, f.name) for f in fields(KindCost) if f.name != "blocks"}
    return Cost(
        batch, T, **totals, weight_bytes=weight_bytes, by_kind=by_kind, by_block=by_block, head=head
    )


def metric_function(plan: Plan, metric: str, batch: int = 1) -> Callable[[int], int]:
    """A fast exact T -> figure function for one of METRICS (identical blocks are
    evaluated once and multiplied by their count)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    m, d, dbytes = plan.model, plan.model.d_model, plan.model.dtype_bytes
    groups: dict[str, list] = {}
    for b in plan.blocks:
        key = b.params.model_dump_json()  # (params with lists are not hashable)
        groups.setdefault(key, [block_kind(b.kind), b.params, 0])[2] += 1
    items = list(groups.values())
    if metric in ("fwd_flops", "train_flops"):
        k = 3 if metric == "train_flops" else 1

        def f(T: int) -> int:
            total = linear_flops(batch * T, d, m.vocab_size)
            for mod, p, count in items:
                total += count * mod.flops(p, d, batch, T).matmul
            return k * total

    elif metric == "decode_flops":

        def f(T: int) -> int:
            total = linear_flops(batch, d, m.vocab_size)
            for mod, p, count in items:
                total += count * mod.decode_flops(p, d, batch, T).matmul
            return total

    else:
        weights = spec_cost(plan, batch, 1).weight_bytes if metric == "decode_bytes" else 0
        reads = [src for srcs in shared_sources(plan).values() for src in srcs]
        reads = reads if metric == "decode_bytes" else []

        def f(T: int) -> int:
            total = weights + sum(_cache_of(src, m, batch, T) for src in reads)
            for mod, p, count in items:
                total += count * mod.cache_bytes(p, d, batch, T, dbytes)
            return total

    return f
