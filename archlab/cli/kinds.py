"""`archlab kinds`: the block kinds this installation knows (from the registry), with
their pattern symbols, backends and what they can do; `--markdown` prints the table of
docs/blocks.md."""

from __future__ import annotations

from archlab.cli.common import EXIT_OK, emit_json

HEADERS = ["kind", "symbol", "backends (auto order)", "parallel branch", "shares a cache", "what"]


def register(subparsers) -> None:
    """Add `kinds` to the `archlab` parser."""
    p = subparsers.add_parser("kinds", help="the block kinds, their symbols and backends")
    p.add_argument("--json", action="store_true")
    p.add_argument("--markdown", action="store_true", help="the table of docs/blocks.md")
    p.set_defaults(func=run)


def rows() -> list[list[str]]:
    """One row per kind, in the registry's order."""
    from archlab.blocks.registry import kinds

    return [
        [
            name,
            k.symbol or "(none)",
            ", ".join(k.backends)
            if "backend" in k.params.model_fields
            else "(its branches')"
            if k.composite
            else "(plain PyTorch)",
            "yes" if k.branchable else "no",
            "yes" if k.cache_geometry is not None else "no",
            k.summary,
        ]
        for name, k in kinds().items()
    ]


def markdown() -> str:
    """The kinds as a Markdown table."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for name, symbol, *rest in rows():
        symbol = f"`{symbol}`" if symbol != "(none)" else symbol
        lines.append("| " + " | ".join([f"`{name}`", symbol, *rest]) + " |")
    return "\n".join(lines)


def run(args) -> int:
    """Print the kinds (a table, JSON or Markdown)."""
    from archlab.report.tables import table

    if args.json:
        emit_json([dict(zip(HEADERS, r, strict=True)) for r in rows()])
    elif args.markdown:
        print(markdown())
    else:
        print(table(HEADERS, rows(), right=set()))
    return EXIT_OK
