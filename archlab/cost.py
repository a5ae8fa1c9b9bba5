"""The analytic cost of a Plan: parameters, FLOPs, inference-cache and decode bytes.

Conventions (docs/cost.md): 2 FLOPs per multiply-add; `fwd` for `batch` sequences of
`seq_len` tokens; `bwd` = 2 x fwd (exact for matmul-type work, an estimate for the rest);
`train` = fwd + bwd; decode figures are for one new token per sequence at position
`seq_len` (that many tokens already cached). Every number is a sum of the blocks' own pure
functions (`blocks/<kind>.py`) over the Plan, plus the embedding, norms, residual adds and
LM head, so `sum(by_block) + head == total` for every field.

Crossovers between specs (`crossovers`) are found exactly from the same integer
functions; see `sign_runs`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from fractions import Fraction
from math import lcm

from archlab.blocks import BLOCKS
from archlab.blocks.base import FlopCount, linear_flops
from archlab.config import ModelConfig
from archlab.plan import Plan, PlannedBlock

NORM_FLOPS_PER_ELEMENT = 4  # square, sum, scale, weight (rmsnorm); layernorm counted alike
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
        total += norm_params(m) + BLOCKS[b.kind].param_count(b.params, m.d_model)
    return total


def block_cost(
    block: PlannedBlock, model: ModelConfig, batch: int, seq_len: int, shared_read: int = 0
) -> KindCost:
    """One residual block (its pre-norm, mixer and residual add) at batch x seq_len;
    `shared_read`: bytes of another block's cache that its decode step reads (share_cache)."""
    mod, d, dbytes = BLOCKS[block.kind], model.d_model, model.dtype_bytes
    wrap = NORM_FLOPS_PER_ELEMENT + RESIDUAL_FLOPS_PER_ELEMENT  # per element of the stream
    f = mod.flops(block.params, d, batch, seq_len) + FlopCount(0, wrap * batch * seq_len * d)
    dec = mod.decode_flops(block.params, d, batch, seq_len) + FlopCount(0, wrap * batch * d)
    cache = mod.cache_bytes(block.params, d, batch, seq_len, dbytes)
    params = mod.param_count(block.params, d) + norm_params(model)
    read = params * dbytes + cache + shared_read
    return KindCost(1, params, f.matmul, f.other, cache, dec.matmul, dec.other, read)


def shared_sources(plan: Plan) -> dict[int, PlannedBlock]:
    """Block index -> the block whose cache it reads instead of its own (`share_cache`)."""
    by_index = {b.index: b for b in plan.blocks}
    return {
        b.index: by_index[b.shares_cache_of]
        for b in plan.blocks
        if getattr(b, "shares_cache_of", None) is not None
    }


def _cache_of(block: PlannedBlock, model: ModelConfig, batch: int, seq_len: int) -> int:
    return BLOCKS[block.kind].cache_bytes(
        block.params, model.d_model, batch, seq_len, model.dtype_bytes
    )


def head_cost(model: ModelConfig, batch: int, seq_len: int) -> KindCost:
    """Embedding, final norm and LM head. A decode step reads the whole LM head but only
    `batch` rows of an untied embedding table (all of it when tied: it is the LM head)."""
    d, V, tokens = model.d_model, model.vocab_size, batch * seq_len
    params = V * d * (1 if model.tie_embeddings else 2) + norm_params(model)
    embedding_rows = 0 if model.tie_embeddings else batch * d
    read = params - (0 if model.tie_embeddings else V * d) + embedding_rows
    return KindCost(
        0,
        params,
        linear_flops(tokens, d, V),
        NORM_FLOPS_PER_ELEMENT * tokens * d,
        0,
        linear_flops(batch, d, V),
        NORM_FLOPS_PER_ELEMENT * batch * d,
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
        src = sources.get(b.index)
        one = block_cost(b, m, batch, T, 0 if src is None else _cache_of(src, m, batch, T))
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
        groups.setdefault(key, [BLOCKS[b.kind], b.params, 0])[2] += 1
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
        reads = list(shared_sources(plan).values()) if metric == "decode_bytes" else []

        def f(T: int) -> int:
            total = weights + sum(_cache_of(src, m, batch, T) for src in reads)
            for mod, p, count in items:
                total += count * mod.cache_bytes(p, d, batch, T, dbytes)
            return total

    return f


# ---- crossovers -----------------------------------------------------------------------


class CrossoverError(ValueError):
    """The difference of two costs is not of the piecewise-quadratic form assumed."""


@dataclass(frozen=True)
class Run:
    """A maximal range of T (end None = unbounded) where sign(A - B) is `sign`
    (-1, 0 or 1), or 2 where it changes with T mod the chunk period ("mixed")."""

    start: int
    end: int | None
    sign: int


MAX_PERIOD = 1 << 16  # residue classes mod the lcm of the chunk sizes
MAX_ENUMERATE = 1 << 16  # longest mixed range resolved T by T


def structure(plan: Plan) -> tuple[set[int], int]:
    """(windows, period): T = window is where a `min(T, window)` piece changes form; every
    cost is a polynomial of degree <= 2 in k on each class T = r + k * period (period =
    lcm of the chunk sizes, whose floor/ceil(T / chunk) pieces are linear in k there)."""
    windows, period = set(), 1
    for b in plan.blocks:
        for p in getattr(b.params, "branches", None) or [b.params]:  # a parallel block's
            if p.kind == "local_attention":
                windows.add(p.window)
            elif p.kind in ("rat", "ssm"):
                period = lcm(period, p.chunk_size)
    return windows, period


def _sign(x: int | Fraction) -> int:
    return (x > 0) - (x < 0)


def _class_changes(q: Callable[[int], int], d1: int, d2: int, kmax: int | None) -> list:
    """[(k, sign)] from k = 0: where sign(q(k)) changes on 0..kmax for the quadratic
    q(k) = a + k d1 + k(k-1)/2 d2. Each side of the vertex is monotone, so every change is
    found by binary search; an unbounded side is first bracketed by doubling."""
    pieces = [(0, kmax)]
    if d2:
        split = (Fraction(1, 2) - Fraction(d1, d2)).__floor__()
        if 0 <= split and (kmax is None or split < kmax):
            pieces = [(0, split), (split + 1, kmax)]
    limit = _sign(d2) or _sign(d1) or _sign(q(0))
    marks = set()
    for lo, hi in pieces:
        marks.add(lo)
        s = lo
        while True:
            s0 = _sign(q(s))
            if hi is None:
                if s0 == limit:
                    break
                step = 1
                while _sign(q(s + step)) == s0:
                    step *= 2
                top = s + step
            else:
                if _sign(q(hi)) == s0:
                    break
                top = hi
            a, b = s, top  # q(a) has sign s0, q(b) does not
            while b - a > 1:
                mid = (a + b) // 2
                a, b = (mid, b) if _sign(q(mid)) == s0 else (a, mid)
            marks.add(b)
            s = b
    out: list = []
    for k in sorted(marks):
        s = _sign(q(k))
        if not out or out[-1][1] != s:
            out.append((k, s))
    return out


def _segment_runs(f: Callable[[int], int], lo: int, hi: int | None, period: int) -> list[Run]:
    """Runs of sign(f) on lo..hi, where f is quadratic on every class T = lo + j + k period."""
    if hi is not None and hi - lo + 1 < 6 * period:
        return _runs_of(lo, [_sign(f(t)) for t in range(lo, hi + 1)])
    polys, events = [], []
    for j in range(period):
        v = [f(lo + j + k * period) for k in range(5)]
        d1, d2 = v[1] - v[0], v[2] - 2 * v[1] + v[0]

        def q(k: int, a=v[0], d1=d1, d2=d2) -> int:
            return a + k * d1 + k * (k - 1) // 2 * d2

        kmax = None if hi is None else (hi - lo - j) // period
        probes = [3, 4] + ([kmax] if kmax is not None else [1 << 10, 1 << 20, 1 << 40])
        for k in probes:
            if q(k) != f(lo + j + k * period):
                raise CrossoverError(
                    f"cost is not quadratic in T on the class T = {lo + j} "
                    f"mod {period} (T >= {lo}); cannot find crossovers exactly"
                )
        polys.append(q)
        changes = _class_changes(q, d1, d2, kmax)
        events += [(lo + j + k * period, j, s) for k, s in changes[1:]]
        events.append((lo + j, j, changes[0][1]))
    events.sort()
    current: dict[int, int] = {}
    runs: list[Run] = []
    i = 0
    while i < len(events):
        t = events[i][0]
        while i < len(events) and events[i][0] == t:
            current[events[i][1]] = events[i][2]
            i += 1
        if len(current) < period:
            continue  # the classes' first members: lo .. lo + period - 1
        end = events[i][0] - 1 if i < len(events) else hi
        start = runs[-1].end + 1 if runs else lo
        if len(set(current.values())) == 1:
            runs.append(Run(start, end, next(iter(current.values()))))
        elif end is not None and end - start < MAX_ENUMERATE:
            signs = [
                _sign(polys[(t - lo) % period]((t - lo) // period)) for t in range(start, end + 1)
            ]
            runs += _runs_of(start, signs)
        else:
            runs.append(Run(start, end, 2))
    return runs


def _runs_of(start: int, signs: list[int]) -> list[Run]:
    runs: list[Run] = []
    for i, s in enumerate(signs):
        if runs and runs[-1].sign == s:
            runs[-1] = Run(runs[-1].start, start + i, s)
        else:
            runs.append(Run(start + i, start + i, s))
    return runs


def sign_runs(f: Callable[[int], int], windows: set[int], period: int) -> list[Run]:
    """The exact sign of f(T) for every T >= 1, as maximal runs.

    f must be, between consecutive `windows` breakpoints and on each residue class mod
    `period`, a polynomial of degree <= 2 in T (true of every cost here: `structure`).
    Each class's quadratic is fitted from exact values, checked at further points (a
    mismatch raises CrossoverError) and its sign changes found by binary search on the
    monotone sides of its vertex; the classes are then merged (where they disagree, T by T)."""
    if period > MAX_PERIOD:
        raise CrossoverError(
            f"the chunk sizes' common period ({period}) is too large "
            f"for an exact crossover search (limit {MAX_PERIOD})"
        )
    bounds = sorted({1} | {w for w in windows if w > 1} | {w + 1 for w in windows})
    runs: list[Run] = []
    for i, lo in enumerate(bounds):
        hi = bounds[i + 1] - 1 if i + 1 < len(bounds) else None
        for r in _segment_runs(f, lo, hi, period):
            if runs and runs[-1].sign == r.sign:
                runs[-1] = Run(runs[-1].start, r.end, r.sign)
            else:
                runs.append(r)
    return runs


def crossovers(a: Plan, b: Plan, metric: str, batch: int = 1) -> list[Run]:
    """Where spec `a` is cheaper than `b` in `metric` (sign -1), equal (0) or dearer (1),
    for every sequence length T >= 1."""
    fa, fb = metric_function(a, metric, batch), metric_function(b, metric, batch)
    (wa, pa), (wb, pb) = structure(a), structure(b)  # forms change at T = w and w + 1
    return sign_runs(lambda t: fa(t) - fb(t), wa | wb, lcm(pa, pb))
