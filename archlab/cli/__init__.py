"""The `archlab` command: validate, show, build, cost, profile, compare, schema, kinds (each with
`--json`). Each command is one module here with `register(subparsers)` and `run(args)`.

Exit status: 0 success, 1 invalid spec (or a requested backend that cannot run),
2 usage errors (unknown option, missing file), 3 an internal error.
"""

from __future__ import annotations

import argparse
import os
import sys

from archlab.cli import build, compare, cost, kinds, profile, schema, show, validate
from archlab.cli.common import EXIT_INTERNAL, EXIT_INVALID, EXIT_USAGE, emit_json
from archlab.lang.errors import SpecError, UsageError

COMMANDS = (validate, show, build, cost, profile, compare, schema, kinds)  # in the help's order


def make_parser() -> argparse.ArgumentParser:
    """The `archlab` parser with every command registered."""
    parser = argparse.ArgumentParser(prog="archlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"archlab: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except SpecError as e:
        if getattr(args, "json", False):
            emit_json({"valid": False, "errors": [x.to_dict() for x in e.errors]})
        else:
            print(str(e), file=sys.stderr)
        return EXIT_INVALID
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `archlab ... | head`: the reader left; end quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_OK
    except Exception as e:  # a bug, not bad input: say so briefly unless debugging
        from archlab.blocks.base import BackendUnavailable

        if isinstance(e, BackendUnavailable):
            print(f"archlab: error: {e}", file=sys.stderr)
            return EXIT_INVALID
        if os.environ.get("ARCHLAB_DEBUG"):
            raise
        print(
            f"archlab: internal error: {type(e).__name__}: {e}\n"
            "(set ARCHLAB_DEBUG=1 to see the traceback; please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL

