"""The registry of block kinds. Every sub-package of `archlab.blocks` (and every module
beside this one other than `base`, `cache` and `registry`) is a block kind and exports
`KIND`, a `BlockKind` record; nothing else lists them. Kinds are found on first use, so
importing a kind's record never loads torch (its layer does, when built)."""

from __future__ import annotations

import functools
import importlib
import pkgutil

import archlab.blocks as _package
from archlab.blocks.base import BlockKind

FRAMEWORK = {"base", "cache", "registry"}  # the modules here that are not kinds


def _load(exclude: str | None = None) -> dict[str, BlockKind]:
    found: dict[str, BlockKind] = {}
    for info in pkgutil.iter_modules(_package.__path__):
        if info.name in FRAMEWORK or info.name.startswith("_") or info.name == exclude:
            continue
        module = importlib.import_module(f"{_package.__name__}.{info.name}")
        kind = getattr(module, "KIND", None)
        if not isinstance(kind, BlockKind):
            raise TypeError(f"archlab.blocks.{info.name} exports no KIND = BlockKind(...)")
        if kind.name != info.name:
            raise TypeError(f"archlab.blocks.{info.name}: KIND.name is {kind.name!r}")
        found[kind.name] = kind
    return dict(sorted(found.items(), key=lambda item: (item[1].composite, item[0])))


@functools.cache
def kinds() -> dict[str, BlockKind]:
    """Every block kind by name (composite kinds such as `parallel` last)."""
    return _load()


def kind(name: str) -> BlockKind:
    """The record of one kind (KeyError for an unknown name)."""
    return kinds()[name]


def branch_kinds(composite: str) -> dict[str, BlockKind]:
    """The kinds that may be branches of `composite` (for its own record, which is built
    while the registry loads it, so it cannot call `kinds()`)."""
    return {name: k for name, k in _load(exclude=composite).items() if k.branchable}


def symbols() -> dict[str, str]:
    """Pattern symbol -> kind name, for every kind that has one."""
    return {k.symbol: name for name, k in kinds().items() if k.symbol}
