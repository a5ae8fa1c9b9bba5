"""What every command shares: exit statuses, file checks, JSON output, lengths, the
`--extends-root` option, warnings, and did-you-mean for option values."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from archlab.lang.errors import SpecIssue, UsageError
from archlab.lang.stack import suggest

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
_LENGTH = re.compile(r"([0-9]+)([km]?)", re.ASCII)  # ASCII digits only: not '４'


def existing(path: str) -> str:
    """`path` if it is a file, else UsageError."""
    try:
        p = Path(path)
        is_dir, is_file, exists = p.is_dir(), p.is_file(), p.exists()
    except (OSError, ValueError) as e:  # a NUL byte, a name too long
        raise UsageError(f"cannot use {path!r} as a spec file: {e}") from None
    if is_dir:
        raise UsageError(f"{path} is a directory, not a spec file")
    if not is_file:
        raise UsageError(f"{path} is not a regular file" if exists else f"no such file: {path}")
    return path


def emit_json(obj) -> None:
    """Print `obj` as indented JSON on stdout."""
    print(json.dumps(obj, indent=2, default=str))


def parse_lengths(text: str) -> list[int]:
    """'4k,32k,128k' -> [4096, 32768, 131072]."""
    out = []
    for part in text.split(","):
        match = _LENGTH.fullmatch(part.strip().lower())
        if not match or len(match[1]) > 12 or int(match[1]) < 1:
            raise UsageError(f"bad length {part.strip()!r} in {text!r} (use e.g. 4096 or 4k,32k)")
        out.append(int(match[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[match[2]])
    return out


# ---- --extends-root ----------------------------------------------------------------------


def add_extends_root(p) -> None:
    """The `--extends-root DIR` option (repeatable) of the commands that read specs."""
    p.add_argument(
        "--extends-root",
        action="append",
        default=[],
        metavar="DIR",
        help="a folder that `extends` may read from, besides the spec's own folder and the "
        "working folder (repeatable)",
    )


def extends_root_dirs(args) -> list[str]:
    """The folders given with --extends-root, each checked to be a folder."""
    dirs = list(getattr(args, "extends_root", None) or [])
    for d in dirs:
        try:
            ok = Path(d).is_dir()
        except (OSError, ValueError):
            ok = False
        if not ok:
            raise UsageError(f"--extends-root {d}: not a folder")
    return dirs


# ---- warnings ------------------------------------------------------------------------------


def report_warnings(warnings: list[SpecIssue], args) -> list[dict]:
    """Print each warning on stderr (unless --json) and return them as JSON-ready dicts."""
    if not getattr(args, "json", False):
        for w in warnings:
            print(w.warning(), file=sys.stderr)
    return [w.to_dict() for w in warnings]


def length_warnings(plan, lengths: list[int], option: str = "--seq") -> list[SpecIssue]:
    """A warning for each length past the spec's model.max_seq_len."""
    m = plan.model.max_seq_len
    past = [T for T in lengths if T > m]
    if not past:
        return []
    shown = ", ".join(f"{T:,}" for T in past)
    return [
        plan.issue(
            "model.max_seq_len",
            f"{option} {shown} is longer than model.max_seq_len ({m:,}), the length "
            "the model is built for",
        )
    ]


# ---- did-you-mean ----------------------------------------------------------------------------


def did_you_mean(value: str, choices) -> str:
    """'; did you mean 'train'?' for the closest choice, or '' (the spec language's rule)."""
    return suggest(value, choices)


def check_modes(text: str, modes) -> None:
    """UsageError, with a suggestion, for an unknown mode in 'train,decode' (or 'all')."""
    if text.strip() == "all":
        return
    names = [m.strip() for m in text.split(",") if m.strip()]
    if not names:
        raise UsageError(f"--mode {text!r}: no mode given (choose from {', '.join(modes)} or all)")
    for name in names:
        if name not in modes:
            raise UsageError(
                f"unknown mode {name!r} (choose from {', '.join(modes)} or all)"
                + did_you_mean(name, [*modes, "all"])
            )


def check_layer(text: str) -> None:
    """UsageError, with a suggestion, for an unknown kind or param in --layer KIND:k=v."""
    from archlab.blocks.registry import kinds

    kind, _, rest = text.partition(":")
    if kind not in kinds():
        raise UsageError(
            f"--layer {text}: unknown kind {kind!r} (choose from {', '.join(kinds())})"
            + did_you_mean(kind, kinds())
        )
    fields = [f for f in kinds()[kind].params.model_fields if f not in ("kind", "branches")]
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, _ = item.partition("=")
        key = key.strip()
        if eq and key not in fields:
            raise UsageError(
                f"--layer {text}: {kind} has no param {key!r} (its params: {', '.join(fields)})"
                + did_you_mean(key, fields)
            )
