"""The `archlab` command: validate, show, build, cost, profile, compare, sweep, probe,
schema, kinds (each with `--json`). Each command is one module here with
`register(subparsers)` and `run(args)`.

Exit status: 0 success, 1 invalid spec (or a requested backend that cannot run),
2 usage errors (unknown option, missing file), 3 an internal error. With `--json`, every
error is JSON on stdout too: `{"error": ...}` (an invalid spec: `{"valid": false,
"errors": [...]}`).
"""

from __future__ import annotations

import argparse
import os
import sys

from archlab.cli import (
    build,
    compare,
    cost,
    kinds,
    probe,
    profile,
    schema,
    show,
    sweep,
    validate,
)
from archlab.cli.common import (
    EXIT_INTERNAL,
    EXIT_INVALID,
    EXIT_OK,
    EXIT_USAGE,
    did_you_mean,
    emit_json,
    extends_root_dirs,
)
from archlab.lang.errors import ModelTooLarge, SpecError, UsageError

COMMANDS = (
    validate,
    show,
    build,
    cost,
    profile,
    compare,
    sweep,
    probe,
    schema,
    kinds,
)  # in the help's order


class Parser(argparse.ArgumentParser):
    """argparse, whose usage errors are JSON on stdout when `--json` was asked for, and
    whose unknown choices (a command, a --dtype) come with a did-you-mean."""

    json_errors = False

    def _check_value(self, action, value):
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(map(str, action.choices))
            message = f"invalid choice: {value!r} (choose from {choices})"
            raise argparse.ArgumentError(action, message + did_you_mean(value, action.choices))
        return super()._check_value(action, value)

    def error(self, message: str):
        if Parser.json_errors:
            emit_json({"error": message, "usage": self.format_usage().strip()})
            raise SystemExit(EXIT_USAGE)
        super().error(message)


def make_parser() -> argparse.ArgumentParser:
    """The `archlab` parser with every command registered."""
    parser = Parser(prog="archlab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def _fail(args, message: str, status: int, label: str = "error") -> int:
    """Print `archlab: label: message` on stderr, or {"error": message} with --json."""
    if getattr(args, "json", False):
        emit_json({"error": message})
    else:
        print(f"archlab: {label}: {message}", file=sys.stderr)
    return status


def main(argv: list[str] | None = None) -> int:
    from archlab.lang.loader import extends_roots

    argv = sys.argv[1:] if argv is None else list(argv)
    Parser.json_errors = "--json" in argv
    try:
        args = make_parser().parse_args(argv)
    finally:
        Parser.json_errors = False
    try:
        with extends_roots(extends_root_dirs(args)):
            return args.func(args)
    except UsageError as e:
        return _fail(args, str(e), EXIT_USAGE)
    except ModelTooLarge as e:
        return _fail(args, str(e), EXIT_INVALID)
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
            return _fail(args, str(e), EXIT_INVALID)
        if os.environ.get("ARCHLAB_DEBUG"):
            raise
        return _fail(
            args,
            f"{type(e).__name__}: {e}\n"
            "(set ARCHLAB_DEBUG=1 to see the traceback; please report it)",
            EXIT_INTERNAL,
            label="internal error",
        )
