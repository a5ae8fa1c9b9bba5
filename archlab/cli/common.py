"""What every command shares: exit statuses, file checks, JSON output, lengths."""

from __future__ import annotations

import json
from pathlib import Path

from archlab.lang.errors import UsageError

EXIT_OK, EXIT_INVALID, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


def existing(path: str) -> str:
    """`path` if it is a file, else UsageError."""
    if Path(path).is_dir():
        raise UsageError(f"{path} is a directory, not a spec file")
    if not Path(path).is_file():
        raise UsageError(f"no such file: {path}")
    return path


def emit_json(obj) -> None:
    """Print `obj` as indented JSON on stdout."""
    print(json.dumps(obj, indent=2, default=str))


def parse_lengths(text: str) -> list[int]:
    """'4k,32k,128k' -> [4096, 32768, 131072]."""
    out = []
    for part in text.split(","):
        part = part.strip().lower()
        mult = 1
        if part.endswith("k"):
            part, mult = part[:-1], 1024
        elif part.endswith("m"):
            part, mult = part[:-1], 1024 * 1024
        if not part.isdigit() or int(part) * mult < 1:
            raise UsageError(f"bad length {part!r} in {text!r} (use e.g. 4096 or 4k,32k)")
        out.append(int(part) * mult)
    return out
