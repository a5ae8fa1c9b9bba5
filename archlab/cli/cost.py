"""`archlab cost SPEC... [--seq 4k,32k] [--batch B] [--by-kind] [--by-block] [--crossover]
[--train-memory [--shards N] [--checkpoint]] [--json]`: the analytic cost tables (docs/cost.md
explains every figure)."""

from __future__ import annotations

import json
from argparse import Namespace

from archlab.cli.common import (
    add_extends_root,
    existing,
    length_warnings,
    parse_lengths,
    report_warnings,
)
from archlab.cost.analytic import METRICS, Cost, KindCost, spec_cost
from archlab.cost.crossover import CrossoverError, CrossoverGaveUp, Run, crossovers
from archlab.cost.memory import TrainMemory, train_memory
from archlab.lang.errors import UsageError
from archlab.lang.plan import Plan
from archlab.report.tables import human, table

CROSSOVER_METRICS = {
    "train_flops": "train FLOPs",
    "cache_bytes": "cache bytes",
    "decode_bytes": "decode bytes",
}
assert set(CROSSOVER_METRICS) <= set(METRICS)


def flops(n: float) -> str:
    return human(n, "FLOP")


def nbytes(n: float) -> str:
    return human(n, "B", 1024)


def length(T: int) -> str:
    """4096 -> '4K', 131072 -> '128K', 1000 -> '1000'."""
    for unit, size in (("M", 1 << 20), ("K", 1 << 10)):
        if T % size == 0:
            return f"{T // size}{unit}"
    return str(T)


# (label, value from a Cost, formatter); per-token rows divide by the tokens they make
FIGURES = [
    ("fwd FLOPs", lambda c: c.fwd_flops, flops),
    ("fwd FLOPs / token", lambda c: c.fwd_flops / c.tokens, flops),
    ("fwd non-matmul FLOPs", lambda c: c.fwd_other_flops, flops),
    ("train FLOPs", lambda c: c.train_flops, flops),
    ("train FLOPs / token", lambda c: c.train_flops / c.tokens, flops),
    ("decode FLOPs / token", lambda c: c.decode_flops / c.batch, flops),
    ("decode bytes / step", lambda c: c.decode_bytes, nbytes),
    ("decode bytes / token", lambda c: c.decode_bytes / c.batch, nbytes),
    ("cache bytes", lambda c: c.cache_bytes, nbytes),
]


def _ratio(value: float, base: float) -> str:
    if base == 0:
        return "" if value == 0 else " (inf)"
    return f" ({value / base:.3g}x)"


def _one_spec_table(costs: list[Cost]) -> str:
    rows = [[label, *(fmt(get(c)) for c in costs)] for label, get, fmt in FIGURES]
    return table(
        ["figure", *(f"T={length(c.seq_len)}" for c in costs)],
        rows,
        right=set(range(1, len(costs) + 1)),
    )


def _side_by_side(names: list[str], costs: list[Cost]) -> str:
    """One length, every spec a column; values after the first carry their ratio to it."""
    rows = [
        [
            "parameters",
            *(
                human(c.params) + (_ratio(c.params, costs[0].params) if i else "")
                for i, c in enumerate(costs)
            ),
        ]
    ]
    for label, get, fmt in FIGURES:
        base = get(costs[0])
        rows.append(
            [
                label,
                *(fmt(get(c)) + (_ratio(get(c), base) if i else "") for i, c in enumerate(costs)),
            ]
        )
    return table(["figure", *names], rows, right=set(range(1, len(names) + 1)))


def _breakdown(rows_in: list[tuple[str, str, KindCost]], total: Cost) -> str:
    def row(a: str, b: str, k: KindCost) -> list[str]:
        return [
            a,
            b,
            str(k.blocks),
            human(k.params),
            flops(k.fwd_flops),
            flops(k.fwd_other_flops),
            flops(k.train_flops),
            flops(k.decode_flops),
            nbytes(k.cache_bytes),
            nbytes(k.decode_bytes),
        ]

    tot = KindCost(
        blocks=len(total.by_block),
        params=total.params,
        active_params=total.active_params,
        fwd_flops=total.fwd_flops,
        fwd_other_flops=total.fwd_other_flops,
        cache_bytes=total.cache_bytes,
        decode_flops=total.decode_flops,
        decode_other_flops=total.decode_other_flops,
        decode_bytes=total.decode_bytes,
    )
    body = [row(*r) for r in rows_in] + [row("total", "", tot)]
    return table(
        [
            "",
            "kind",
            "blocks",
            "params",
            "fwd FLOPs",
            "fwd other",
            "train FLOPs",
            "decode FLOPs",
            "cache",
            "decode bytes",
        ],
        body,
    )


def _by_kind(c: Cost) -> str:
    rows = [(k, "", v) for k, v in c.by_kind.items()]
    return _breakdown([*rows, ("embedding+head", "", c.head)], c)


def _by_block(plan: Plan, c: Cost) -> str:
    rows = [(str(b.index), b.kind, k) for b, k in zip(plan.order(), c.by_block, strict=True)]
    return _breakdown([*rows, ("embedding+head", "", c.head)], c)


def _memory_table(mems: list[TrainMemory]) -> str:
    parts = [
        ("weights", "weights"),
        ("gradients", "gradients"),
        ("fp32 master weights", "master_weights"),
        ("AdamW state", "optimizer"),
        ("activations", "activations"),
    ]
    if mems[0].shards > 1:
        parts += [
            ("all-gathered unit (largest)", "gathered"),
            ("its grads before reduce-scatter", "gathered_gradients"),
        ]
    parts.append(("total", "total"))
    rows = [[label, *(nbytes(getattr(m, attr)) for m in mems)] for label, attr in parts]
    shards = mems[0].shards
    head = f"per GPU of {shards} (estimate)" if shards > 1 else "training memory (estimate)"
    return table(
        [head, *(f"T={length(m.seq_len)}" for m in mems)],
        rows,
        right=set(range(1, len(mems) + 1)),
    )


def _span(r: Run) -> str:
    if r.end is None:
        return f"T >= {r.start:,}"
    return f"T = {r.start:,}" if r.start == r.end else f"T {r.start:,}..{r.end:,}"


def describe(runs: list[Run], a: str, b: str) -> tuple[str, str]:
    """(when `a` is cheaper than `b`: 'always' / 'never' / 'T >= X' / ranges, the runs)."""
    who = {-1: f"{a} cheaper", 0: "equal", 1: f"{b} cheaper", 2: "depends on T mod chunk"}
    detail = "; ".join(f"{_span(r)}: {who[r.sign]}" for r in runs)
    cheaper = [r for r in runs if r.sign == -1]
    if len(runs) == 1 or not cheaper:
        when = "always" if runs == cheaper else "never"
    elif runs[-1].sign == -1:
        when = f"from T = {runs[-1].start:,}"
    else:
        when = "only " + ", ".join(_span(r) for r in cheaper)
    return when, detail


def _crossover_results(plans: list[Plan], names: list[str], batch: int) -> list[dict]:
    out = []
    for i in range(len(plans)):
        for j in range(i + 1, len(plans)):
            for metric, label in CROSSOVER_METRICS.items():
                entry = {"a": names[i], "b": names[j], "metric": metric, "label": label}
                try:
                    runs = crossovers(plans[i], plans[j], metric, batch)
                except CrossoverError as e:
                    gave_up = isinstance(e, CrossoverGaveUp)
                    out.append({**entry, "error": str(e), "gave_up": gave_up})
                    continue
                when, detail = describe(runs, names[i], names[j])
                cheaper = {-1: names[i], 0: "equal", 1: names[j], 2: "mixed"}
                entry.update(
                    a_cheaper=when,
                    detail=detail,
                    runs=[
                        {"start": r.start, "end": r.end, "cheaper": cheaper[r.sign]} for r in runs
                    ],
                )
                out.append(entry)
    return out


def _names(plans: list[Plan], files: list[str]) -> list[str]:
    names = [p.name for p in plans]
    return [f if names.count(n) > 1 else n for n, f in zip(names, files, strict=True)]


def register(subparsers) -> None:
    """Add `cost` to the `archlab` parser."""
    p = subparsers.add_parser("cost", help="analytic parameters, FLOPs and cache memory")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument(
        "--seq",
        default=None,
        help="sequence lengths, e.g. 4k,32k,128k (default: each spec's max_seq_len)",
    )
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--by-kind", action="store_true")
    p.add_argument("--by-block", action="store_true")
    p.add_argument(
        "--crossover",
        action="store_true",
        help="sequence lengths where one spec becomes cheaper than another",
    )
    p.add_argument(
        "--train-memory",
        action="store_true",
        help="estimate training memory (weights, grads, AdamW, activations)",
    )
    p.add_argument(
        "--shards",
        type=int,
        default=1,
        metavar="N",
        help="--train-memory per GPU, sharded over N GPUs with FSDP2 (--batch is per GPU)",
    )
    p.add_argument(
        "--checkpoint",
        action="store_true",
        help="--train-memory with activation checkpointing of every residual block",
    )
    add_extends_root(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: Namespace) -> int:
    """`archlab cost`: the tables (or JSON) of every spec at every length. Returns the
    exit status."""
    from archlab import compile

    for spec in args.specs:
        existing(spec)

    specs = list(args.specs)
    batch = getattr(args, "batch", 1)
    if batch is None or batch < 1:
        raise UsageError(f"--batch must be >= 1 (got {batch})")
    if getattr(args, "crossover", False) and len(specs) < 2:
        raise UsageError("--crossover compares specs: give two or more")
    shards = getattr(args, "shards", 1)
    if shards is None or shards < 1:
        raise UsageError(f"--shards must be >= 1 (got {shards})")
    checkpoint = getattr(args, "checkpoint", False)
    if (shards > 1 or checkpoint) and not getattr(args, "train_memory", False):
        raise UsageError("--shards and --checkpoint shape the training memory: add --train-memory")
    plans = [compile(s) for s in specs]
    seq = getattr(args, "seq", None)
    lengths = parse_lengths(seq) if seq else sorted({p.model.max_seq_len for p in plans})
    if len(lengths) != len(set(lengths)):
        lengths = sorted(set(lengths))
    warnings = [w for p in plans for w in (*p.warnings, *length_warnings(p, lengths))]
    warned = report_warnings(warnings, args)
    names = _names(plans, specs)
    costs = [[spec_cost(p, batch, T) for T in lengths] for p in plans]
    mems = (
        [
            [train_memory(p, batch, T, shards=shards, checkpoint=checkpoint) for T in lengths]
            for p in plans
        ]
        if getattr(args, "train_memory", False)
        else None
    )
    cross = _crossover_results(plans, names, batch) if getattr(args, "crossover", False) else None
    if getattr(args, "json", False):
        doc = _json(args, plans, names, specs, lengths, costs, mems, cross)
        doc["warnings"] = warned
        print(json.dumps(doc, indent=2))
        return 0
    _print_text(args, plans, names, costs, mems, cross)
    return 0


def _json(args, plans, names, files, lengths, costs, mems, cross) -> dict:
    specs = []
    for n, (p, f, cs) in enumerate(zip(plans, files, costs, strict=True)):
        rows = []
        for c in cs:
            d = c.to_dict()
            d["tokens"] = c.tokens
            if not args.by_kind:
                d.pop("by_kind")
            if not args.by_block:
                d.pop("by_block")
            rows.append(d)
        entry = {
            "name": names[n],
            "file": f,
            "params": cs[0].params,
            "dtype": p.model.dtype,
            "costs": rows,
        }
        if mems is not None:
            entry["train_memory"] = [m.to_dict() for m in mems[n]]
        specs.append(entry)
    out = {"batch": costs[0][0].batch, "seq_lens": lengths, "specs": specs}
    if cross is not None:
        out["crossovers"] = cross
    return out


def _print_text(args, plans, names, costs, mems, cross) -> None:
    batch = costs[0][0].batch
    blocks: list[str] = []
    for p, name, cs in zip(plans, names, costs, strict=True):
        blocks.append(
            f"{name}: {cs[0].params:,} parameters ({human(cs[0].params)}), "
            f"{len(p.blocks)} blocks, {p.model.dtype}, batch {batch}"
        )
    if len(plans) == 1:
        print(blocks[0])
        print(_one_spec_table(costs[0]))
    else:
        print("\n".join(blocks))
        for k, c0 in enumerate(costs[0]):
            print(
                f"\nT = {c0.seq_len:,} ({length(c0.seq_len)}), batch {batch}; ratios to {names[0]}"
            )
            print(_side_by_side(names, [cs[k] for cs in costs]))
    for p, name, cs in zip(plans, names, costs, strict=True):
        for c in cs:
            if args.by_kind:
                print(f"\n{name}, by kind, T = {c.seq_len:,}, batch {batch}")
                print(_by_kind(c))
            if args.by_block:
                print(f"\n{name}, by block, T = {c.seq_len:,}, batch {batch}")
                print(_by_block(p, c))
    if mems is not None:
        for name, ms in zip(names, mems, strict=True):
            each = f" per GPU, sharded over {ms[0].shards} (FSDP2)" if ms[0].shards > 1 else ""
            ck = ", activation checkpointing" if ms[0].checkpoint else ""
            print(f"\n{name}: training memory at batch {batch}{each}{ck} (an ESTIMATE)")
            print(_memory_table(ms))
        print("assumptions: " + "; ".join(mems[0][0].assumptions))
    if cross is not None:
        print(
            "\ncrossovers (exact, over every T >= 1; batch "
            f"{batch}): where the first spec is cheaper than the second"
        )
        rows = [
            [
                f"{c['a']} vs {c['b']}",
                c["label"],
                c.get("a_cheaper", "gave up" if c.get("gave_up") else "?"),
                c.get("detail", c.get("error", "")),
            ]
            for c in cross
        ]
        print(table(["pair", "figure", "first cheaper", "runs"], rows, right=set()))
    print(
        "\nFLOPs: matmul-type, 2 per multiply-add (non-matmul listed apart); "
        "train = 3 x fwd; decode at position T; see docs/cost.md"
    )
