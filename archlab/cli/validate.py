"""`archlab validate`: every error of each spec, one per line, with its position."""

from __future__ import annotations

import sys

from archlab.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    add_extends_root,
    emit_json,
    existing,
    report_warnings,
)
from archlab.lang.errors import SpecError


def register(subparsers) -> None:
    """Add the command to the `archlab` parser."""
    p = subparsers.add_parser("validate", help="check specs; print every error with its position")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    add_extends_root(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from archlab import compile

    results, status = [], EXIT_OK
    for spec in args.specs:
        existing(spec)
        try:
            plan = compile(spec)
            warnings = report_warnings(plan.warnings, args)
            results.append(
                {
                    "file": spec,
                    "valid": True,
                    "blocks": len(plan.blocks),
                    "errors": [],
                    "warnings": warnings,
                }
            )
            if not args.json:
                print(f"{spec}: ok ({len(plan.blocks)} blocks)")
        except SpecError as e:
            status = EXIT_INVALID
            results.append(
                {
                    "file": spec,
                    "valid": False,
                    "errors": [x.to_dict() for x in e.errors],
                    "warnings": [],
                }
            )
            if not args.json:
                print(str(e), file=sys.stderr)
    if args.json:
        emit_json(results)
    return status
