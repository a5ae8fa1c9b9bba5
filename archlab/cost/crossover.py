"""Crossovers: the exact sequence lengths where one spec's cost figure passes another's.

Every figure of the cost model is, on each class T = r + k * period (period = the lcm of
the chunk sizes), a polynomial of degree <= 2 in k, piecewise at the windows of local
attention; the search finds each sign change of the difference by binary search on the
monotone sides of each quadratic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from math import lcm

from archlab.blocks.registry import kind as block_kind
from archlab.cost.analytic import metric_function
from archlab.lang.plan import Plan


class CrossoverError(ValueError):
    """The difference of two costs is not of the piecewise-quadratic form assumed."""


class CrossoverGaveUp(CrossoverError):
    """The exact search would take more work than its budget (MAX_WORK)."""


@dataclass(frozen=True)
class Run:
    """A maximal range of T (end None = unbounded) where sign(A - B) is `sign`
    (-1, 0 or 1), or 2 where it changes with T mod the chunk period ("mixed")."""

    start: int
    end: int | None
    sign: int


MAX_PERIOD = 1 << 16  # residue classes mod the lcm of the chunk sizes
MAX_ENUMERATE = 1 << 16  # longest mixed range resolved T by T
# The budget of one search, in block-cost evaluations (a cost evaluation of a spec counts
# once per distinct block): about a second. The search estimates its work before it
# starts and counts it as it goes; past the budget it gives up (CrossoverGaveUp) and
# says so, rather than running for minutes.
MAX_WORK = 2_000_000
EVALS_PER_CLASS = 12  # a class's fit (5), checks (3) and binary searches, on average
GIVE_UP_HINT = "compare at chosen lengths with --seq instead"


class _Budget:
    """f, counting its evaluations (each `weight` units) against `limit`."""

    def __init__(self, f: Callable[[int], int], weight: int, limit: int = MAX_WORK):
        self.f, self.weight, self.limit, self.used = f, max(1, weight), limit, 0

    def __call__(self, t: int) -> int:
        self.used += self.weight
        if self.used > self.limit:
            raise CrossoverGaveUp(
                f"gave up: the exact search needs more than {self.limit:,} block-cost "
                f"evaluations (its budget); {GIVE_UP_HINT}"
            )
        return self.f(t)


def structure(plan: Plan) -> tuple[set[int], int]:
    """(windows, period): T = window is where a `min(T, window)` piece changes form; every
    cost is a polynomial of degree <= 2 in k on each class T = r + k * period (period =
    lcm of the chunk sizes, whose floor/ceil(T / chunk) pieces are linear in k there)."""
    windows, period = set(), 1
    for b in plan.blocks:
        w, p = block_kind(b.kind).breakpoints(b.params)
        windows |= w
        period = lcm(period, p)
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
            if isinstance(f, _Budget):  # T by T on the fitted quadratics: cheap, but counted
                f.used += end - start + 1
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


def sign_runs(
    f: Callable[[int], int], windows: set[int], period: int, weight: int = 1
) -> list[Run]:
    """The exact sign of f(T) for every T >= 1, as maximal runs.

    f must be, between consecutive `windows` breakpoints and on each residue class mod
    `period`, a polynomial of degree <= 2 in T (true of every cost here: `structure`).
    Each class's quadratic is fitted from exact values, checked at further points (a
    mismatch raises CrossoverError) and its sign changes found by binary search on the
    monotone sides of its vertex; the classes are then merged (where they disagree, T by T).
    One evaluation of f costs `weight` against the budget (MAX_WORK); past it, or when
    the estimate of the work is past it, the search gives up (CrossoverGaveUp)."""
    if period > MAX_PERIOD:
        raise CrossoverGaveUp(
            f"gave up: the chunk sizes' common period ({period:,}) is too large "
            f"for an exact crossover search (limit {MAX_PERIOD:,}); {GIVE_UP_HINT}"
        )
    bounds = sorted({1} | {w for w in windows if w > 1} | {w + 1 for w in windows})
    estimate = len(bounds) * period * EVALS_PER_CLASS * max(1, weight)
    if estimate > MAX_WORK:
        raise CrossoverGaveUp(
            f"gave up: the exact search would need about {estimate:,} block-cost "
            f"evaluations ({period:,} residue classes x {len(bounds)} ranges between "
            f"windows), more than its budget of {MAX_WORK:,}; {GIVE_UP_HINT}"
        )
    f = _Budget(f, weight)
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
    weight = _distinct_blocks(a) + _distinct_blocks(b)
    return sign_runs(lambda t: fa(t) - fb(t), wa | wb, lcm(pa, pb), weight)


def _distinct_blocks(plan: Plan) -> int:
    """How many blocks one cost evaluation computes (identical blocks are computed once),
    plus the embedding and head."""
    return 1 + len({(b.kind, b.params.model_dump_json()) for b in plan.blocks})
