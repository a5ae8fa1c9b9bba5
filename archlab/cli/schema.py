"""`archlab schema`: the JSON Schema of the spec language, for editors."""

from __future__ import annotations

from archlab.cli.common import EXIT_OK, emit_json


def register(subparsers) -> None:
    """Add the command to the `archlab` parser."""
    p = subparsers.add_parser("schema", help="JSON Schema of the spec language (for editors)")
    p.add_argument("--json", action="store_true", help="(the schema is always JSON)")
    p.set_defaults(func=run)


def run(args) -> int:
    from archlab.lang.spec import json_schema

    emit_json(json_schema())
    return EXIT_OK
