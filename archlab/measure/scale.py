"""Scaled-down copies of a Plan, so that a measurement of a large spec can run on a CPU
(clearly labelled as such by the profiler)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from archlab.blocks.registry import kind as block_kind
from archlab.lang.plan import Plan, make_plan


@dataclass(frozen=True)
class Scale:
    """A scaled-down copy of a spec: `d_model`, `vocab_size`, at least `min_blocks`
    blocks as whole repeats of the stack's period (at most `max_blocks`, else the first
    `min_blocks`; 0 keeps every block). Head sizes are kept (heads = d_model // head_dim,
    kv_heads and qk_groups shrunk to divide them), MLP widths scale with d_model, chunk
    sizes and windows are unchanged. A spec with cache sharing keeps all its blocks (a
    prefix could hold only the sources)."""

    d_model: int = 256
    vocab_size: int = 4096
    min_blocks: int = 4
    max_blocks: int = 16


def stack_period(plan: Plan) -> int:
    """The shortest p such that the block list is its first p blocks repeated."""
    keys = [(b.kind, b.params) for b in plan.order()]
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
    """A smaller copy of `plan` (see `Scale`) in `dtype`, and a one-line description.
    Raises ValueError when a block cannot be scaled (its checks fail)."""
    m, order = plan.model, plan.order()
    d_new, n = min(scale.d_model, m.d_model), len(order)
    keep = n
    shares = any(b.shares_cache_of is not None for b in order)
    if scale.min_blocks and not shares:  # a prefix could drop every block that shares a cache
        p = stack_period(plan)
        keep = min(n, p * -(-scale.min_blocks // p))
        keep = keep if keep <= scale.max_blocks else min(n, scale.min_blocks)
    blocks = []
    for i, b in enumerate(order[:keep]):
        params = type(b.params).model_validate(
            _scale_params(b.kind, b.params.model_dump(), m.d_model, d_new)
        )
        problems = block_kind(b.kind).check(params, d_new)
        if problems:
            raise ValueError(
                f"cannot scale block {b.index} ({b.kind}) of {plan.name} to "
                f"d_model {d_new}: {problems[0][0]}: {problems[0][1]}"
            )
        blocks.append(dataclasses.replace(b, index=i, params=params))
    vocab = min(scale.vocab_size, m.vocab_size)
    model = m.model_copy(update={"d_model": d_new, "vocab_size": vocab, "dtype": dtype})
    heads = sorted(
        {
            f"{b.params.heads}x{b.params.head_dim}"
            for b in blocks
            if getattr(b.params, "heads", None)
        }
    )
    text = (
        f"d_model {d_new}"
        + (f", heads {'/'.join(heads)}" if heads else "")
        + f", vocab {vocab}, {keep} of {n} blocks, {dtype}"
    )
    return make_plan(plan.name, plan.description, plan.file, model, blocks), text


def with_dtype(plan: Plan, dtype: str) -> Plan:
    """The same plan, run (and costed) in `dtype`."""
    if plan.model.dtype == dtype:
        return plan
    return dataclasses.replace(plan, model=plan.model.model_copy(update={"dtype": dtype}))
