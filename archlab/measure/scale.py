"""Scaled-down copies of a Plan, so that a measurement of a large spec can run on a CPU
(clearly labelled as such by the profiler).

Widths scale per kind (each kind's record has `scale`, `blocks/base.py` `scale_widths`).
Depth follows one rule for every spec (`kept_blocks`): the stack's repeating unit is found,
the first few ordinary units are kept and so is every unit that differs from them (a
patched unit, at its place), so that no kind, no patch and no cache source a kept block
reads is ever dropped."""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass

from archlab.blocks.registry import kind as block_kind
from archlab.lang.plan import Plan, PlannedBlock, make_plan

UNIT_SHARE = 0.75  # at least this share of the units must equal the ordinary one


@dataclass(frozen=True)
class Scale:
    """A scaled-down copy of a spec: `d_model`, `vocab_size`, and of the stack the first
    ordinary units of its repeating unit that give at least `min_blocks` blocks, plus every
    unit that differs from the ordinary one (0 keeps every block; see `kept_blocks`). Head
    sizes are kept (heads = d_model // head_dim, kv_heads and qk_groups shrunk to divide
    them), MLP widths scale with d_model, chunk sizes and windows are unchanged."""

    d_model: int = 256
    vocab_size: int = 4096
    min_blocks: int = 4


@dataclass(frozen=True)
class Depth:
    """Which blocks of a stack a scaled copy keeps (positions in `Plan.order()`), and why,
    in words (`text`: '8 of 48 blocks (2 of 12 units of R- L-, the patched unit kept)')."""

    keep: list[int]
    total: int
    text: str


def _key(b: PlannedBlock) -> tuple[str, str]:
    return b.kind, b.params.model_dump_json()


def repeating_unit(keys: list, share: float = UNIT_SHARE) -> tuple[int, tuple] | None:
    """The stack's repeating unit: among the periods p (at least 2 whole units of p blocks)
    where at least `share` of the whole units equal the most common one, the p with the
    fewest units that differ from it (the blocks after the last whole unit count as one),
    then the smallest; (p, that unit), or None when no p qualifies. (The fewest differing
    units first: in `(M- M- M- A-)x4` both p = 2, with 3/4 of its units `M-`, and p = 8
    qualify; p = 8 describes it, and keeps the model's mix of kinds.)"""
    n, best = len(keys), None
    for p in range(1, n // 2 + 1):
        m = n // p
        counts = Counter(tuple(keys[i * p : (i + 1) * p]) for i in range(m))
        unit, count = counts.most_common(1)[0]
        differ = m - count + (n % p > 0)  # blocks after the last unit count as one
        if count >= share * m and (best is None or differ < best[0]):
            best = (differ, p, unit)
    return None if best is None else (best[1], best[2])


def _symbol(b: PlannedBlock) -> str:
    """The block's pattern symbol; a parallel block as [A|M]; a kind without one as {kind}."""
    branches = getattr(b.params, "branches", None)
    if branches:
        return "[" + "|".join(block_kind(x.kind).symbol or x.kind for x in branches) + "]"
    return block_kind(b.kind).symbol or "{" + b.kind + "}"


def unit_text(blocks: list[PlannedBlock]) -> str:
    """'R- L-': the symbols of a unit, a space after each MLP that is followed by more."""
    symbols = [_symbol(b) for b in blocks]
    return "".join(
        s + (" " if s == "-" and i < len(symbols) - 1 else "") for i, s in enumerate(symbols)
    )


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def kept_blocks(plan: Plan, min_blocks: int) -> Depth:
    """The depth rule of every scaled copy. Find the stack's repeating unit
    (`repeating_unit`); keep the first r units equal to the most common ("ordinary") one,
    r the fewest with at least `min_blocks` blocks, every unit that differs from it (a
    patched unit, at its place), the blocks after the last whole unit, and every block whose
    cache a kept block or one of its branches reads (`share_cache`); all in stack order. No
    repeating unit, or `min_blocks` 0: every block."""
    order = plan.order()
    n = len(order)
    everything = list(range(n))
    if not min_blocks:
        return Depth(everything, n, f"{n} of {n} blocks")
    keys = [_key(b) for b in order]
    found = repeating_unit(keys)
    if found is None:
        return Depth(everything, n, f"{n} of {n} blocks (no repeating unit)")
    p, unit = found
    m = n // p
    ordinary = [i for i in range(m) if tuple(keys[i * p : (i + 1) * p]) == unit]
    patched = [i for i in range(m) if i not in set(ordinary)]
    r = min(len(ordinary), -(-min_blocks // p))
    units = sorted(ordinary[:r] + patched)
    keep = {j for i in units for j in range(i * p, (i + 1) * p)} | set(range(m * p, n))
    position = {b.index: j for j, b in enumerate(order)}
    sources = {position[block] for j in keep for block, _ in order[j].cache_reads().values()} - keep
    keep |= sources
    if {order[j].kind for j in keep} != {b.kind for b in order}:  # cannot happen; be safe
        return Depth(everything, n, f"{n} of {n} blocks")
    why = [
        f"{len(units)} of {m} units of {unit_text(order[ordinary[0] * p : (ordinary[0] + 1) * p])}"
    ]
    if patched:
        why.append(
            "the patched unit kept"
            if len(patched) == 1
            else f"the {len(patched)} patched units kept"
        )
    if n > m * p:
        why.append(f"the {_plural(n - m * p, 'block')} after the last unit kept")
    if sources:
        why.append(f"{_plural(len(sources), 'cache source')} of kept blocks kept")
    return Depth(sorted(keep), n, f"{len(keep)} of {n} blocks ({', '.join(why)})")


def stack_period(plan: Plan) -> int:
    """The shortest p such that the block list is its first p blocks repeated."""
    keys = [_key(b) for b in plan.order()]
    n = len(keys)
    return next(
        p for p in range(1, n + 1) if n % p == 0 and all(keys[i] == keys[i % p] for i in range(n))
    )


def _scale_params(kind: str, data: dict, d_old: int, d_new: int) -> dict:
    """A block's params at d_new, by its kind's rule (a parallel block's branches too)."""
    out = block_kind(kind).scale(data, d_old, d_new)
    if isinstance(out.get("branches"), list):
        out["branches"] = [_scale_params(x["kind"], x, d_old, d_new) for x in out["branches"]]
    return out


def scale_plan(plan: Plan, scale: Scale, dtype: str) -> tuple[Plan, str]:
    """A smaller copy of `plan` (see `Scale`, `kept_blocks`) in `dtype`, and a one-line
    description: 'd_model 256, heads 2x128, vocab 4096, 8 of 48 blocks (2 of 12 units of
    R- L-, the patched unit kept), float32'. Raises ValueError when a block cannot be
    scaled (its checks fail)."""
    m, order = plan.model, plan.order()
    d_new = min(scale.d_model, m.d_model)
    depth = kept_blocks(plan, scale.min_blocks)
    renumber = {order[j].index: i for i, j in enumerate(depth.keep)}
    blocks = []
    for i, j in enumerate(depth.keep):
        b = order[j]
        data = _scale_params(b.kind, b.params.model_dump(), m.d_model, d_new)
        for reader, (source, _) in b.cache_reads().items():  # sources keep their branches
            mine = data if reader is None else data["branches"][reader]
            mine["share_cache"] = renumber[source]
        params = type(b.params).model_validate(data)
        problems = block_kind(b.kind).check(params, d_new)
        if problems:
            raise ValueError(
                f"cannot scale block {b.index} ({b.kind}) of {plan.name} to "
                f"d_model {d_new}: {problems[0][0]}: {problems[0][1]}"
            )
        blocks.append(dataclasses.replace(b, index=i, params=params))
    vocab = min(scale.vocab_size, m.vocab_size)
    model = m.model_copy(update={"d_model": d_new, "vocab_size": vocab, "dtype": dtype})
    mixers = [x for b in blocks for x in (getattr(b.params, "branches", None) or [b.params])]
    heads = sorted(
        {
            f"{x.heads}x{x.head_dim}" if getattr(x, "head_dim", None) else f"{x.heads}"
            for x in mixers
            if getattr(x, "heads", None)
        }
    )
    text = (
        f"d_model {d_new}"
        + (f", heads {'/'.join(heads)}" if heads else "")
        + f", vocab {vocab}, {depth.text}, {dtype}"
    )
    return make_plan(plan.name, plan.description, plan.file, model, blocks), text


def with_dtype(plan: Plan, dtype: str) -> Plan:
    """The same plan, run (and costed) in `dtype`."""
    if plan.model.dtype == dtype:
        return plan
    return dataclasses.replace(plan, model=plan.model.model_copy(update={"dtype": dtype}))
