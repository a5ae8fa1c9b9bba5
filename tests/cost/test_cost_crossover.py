"""Crossovers: the exact sign runs against a brute-force scan of the same integer costs."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

import archlab
from archlab.cli.cost import describe
from archlab.cost.analytic import metric_function
from archlab.cost.crossover import CrossoverError, Run, crossovers, sign_runs

ROOT = Path(__file__).resolve().parents[2]
SPECS = [
    "paper/attention",
    "paper/attention_swa",
    "paper/rat",
    "paper/rat_swa",
    "paper/rnn",
    "tiny/hybrid",
    "examples/megatron_ssm_hybrid",
    "examples/rat_chunk_dial",
]
PAIRS = list(itertools.combinations(SPECS, 2))


def sign(x: int) -> int:
    return (x > 0) - (x < 0)


def sign_at(runs: list[Run], T: int) -> int:
    for r in runs:
        if r.start <= T and (r.end is None or T <= r.end):
            return r.sign
    raise AssertionError(f"T = {T} in no run")


def check_runs(runs: list[Run], f, scan: int) -> None:
    """Runs cover 1.. without gaps, alternate in sign and agree with f everywhere checked:
    every T up to `scan`, and around every run boundary and far beyond the last."""
    assert runs[0].start == 1 and runs[-1].end is None
    for a, b in itertools.pairwise(runs):
        assert a.end is not None and b.start == a.end + 1 and a.sign != b.sign
    points = set(range(1, scan + 1))
    for r in runs:
        points |= {r.start + k for k in range(-3, 4)} | {r.start + 10**k for k in range(3, 13)}
    for T in sorted(t for t in points if t >= 1):
        s = sign_at(runs, T)
        if s != 2:
            assert sign(f(T)) == s, (T, f(T), s)


def compiled(name: str):
    return archlab.compile(ROOT / f"specs/{name}.yaml")


@pytest.mark.parametrize("a,b", PAIRS)
@pytest.mark.parametrize("metric", ["train_flops", "cache_bytes", "decode_bytes", "decode_flops"])
def test_spec_crossovers_match_brute_force(a, b, metric):
    pa, pb = compiled(a), compiled(b)
    for batch in (1, 64) if "paper" in a else (1,):
        fa, fb = metric_function(pa, metric, batch), metric_function(pb, metric, batch)
        runs = crossovers(pa, pb, metric, batch)
        check_runs(runs, lambda t, fa=fa, fb=fb: fa(t) - fb(t), scan=300)
        assert all(r.sign != 2 for r in runs)  # the paper specs never alternate


def test_known_paper_crossovers():
    att, rat, swa = (
        compiled("paper/attention"),
        compiled("paper/rat"),
        compiled("paper/attention_swa"),
    )
    # RAT's cache is 2 ceil(T/16) slots per layer against attention's 2 T: equal at T = 1
    assert crossovers(rat, att, "cache_bytes") == [Run(1, 1, 0), Run(2, None, -1)]
    # SWA equals attention up to its window (1025 tokens), then is cheaper for ever
    assert crossovers(swa, att, "cache_bytes") == [Run(1, 1025, 0), Run(1026, None, -1)]
    assert crossovers(att, att, "train_flops") == [Run(1, None, 0)]
    assert crossovers(compiled("paper/rnn"), rat, "decode_bytes") == [Run(1, None, -1)]


def test_quadratic_with_two_roots():
    runs = sign_runs(lambda t: (t - 100) * (t - 5000), set(), 1)
    assert runs == [
        Run(1, 99, 1),
        Run(100, 100, 0),
        Run(101, 4999, -1),
        Run(5000, 5000, 0),
        Run(5001, None, 1),
    ]


def test_periodic_wiggle_is_resolved_exactly():
    def f(t: int) -> int:
        return t - 1000 + 50 * (t % 7 == 0) - 3 * (t % 5)

    runs = sign_runs(f, set(), 35)
    check_runs(runs, f, scan=3000)
    assert runs[-1] == Run(max(t for t in range(1, 3000) if f(t) <= 0) + 1, None, 1)
    assert runs[0].sign == -1 and any(r.end is not None and r.end - r.start < 7 for r in runs)


def test_window_breakpoints():
    def f(t: int) -> int:  # a local-attention-like min(T, window) piece against a slope
        w = 300
        return 5 * min(t, w) * min(t, w) - 40 * t - 1000

    runs = sign_runs(f, {300}, 1)
    check_runs(runs, f, scan=2000)
    assert runs[-1].sign == -1 and len(runs) >= 3


def test_alternating_for_ever_is_mixed():
    runs = sign_runs(lambda t: 2 * (t % 2) - 1, set(), 2)
    assert runs == [Run(1, None, 2)]


@pytest.mark.parametrize("f", [lambda t: t**3 - 10**6, lambda t: 2**t - 10**6])
def test_not_quadratic_is_an_error(f):
    with pytest.raises(CrossoverError):
        sign_runs(f, set(), 1)


def test_period_too_large_is_an_error():
    with pytest.raises(CrossoverError):
        sign_runs(lambda t: t, set(), 1 << 20)


def test_describe():
    assert describe([Run(1, None, -1)], "A", "B")[0] == "always"
    assert describe([Run(1, None, 1)], "A", "B")[0] == "never"
    assert describe([Run(1, None, 0)], "A", "B")[0] == "never"
    assert describe([Run(1, 546, 1), Run(547, None, -1)], "A", "B") == (
        "from T = 547",
        "T 1..546: B cheaper; T >= 547: A cheaper",
    )
    assert describe([Run(1, 9, -1), Run(10, None, 1)], "A", "B")[0] == "only T 1..9"
