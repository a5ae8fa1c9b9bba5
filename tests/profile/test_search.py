"""The throughput batch search against fake `fits(batch)` oracles."""

from __future__ import annotations

import math

import pytest

from archlab.measure.throughput import largest_batch


def oracle(threshold: int):
    calls: list[int] = []

    def fits(b: int) -> bool:
        calls.append(b)
        return b <= threshold

    return fits, calls


@pytest.mark.parametrize("threshold", [1, 2, 3, 7, 8, 9, 100, 127, 128, 129, 1000, 4095])
def test_finds_the_largest_fitting_batch(threshold):
    fits, calls = oracle(threshold)
    s = largest_batch(fits, limit=4096)
    assert s.best == threshold and not s.capped
    assert len(calls) == len(set(calls)), "a batch was probed twice"
    assert len(calls) <= 2 * math.log2(threshold + 1) + 2
    assert [b for b, _ in s.probes] == calls
    assert all(ok == (b <= threshold) for b, ok in s.probes)


def test_none_fits():
    fits, calls = oracle(0)
    s = largest_batch(fits, limit=1000)
    assert s.best == 0 and calls == [1] and not s.capped


def test_limit_reached_is_capped():
    fits, _ = oracle(10**9)
    s = largest_batch(fits, limit=300)
    assert s.best == 300 and s.capped
    assert s.probes[-1] == (300, True)


@pytest.mark.parametrize(
    "threshold,step,expected",
    [(100, 16, 96), (2688, 16, 2688), (15, 16, 15), (5, 16, 5), (16, 16, 16)],
)
def test_step_granularity(threshold, step, expected):
    fits, calls = oracle(threshold)
    s = largest_batch(fits, limit=8192, step=step)
    assert s.best == expected
    above = [b for b in calls if b >= step]
    assert all(b % step == 0 for b in above)


def test_limit_below_step():
    fits, _ = oracle(50)
    assert largest_batch(fits, limit=10, step=16).best == 10


def test_bad_limit():
    with pytest.raises(ValueError):
        largest_batch(lambda b: True, limit=0)


def test_sampled_positions_one_per_stratum_and_not_all_aligned():
    """Table 1's estimate: one position from each equal part of P .. P + G - 1, and not all
    at one alignment (a kernel's speed may depend on the cache length modulo 64)."""
    from archlab.measure.throughput import _positions

    prompt, generate, n = 3072, 1024, 16
    pos = _positions(prompt, generate, n)
    assert len(pos) == n and pos == sorted(pos)
    assert [(p - prompt) * n // generate for p in pos] == list(range(n))
    assert len({p % 64 for p in pos}) > 4
    assert _positions(prompt, generate, n) == pos  # fixed seed: runs compare
    assert _positions(10, 3, 8) == [10, 11, 12]  # never more than G positions
