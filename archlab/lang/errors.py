"""The errors every layer raises: `SpecError` (an invalid spec; each issue carries the file,
line and column of the YAML node it is about) and `UsageError` (bad options or arguments,
from the command line or the Python API)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class SpecIssue:
    """One problem in a spec. `line` and `col` are 1-based (0 when unknown)."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{where}: {self.path or '<spec>'}: {self.message}"

    def warning(self) -> str:
        """The issue as a warning line: `file:line:col: path: warning: message`."""
        where = f"{self.file}:{self.line}:{self.col}" if self.line else self.file
        return f"{where}: {self.path or '<spec>'}: warning: {self.message}"

    def to_dict(self) -> dict:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "path": self.path,
            "message": self.message,
        }


class SpecError(Exception):
    """An invalid spec. `errors` lists every problem found, in file order."""

    def __init__(self, errors: list[SpecIssue]):
        unique = sorted(set(errors), key=lambda e: (e.file, e.line, e.col, e.path, e.message))
        self.errors = unique
        super().__init__("\n".join(str(e) for e in unique))


def format_path(path: tuple) -> str:
    """('stack', 3, 'chunk_size') -> 'stack[3].chunk_size'."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def short(value, limit: int = 80) -> str:
    """repr(value), cut to about `limit` characters for messages."""
    text = repr(value)
    if len(text) <= limit:
        return text
    close = text[0] if isinstance(value, str) else ""
    return text[: limit - 3 - len(close)] + "..." + close


class UsageError(ValueError):
    """An option or argument that cannot be used (the CLI prints it and exits with 2)."""


class ModelTooLarge(ValueError):
    """A model whose weights would not fit in the free memory of the device it is built on
    (`archlab build` refuses it unless `--force`)."""
