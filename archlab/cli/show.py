"""`archlab show`: the expanded stack, one row per block, with parameters and totals."""

from __future__ import annotations

from archlab.cli.common import EXIT_OK, add_extends_root, emit_json, existing
from archlab.lang.errors import UsageError


def register(subparsers) -> None:
    """Add the command to the `archlab` parser."""
    p = subparsers.add_parser("show", help="the expanded stack, one row per block, with totals")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--graph", metavar="FILE", help="draw the plan graph (.svg or .png)")
    add_extends_root(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from archlab import compile
    from archlab.cost.analytic import block_cost, norm_params, param_count
    from archlab.report.graph import write_graph
    from archlab.report.tables import human, table

    plan = compile(existing(args.spec))
    m = plan.model
    rows = []
    for b in plan.order():
        n = block_cost(b, m, 1, 1).params  # the mixer and its norm
        rows.append(
            {
                "index": b.index,
                "kind": b.kind,
                "params": b.summary(),  # the params that differ from their defaults
                "resolved": b.resolved(),  # every param with its value
                "parameters": n,
            }
        )
    total = param_count(plan)
    if args.graph:
        try:
            write_graph(plan, args.graph)
        except ValueError as e:
            raise UsageError(str(e)) from None
        except OSError as e:
            raise UsageError(f"cannot write {args.graph}: {e.strerror or e}") from None
    if args.json:
        emit_json(
            {
                "name": plan.name,
                "file": plan.file,
                "model": m.model_dump(),
                "blocks": rows,
                "kinds": plan.kinds(),
                "parameters": total,
            }
        )
        return EXIT_OK
    print(
        f"{plan.name}: {len(plan.blocks)} blocks, d_model {m.d_model}, vocab {m.vocab_size}, "
        f"{m.dtype}"
    )
    body = [
        [
            r["index"],
            r["kind"],
            ", ".join(f"{k}={v}" for k, v in r["params"].items()),
            f"{r['parameters']:,}",
        ]
        for r in rows
    ]
    print(table(["#", "kind", "params", "parameters"], body, right={0, 3}))
    embed = m.vocab_size * m.d_model
    print(
        f"\nembedding {embed:,}  lm_head {0 if m.tie_embeddings else embed:,}"
        f"{' (tied)' if m.tie_embeddings else ''}  final norm {norm_params(m):,}"
    )
    kinds = ", ".join(f"{k} x{v}" for k, v in plan.kinds().items())
    print(f"total parameters: {total:,} ({human(total)})   blocks: {kinds}")
    if args.graph:
        print(f"graph written to {args.graph}")
    return EXIT_OK
