"""Multi-query associative recall (MQAR), as the Zoology paper defines it (Arora et al.,
2023, "Zoology: Measuring and Improving Recall in Efficient Language Models",
arXiv:2312.04927), generated on the fly from a seed.

A sequence of T tokens over a vocabulary of V holds `pairs` key-value pairs, then the
queries:

    k1 v1 k2 v2 ... kP vP | . . k2 . . . . k1 . . . kP . .
                            the query region (T - 2P tokens)

- keys are drawn from [1, V/2) and values from [V/2, V), without repeats in a sequence;
- each key is queried exactly once, at an even offset of the query region; the offset is
  drawn without replacement with the power law p(gap) ~ gap^(a - 1), gap = 1, 2, ...,
  a = `power_a` (0.01: queries cluster near the start of the region, as repeated
  bigrams in text do; 1.0 is uniform);
- every other token of the query region is a random token of the whole vocabulary
  (`random_non_queries`; otherwise 0);
- the target at a query key's position is its value (the next token); every other
  position is ignored (label -100). Recall accuracy is the share of query positions
  where the model's most likely next token is the value.

Constraints, as in Zoology: T even, 4 P <= T (room for P queries at even offsets), and
P <= V/2 - 1 distinct keys. (Zoology also asks V > T; nothing here needs it.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE = -100  # the label of positions that are not queries


@dataclass(frozen=True)
class MQAR:
    """The task's shape: vocabulary, key-value pairs per sequence, sequence length."""

    vocab: int = 64
    pairs: int = 4
    seq: int = 64
    power_a: float = 0.01
    random_non_queries: bool = True

    def problems(self) -> list[str]:
        """Why these settings cannot make sequences (empty when they can)."""
        out = []
        if self.pairs < 1:
            out.append(f"pairs must be >= 1 (got {self.pairs})")
        if self.seq < 2 or self.seq % 2:
            out.append(f"the sequence length must be even and >= 2 (got {self.seq})")
        if 4 * self.pairs > self.seq:
            out.append(
                f"{self.pairs} pairs need a sequence of at least {4 * self.pairs} tokens "
                f"(2 per pair, then a query at every other token; got {self.seq})"
            )
        if self.pairs > self.vocab // 2 - 1:
            out.append(
                f"a vocabulary of {self.vocab} has {max(0, self.vocab // 2 - 1)} keys, fewer "
                f"than {self.pairs} pairs (keys are [1, V/2), values [V/2, V))"
            )
        if not self.power_a > 0:
            out.append(f"power_a must be > 0 (got {self.power_a})")
        return out

    @property
    def chance(self) -> float:
        """Accuracy of guessing one of the sequence's values at random (1 / pairs): a model
        that has learnt which tokens are values but recalls nothing."""
        return 1.0 / self.pairs

    @property
    def vocab_chance(self) -> float:
        """Accuracy of guessing any value token at random (2 / V)."""
        return 1.0 / (self.vocab - self.vocab // 2)


def _distinct(gen: torch.Generator, rows: int, low: int, high: int, k: int) -> torch.Tensor:
    """`rows` x `k` distinct integers of [low, high) per row, uniformly."""
    scores = torch.rand(rows, high - low, generator=gen, device=gen.device)
    # the k smallest scores, in increasing order: argsort(scores)[:, :k], without the sort
    return scores.topk(k, dim=1, largest=False, sorted=True).indices + low


def make_batch(task: MQAR, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` sequences: inputs [n, T] and labels [n, T] (int64, on `gen`'s device), drawn
    from `gen`."""
    problems = task.problems()
    if problems:
        raise ValueError("; ".join(problems))
    V, P, T = task.vocab, task.pairs, task.seq
    half = V // 2
    keys = _distinct(gen, n, 1, half, P)
    values = _distinct(gen, n, half, V, P)
    context = 2 * P
    device = gen.device
    inputs = torch.zeros(n, T, dtype=torch.int64, device=device)
    inputs[:, 0:context:2], inputs[:, 1:context:2] = keys, values
    slots = (T - context) // 2  # query places: every other token of the query region
    gaps = torch.arange(1, slots + 1, dtype=torch.float64, device=device)
    weights = (task.power_a * gaps ** (task.power_a - 1)).expand(n, slots)
    where = context + 2 * torch.multinomial(weights, P, replacement=False, generator=gen)
    inputs.scatter_(1, where, keys)
    labels = torch.full((n, T), IGNORE, dtype=torch.int64, device=device)
    labels.scatter_(1, where, values)
    if task.random_non_queries:
        filler = torch.randint(V, (n, T), generator=gen, device=device)
        inputs = torch.where(inputs == 0, filler, inputs)  # no host sync, unlike a mask index
    return inputs, labels


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` seeded with `seed`: sequences are made where it lives (on a
    GPU the data then costs the training loop next to nothing; a seed gives different
    sequences on the CPU and on CUDA, each reproducible)."""
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen
