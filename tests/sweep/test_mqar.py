"""MQAR sequences as Zoology defines them: keys, then values, each key queried once at an
even offset of the query region, the value as the target there and nowhere else."""

from __future__ import annotations

import pytest
import torch

from archlab.measure.mqar import IGNORE, MQAR, generator, make_batch


@pytest.mark.parametrize("task", [MQAR(64, 4, 32), MQAR(8192, 16, 256), MQAR(64, 8, 32)])
def test_sequences_follow_the_definition(task):
    x, y = make_batch(task, 200, generator(3))
    P, T, half = task.pairs, task.seq, task.vocab // 2
    assert x.shape == y.shape == (200, T) and x.dtype == y.dtype == torch.int64
    assert int(x.min()) >= 0 and int(x.max()) < task.vocab
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        keys, values = row_x[0 : 2 * P : 2], row_x[1 : 2 * P : 2]
        assert len(set(keys)) == P and all(1 <= k < half for k in keys)
        assert len(set(values)) == P and all(half <= v < task.vocab for v in values)
        assert all(t == IGNORE for t in row_y[: 2 * P])
        queries = [i for i, t in enumerate(row_y) if t != IGNORE]
        assert len(queries) == P and all((i - 2 * P) % 2 == 0 for i in queries)
        answer = dict(zip(keys, values, strict=True))
        assert sorted(row_x[i] for i in queries) == sorted(keys)
        assert all(row_y[i] == answer[row_x[i]] for i in queries)


def test_seeded_and_filler():
    task = MQAR(64, 4, 32, random_non_queries=False)
    a = make_batch(task, 8, generator(1))
    b = make_batch(task, 8, generator(1))
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0], make_batch(task, 8, generator(2))[0])
    x, y = a
    filler = (y == IGNORE) & (torch.arange(32) >= 8)
    assert bool((x[filler] == 0).all())


def test_power_law_puts_queries_early():
    x, y = make_batch(MQAR(8192, 4, 256), 400, generator(0))
    offsets = ((y != IGNORE).nonzero()[:, 1] - 8).float()
    assert offsets.median() < 0.25 * (256 - 8)  # a = 0.01: most gaps are short


def test_problems():
    assert MQAR(64, 4, 32).problems() == []
    assert MQAR(64, 4, 33).problems() and MQAR(64, 9, 32).problems()
    assert MQAR(8, 4, 32).problems()  # 3 keys in [1, 4)
    assert MQAR(64, 4, 32).chance == 0.25
    with pytest.raises(ValueError):
        make_batch(MQAR(64, 9, 32), 1, generator(0))
