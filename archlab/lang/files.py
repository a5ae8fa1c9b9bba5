"""The file system side of loading a spec: reading a file within the limits, the
reasons a path cannot be read (never echoing a file's content), and the project a folder
belongs to (for `extends`)."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from archlab.lang.yaml_limits import MAX_BYTES, line_col

SPEC_SUFFIXES = (".yaml", ".yml")


class Unreadable(Exception):
    """A spec file that cannot be read: why, and where in it (1-based; 0 when nowhere)."""

    def __init__(self, message: str, line: int = 0, col: int = 0):
        super().__init__(message)
        self.message, self.line, self.col = message, line, col


def os_reason(e: OSError) -> str:
    reasons = {
        errno.ENOENT: "file not found",
        errno.ENOTDIR: "file not found (a folder on its path is a file)",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
        errno.ENAMETOOLONG: "file name too long",
        errno.ELOOP: "too many levels of symbolic links (a loop)",
        errno.EISDIR: "is a directory, not a spec file",
    }
    return reasons.get(e.errno, f"cannot read the file: {e.strerror or type(e).__name__}")


def read_text(path: Path) -> str:
    """The text of a spec file: its size checked (os.stat) before it is read, then UTF-8
    decoded. Raises Unreadable (never echoing the file's content)."""
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise Unreadable("is a directory, not a spec file")
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable("is not a regular file")
        if info.st_size > MAX_BYTES:
            raise Unreadable(
                f"larger than {MAX_BYTES:,} bytes (4 MiB, the limit; {info.st_size:,} bytes)", 1, 1
            )
        with open(path, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as e:
        raise Unreadable(os_reason(e)) from None
    except ValueError:  # a NUL byte in the name
        raise Unreadable("not a possible file name (it holds a NUL character)") from None
    if len(data) > MAX_BYTES:
        raise Unreadable(f"larger than {MAX_BYTES:,} bytes (4 MiB, the limit)", 1, 1)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        good = data[: e.start].decode("utf-8", "replace")
        line, col = line_col(good, len(good))
        raise Unreadable(
            f"not a text file: not UTF-8 (byte 0x{data[e.start]:02x})", line, col
        ) from None


PROJECT_MARKERS = (".git", "pyproject.toml")


def cwd() -> Path | None:
    try:
        return Path.cwd().resolve()
    except OSError:  # the working folder was removed
        return None


def project_root(folder: Path | None) -> Path | None:
    """The nearest folder at or above `folder` that holds `.git` or `pyproject.toml`: the
    project a spec belongs to (never the file system's root or the home folder)."""
    if folder is None:
        return None
    try:
        home = Path.home().resolve()
    except (OSError, RuntimeError):
        home = None
    for p in (folder, *folder.parents):
        if p == p.parent or p == home:
            return None
        try:
            if any((p / marker).exists() for marker in PROJECT_MARKERS):
                return p
        except OSError:
            return None
    return None
