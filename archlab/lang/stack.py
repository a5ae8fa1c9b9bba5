"""The stack pass: stack items (kind names, blocks, repeat groups, patterns, parallel
blocks) -> a flat list of RawBlocks, each param with the YAML path it was written at."""

from __future__ import annotations

import copy
import difflib
from dataclasses import dataclass, field
from typing import Any

from archlab.blocks.registry import kinds as block_kinds
from archlab.blocks.registry import symbols as block_symbols
from archlab.lang import pattern as patterns
from archlab.lang.errors import SpecIssue, format_path, short
from archlab.lang.loader import Source
from archlab.lang.spec import MAX_BLOCKS

EXTRA_SYMBOLS = {"*": "attention"}  # Megatron-LM's symbol for attention


def default_symbols() -> dict[str, str]:
    """Pattern symbol -> kind: each kind's own symbol, plus Megatron-LM's `*`."""
    return block_symbols() | EXTRA_SYMBOLS


BLOCK_LIMIT_MESSAGE = (
    f"the stack expands to more than {MAX_BLOCKS} blocks (the limit; a parallel block "
    "counts one per branch)"
)
TOPOLOGY_KEYS = ("name", "share_cache")  # block keys that are not params of its kind
PARALLEL_KEYS = ("parallel", "merge", "name")
Param = tuple[Any, tuple]  # value, path it was written at


@dataclass
class RawBlock:
    """A block after expansion: its kind and params, each param with its source path."""

    kind: str
    params: dict[str, Param]
    origin: tuple  # path of the stack item (or pattern) that produced it
    note: str = ""  # e.g. "from symbol 'R'"
    kind_path: tuple = ()
    name: Param | None = None
    share: Param | None = None  # `share_cache` as written
    branches: list[RawBlock] = field(default_factory=list)  # of a parallel block


def suggest(word: str, choices) -> str:
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def unknown_field(kind: str, key, fields) -> str:
    """'unknown field', with the close field names of `kind` or the kinds that have it."""
    owners = [
        name
        for name, rec in block_kinds().items()
        if name != kind and key in rec.params.model_fields and key not in ("kind", "branches")
    ]
    if owners:
        return f"unknown field of {kind}; `{key}` is a field of {', '.join(owners)}"
    return "unknown field" + suggest(key, fields)


def block_weight(block: RawBlock) -> int:
    """What a block counts toward the block limit: one, or one per parallel branch."""
    return max(1, len(block.branches))


def check_fields(source, kind, params: dict, base: tuple, errors) -> dict[str, Param]:
    """Unknown fields of a kind's params are errors; returns params with their paths.
    `kind` and the topology keys (`name`, `share_cache`) are not params."""
    fields = [f for f in block_kinds()[kind].params.model_fields if f != "branches"]
    out = {}
    for key, value in params.items():
        if key == "kind" or key in TOPOLOGY_KEYS:
            continue
        if key not in fields:
            errors.append(source.issue(base + (key,), unknown_field(kind, key, fields)))
        else:
            out[key] = (value, base + (key,))
    return out


def share_problem(share: Any) -> str | None:
    """Why a `share_cache` value as written is not one (None when it is): a block index, a
    name (of a block or of a parallel branch), or [block, branch] with the block an index
    or a name and the branch an index."""
    if isinstance(share, int | str) and not isinstance(share, bool):
        return None
    if (
        isinstance(share, list)
        and len(share) == 2
        and isinstance(share[0], int | str)
        and all(type(v) is not bool for v in share)
        and type(share[1]) is int
    ):
        return None
    return (
        "must be a block index or a block name, or [block, branch] for a branch of a "
        f"parallel block (got {short(share)})"
    )


def topology(source: Source, item: dict, path: tuple, errors, in_parallel: bool) -> dict:
    """The `name` and `share_cache` keys of a block mapping (a parallel branch's too),
    checked for their type."""
    out: dict[str, Param] = {}
    if "name" in item:
        name = item["name"]
        if not isinstance(name, str) or not name.isidentifier():
            what = "a branch name" if in_parallel else "a block name"
            errors.append(
                source.issue(
                    path + ("name",),
                    f"{what} is an identifier (letters, digits, _) (got {short(name)})",
                )
            )
        else:
            out["name"] = (name, path + ("name",))
    if "share_cache" in item:
        share = item["share_cache"]
        problem = share_problem(share)
        if problem is not None:
            errors.append(source.issue(path + ("share_cache",), problem))
        else:
            out["share"] = (share, path + ("share_cache",))
    return out


def block_from_item(
    source: Source, item: Any, path: tuple, errors, in_parallel: bool = False
) -> RawBlock | None:
    """A kind name, a {kind: ..., params} mapping or a {parallel: [...]} block -> RawBlock."""
    if isinstance(item, str):
        if item == "parallel":
            errors.append(
                source.issue(
                    path, "write a parallel block as {parallel: [branches...], merge: mean}"
                )
            )
            return None
        if item in block_kinds():
            return RawBlock(item, {}, path, kind_path=path)
        errors.append(
            source.issue(path, f"unknown block kind {short(item)}" + suggest(item, block_kinds()))
        )
        return None
    if isinstance(item, dict) and "parallel" in item and "kind" not in item:
        if in_parallel:
            errors.append(source.issue(path, "parallel blocks do not nest"))
            return None
        return _parallel_from_item(source, item, path, errors)
    if not isinstance(item, dict) or "kind" not in item:
        errors.append(
            source.issue(
                path, "a block is a kind name, a mapping with `kind`, or {parallel: [...]}"
            )
        )
        return None
    kind = item["kind"]
    if not isinstance(kind, str) or kind not in block_kinds() or block_kinds()[kind].composite:
        hint = (
            " (write a parallel block as {parallel: [branches...]})"
            if kind == "parallel"
            else suggest(kind, block_kinds())
        )
        errors.append(source.issue(path + ("kind",), f"unknown block kind {short(kind)}{hint}"))
        return None
    params = check_fields(source, kind, item, path, errors)
    return RawBlock(
        kind,
        params,
        path,
        kind_path=path + ("kind",),
        **topology(source, item, path, errors, in_parallel),
    )


def _parallel_from_item(source: Source, item: dict, path: tuple, errors) -> RawBlock | None:
    for key in item:
        if key == "share_cache":
            errors.append(
                source.issue(
                    path + (key,),
                    "`share_cache` belongs on a branch of a parallel block, not on the block",
                )
            )
        elif key not in PARALLEL_KEYS:
            errors.append(
                source.issue(
                    path + (key,), "unknown key in a parallel block" + suggest(key, PARALLEL_KEYS)
                )
            )
    raw = item["parallel"]
    if not isinstance(raw, list) or not raw:
        errors.append(
            source.issue(
                path + ("parallel",), "a parallel block needs a non-empty list of branches"
            )
        )
        return None
    branches = []
    for i, branch_item in enumerate(raw):
        bpath = path + ("parallel", i)
        branch = block_from_item(source, branch_item, bpath, errors, in_parallel=True)
        if branch is not None and not block_kinds()[branch.kind].is_mixer:
            errors.append(source.issue(bpath, f"a parallel branch is a mixer, not {branch.kind!r}"))
        elif branch is not None and not block_kinds()[branch.kind].branchable:
            allowed = ", ".join(n for n, k in block_kinds().items() if k.branchable)
            errors.append(
                source.issue(bpath, f"{branch.kind} cannot be a parallel branch ({allowed} can)")
            )
        elif branch is not None:
            branches.append(branch)
    if len(branches) != len(raw):
        return None
    params = check_fields(
        source, "parallel", {k: v for k, v in item.items() if k == "merge"}, path, errors
    )
    return RawBlock(
        "parallel",
        params,
        path,
        kind_path=path + ("parallel",),
        branches=branches,
        **topology(source, item, path, errors, False),
    )


# --- expansion ---------------------------------------------------------------------------


def expand(
    source: Source, symbols_in: dict[str, RawBlock], errors: list[SpecIssue]
) -> tuple[list[RawBlock], bool]:
    """The stack (kind names, blocks, repeat groups, patterns) -> a flat list of blocks,
    and whether it is complete. Items with errors are left out (and the list marked
    incomplete), so that the blocks of the other items can still be checked."""
    if "stack" not in source.data:
        return [], False
    stack = source.data.get("stack")
    items = stack if isinstance(stack, list) else [stack]
    paths = [("stack", i) for i in range(len(items))] if isinstance(stack, list) else [("stack",)]
    symbols = {s: RawBlock(k, {}, ("stack",), kind_path=()) for s, k in default_symbols().items()}
    symbols.update(symbols_in)
    good, counted = [], 0
    for item, path in zip(items, paths, strict=True):
        before = len(errors)
        n = _count(source, [item], [path], symbols, errors, depth=0)
        if len(errors) == before:
            good.append((item, path))
            counted += n
        if counted > MAX_BLOCKS:
            errors.append(source.issue(("stack",), BLOCK_LIMIT_MESSAGE))
            return [], False
    complete = len(good) == len(items)
    if complete and counted == 0:
        errors.append(source.issue(("stack",), "the stack is empty"))
    blocks = _expand(source, [i for i, _ in good], [p for _, p in good], symbols)
    return blocks, complete


def _as_pattern(item: Any) -> str | None:
    if isinstance(item, str) and item not in block_kinds():
        return item
    if isinstance(item, dict) and set(item) == {"pattern"} and isinstance(item["pattern"], str):
        return item["pattern"]
    return None


def _pattern_path(item: Any, path: tuple) -> tuple:
    return path + ("pattern",) if isinstance(item, dict) else path


def _count(source, items, paths, symbols, errors, depth) -> int:
    """Validate the stack's structure and count its blocks without expanding it."""
    total = 0
    for item, path in zip(items, paths, strict=True):
        text = _as_pattern(item)
        if text is not None:
            try:
                weights = {s: block_weight(b) for s, b in symbols.items()}
                total += patterns.parse(text, set(symbols)).count(weights)
            except patterns.PatternError as e:
                ppath = _pattern_path(item, path)
                file, line, col = source.values.get(ppath, source.pos(ppath))
                hint = suggest(text, block_kinds()) if text.isidentifier() else ""
                message = (
                    f"unknown block kind {short(text)}{hint}"
                    if hint
                    else f"{e.message}{patterns.caret(text, e.offset)}"
                )
                errors.append(SpecIssue(file, line, col, format_path(ppath), message))
        elif isinstance(item, dict) and "repeat" in item:
            total += _count_repeat(source, item, path, symbols, errors, depth)
        elif isinstance(item, dict) and "kind" not in item and "pattern" in item:
            errors.append(
                source.issue(path, "a pattern item has only the key `pattern`, and it is a string")
            )
        else:
            block = block_from_item(source, item, path, errors)
            if block is not None:
                total += block_weight(block)
        if total > MAX_BLOCKS:
            return total
    return total


def _count_repeat(source, item, path, symbols, errors, depth) -> int:
    if depth >= patterns.MAX_DEPTH:
        errors.append(source.issue(path, f"repeat groups nested deeper than {patterns.MAX_DEPTH}"))
        return 0
    extra = set(item) - {"repeat", "stack"}
    for key in extra:
        errors.append(
            source.issue(
                path + (key,), "unknown key in a repeat group" + suggest(key, ["repeat", "stack"])
            )
        )
    count = item["repeat"]
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_BLOCKS:
        errors.append(
            source.issue(
                path + ("repeat",),
                f"must be an integer from 1 to {MAX_BLOCKS} (got {short(count)})",
            )
        )
        return 0
    inner = item.get("stack")
    if not isinstance(inner, list) or not inner:
        errors.append(
            source.issue(
                path + ("stack",) if "stack" in item else path,
                "a repeat group needs a non-empty list `stack`",
            )
        )
        return 0
    inner_paths = [path + ("stack", i) for i in range(len(inner))]
    return count * _count(source, inner, inner_paths, symbols, errors, depth + 1)


def _expand(source, items, paths, symbols) -> list[RawBlock]:
    out: list[RawBlock] = []
    for item, path in zip(items, paths, strict=True):
        text = _as_pattern(item)
        if text is not None:
            ppath = _pattern_path(item, path)
            for sym, _offset in patterns.parse(text, set(symbols)).expand():
                block = copy.deepcopy(symbols[sym])
                block.origin, block.note = ppath, f"from symbol {sym!r}"
                block.kind_path = block.kind_path or ppath
                out.append(block)
        elif isinstance(item, dict) and "repeat" in item:
            inner = item["stack"]
            inner_paths = [path + ("stack", i) for i in range(len(inner))]
            once = _expand(source, inner, inner_paths, symbols)
            for _ in range(item["repeat"]):
                out.extend(copy.deepcopy(once))
        else:
            out.append(block_from_item(source, item, path, []))
    return out
