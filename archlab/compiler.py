"""The compiler: named, pure passes from text to Plan.

    load -> validate -> expand -> resolve -> plan

Each pass appends every error it can find (with the YAML position of the node it is
about) to one list and hands on what it could make sense of, so that one run reports
as much as possible; the compiler raises SpecError with all of them at the end.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from archlab import pattern as patterns
from archlab.blocks import BLOCKS
from archlab.config import ModelConfig
from archlab.errors import SpecError, SpecIssue, format_path
from archlab.expressions import ExpressionError, as_int, evaluate
from archlab.loader import Source, load_source
from archlab.plan import Plan, PlannedBlock, make_plan
from archlab.spec import (
    EXPRESSION_NAMES,
    LANGUAGE_VERSION,
    MAX_BLOCKS,
    TOP_LEVEL_KEYS,
    numeric_kind,
)

DEFAULT_SYMBOLS = {mod.SYMBOL: kind for kind, mod in BLOCKS.items()} | {"*": "attention"}
Param = tuple[Any, tuple]  # value, path it was written at


@dataclass
class RawBlock:
    """A block after expansion: its kind and params, each param with its source path."""

    kind: str
    params: dict[str, Param]
    origin: tuple  # path of the stack item (or pattern) that produced it
    note: str = ""  # e.g. "symbol 'R' at offset 3"
    kind_path: tuple = ()


@dataclass
class Document:
    """The validated top level of a spec."""

    source: Source
    name: str
    description: str
    model: ModelConfig | None
    partial_model: ModelConfig | None = None  # the valid model fields, when some are bad
    defaults: dict[str, dict[str, Param]] = field(default_factory=dict)
    symbols: dict[str, RawBlock] = field(default_factory=dict)


def suggest(word: str, choices) -> str:
    match = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def pydantic_message(err: dict) -> str:
    """A short, user-facing message for one pydantic error."""
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    got = f" (got {value!r})"
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    for bound, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if bound in ctx and kind.startswith(("greater", "less")):
            return f"must be {op} {ctx[bound]}{got}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return f"must be an integer{got}"
    if kind in ("float_type", "float_parsing"):
        return f"must be a number{got}"
    if kind in ("bool_type", "bool_parsing"):
        return f"must be true or false{got}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}{got}"
    if kind in ("string_type",):
        return f"must be a string{got}"
    return f"{err['msg']}{got}"


# --- pass 2: validate the top level ---------------------------------------------------


def validate(source: Source, errors: list[SpecIssue]) -> Document | None:
    """Check the top-level keys, `archlab`, `model`, `defaults` and `symbols`."""
    data = source.data
    if not isinstance(data, dict):
        errors.append(source.issue((), "a spec must be a mapping with `model` and `stack`"))
        return None
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            errors.append(source.issue((key,), "unknown key" + suggest(key, TOP_LEVEL_KEYS)))
    version = data.get("archlab", LANGUAGE_VERSION)
    if version != LANGUAGE_VERSION or isinstance(version, bool):
        errors.append(
            source.issue(
                ("archlab",),
                f"unsupported language version {version!r} "
                f"(this archlab reads version {LANGUAGE_VERSION})",
            )
        )
    name = data.get("name", Path(source.file).stem if source.file[:1] != "<" else "spec")
    description = data.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            errors.append(source.issue((key,), f"must be a string (got {value!r})"))
    model, partial = _validate_model(source, errors)
    for key in ("stack",) + (("model",) if "model" not in data else ()):
        if key not in data:
            errors.append(source.issue((), f"missing required key `{key}`"))
    doc = Document(source, str(name), str(description), model, partial)
    doc.defaults = _validate_defaults(source, errors)
    doc.symbols = _validate_symbols(source, errors)
    return doc


def _validate_model(source: Source, errors: list[SpecIssue]):
    """(the model, None) when valid; else (None, the model built from its valid fields,
    when d_model and vocab_size are among them, so later passes can still check blocks)."""
    if "model" not in source.data:
        return None, None  # reported as a missing key
    raw = source.data["model"]
    if not isinstance(raw, dict):
        errors.append(source.issue(("model",), "must be a mapping"))
        return None, None
    try:
        return ModelConfig.model_validate(raw), None
    except ValidationError as e:
        bad = set()
        for err in e.errors():
            path = ("model", *err["loc"])
            bad.add(err["loc"][0] if err["loc"] else None)
            msg = pydantic_message(err)
            if err["type"] == "extra_forbidden":
                msg += suggest(err["loc"][0], ModelConfig.model_fields)
            errors.append(source.issue(path, msg))
        good = {k: v for k, v in raw.items() if k in ModelConfig.model_fields and k not in bad}
        try:
            partial = ModelConfig.model_validate(good)
        except ValidationError:
            partial = None
        return None, partial


def _check_fields(source, kind, params: dict, base: tuple, errors) -> dict[str, Param]:
    """Unknown fields of a kind's params are errors; returns params with their paths."""
    fields = BLOCKS[kind].Params.model_fields
    out = {}
    for key, value in params.items():
        if key == "kind":
            continue
        if key not in fields:
            errors.append(source.issue(base + (key,), "unknown field" + suggest(key, fields)))
        else:
            out[key] = (value, base + (key,))
    return out


def _validate_defaults(source: Source, errors) -> dict[str, dict[str, Param]]:
    raw = source.data.get("defaults") or {}
    if not isinstance(raw, dict):
        errors.append(source.issue(("defaults",), "must be a mapping of kind -> params"))
        return {}
    out = {}
    for kind, params in raw.items():
        if kind not in BLOCKS:
            errors.append(
                source.issue(("defaults", kind), "unknown block kind" + suggest(kind, BLOCKS))
            )
        elif not isinstance(params, dict):
            errors.append(source.issue(("defaults", kind), "must be a mapping of params"))
        else:
            out[kind] = _check_fields(source, kind, params, ("defaults", kind), errors)
    return out


def _validate_symbols(source: Source, errors) -> dict[str, RawBlock]:
    raw = source.data.get("symbols") or {}
    if not isinstance(raw, dict):
        errors.append(source.issue(("symbols",), "must be a mapping of symbol -> block"))
        return {}
    out = {}
    for sym, item in raw.items():
        path = ("symbols", sym)
        if not isinstance(sym, str) or len(sym) != 1 or sym in patterns.RESERVED:
            errors.append(
                source.issue(
                    path,
                    "a symbol is one character other than '(', ')', 'x', a digit or white space",
                )
            )
            continue
        block = _block_from_item(source, item, path, errors)
        if block is not None:
            out[sym] = block
    return out


def _block_from_item(source: Source, item: Any, path: tuple, errors) -> RawBlock | None:
    """A kind name or a {kind: ..., params} mapping -> RawBlock."""
    if isinstance(item, str):
        if item in BLOCKS:
            return RawBlock(item, {}, path, kind_path=path)
        errors.append(source.issue(path, f"unknown block kind {item!r}" + suggest(item, BLOCKS)))
        return None
    if not isinstance(item, dict) or "kind" not in item:
        errors.append(source.issue(path, "a block is a kind name or a mapping with `kind`"))
        return None
    kind = item["kind"]
    if not isinstance(kind, str) or kind not in BLOCKS:
        errors.append(
            source.issue(path + ("kind",), f"unknown block kind {kind!r}" + suggest(kind, BLOCKS))
        )
        return None
    params = _check_fields(source, kind, item, path, errors)
    return RawBlock(kind, params, path, kind_path=path + ("kind",))


# --- pass 3: expand the stack ----------------------------------------------------------


def expand(doc: Document, errors: list[SpecIssue]) -> list[RawBlock]:
    """The stack (kind names, blocks, repeat groups, patterns) -> a flat list of blocks.
    Returns [] when the stack's structure has errors."""
    source, n_before = doc.source, len(errors)
    if "stack" not in source.data:
        return []
    stack = source.data.get("stack")
    items = stack if isinstance(stack, list) else [stack]
    paths = [("stack", i) for i in range(len(items))] if isinstance(stack, list) else [("stack",)]
    symbols = {s: RawBlock(k, {}, ("stack",), kind_path=()) for s, k in DEFAULT_SYMBOLS.items()}
    symbols.update(doc.symbols)
    counted = _count(source, items, paths, symbols, errors, depth=0)
    if len(errors) == n_before and counted > MAX_BLOCKS:
        errors.append(
            source.issue(
                ("stack",), f"the stack expands to more than {MAX_BLOCKS} blocks (the limit)"
            )
        )
    if len(errors) == n_before and counted == 0:
        errors.append(source.issue(("stack",), "the stack is empty"))
    if len(errors) > n_before:
        return []
    return _expand(source, items, paths, symbols)


def _as_pattern(item: Any) -> str | None:
    if isinstance(item, str) and item not in BLOCKS:
        return item
    if isinstance(item, dict) and set(item) == {"pattern"}:
        return item["pattern"] if isinstance(item["pattern"], str) else ""
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
                total += patterns.parse(text, set(symbols)).count()
            except patterns.PatternError as e:
                ppath = _pattern_path(item, path)
                file, line, col = source.values.get(ppath, source.pos(ppath))
                hint = suggest(text, BLOCKS) if text.isidentifier() else ""
                message = (
                    f"unknown block kind {text!r}{hint}"
                    if hint
                    else f"{e.message}{patterns.caret(text, e.offset)}"
                )
                errors.append(SpecIssue(file, line, col, format_path(ppath), message))
        elif isinstance(item, dict) and "repeat" in item:
            total += _count_repeat(source, item, path, symbols, errors, depth)
        elif isinstance(item, dict) and "kind" not in item and "pattern" in item:
            errors.append(source.issue(path, "a pattern item has only the key `pattern`, a string"))
        else:
            if _block_from_item(source, item, path, errors) is not None:
                total += 1
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
                path + ("repeat",), f"must be an integer from 1 to {MAX_BLOCKS} (got {count!r})"
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
                base = symbols[sym]
                out.append(
                    RawBlock(
                        base.kind,
                        dict(base.params),
                        ppath,
                        note=f"from symbol {sym!r}",
                        kind_path=base.kind_path or ppath,
                    )
                )
        elif isinstance(item, dict) and "repeat" in item:
            inner = item["stack"]
            inner_paths = [path + ("stack", i) for i in range(len(inner))]
            once = _expand(source, inner, inner_paths, symbols)
            for _ in range(item["repeat"]):
                out.extend(
                    RawBlock(b.kind, dict(b.params), b.origin, b.note, b.kind_path) for b in once
                )
        else:
            out.append(_block_from_item(source, item, path, []))
    return out


# --- pass 4: resolve (defaults, `at` patches, expressions, checks) -----------------------


def apply_defaults_and_patches(
    doc: Document, blocks: list[RawBlock], errors: list[SpecIssue]
) -> list[RawBlock]:
    """Fill params from `defaults[kind]`, then apply `at` patches."""
    source = doc.source
    for b in blocks:
        b.params = {**doc.defaults.get(b.kind, {}), **b.params}
    at = source.data.get("at") or {}
    if not isinstance(at, dict):
        errors.append(source.issue(("at",), "must be a mapping of block index -> patch"))
        return blocks
    n = len(blocks)
    if n == 0:
        return blocks
    for key, patch in at.items():
        path = ("at", key)
        index = key if isinstance(key, int) and not isinstance(key, bool) else None
        if index is None:
            errors.append(source.issue(path, f"a block index must be an integer (got {key!r})"))
            continue
        if not -n <= index < n:
            errors.append(
                source.issue(
                    path,
                    f"index {index} is out of range: the stack has "
                    f"{n} blocks (0..{n - 1}, or -{n}..-1)",
                )
            )
            continue
        target = blocks[index % n]
        if isinstance(patch, dict) and "kind" not in patch:
            patch_block = RawBlock(
                target.kind, _check_fields(source, target.kind, patch, path, errors), path
            )
        else:
            patch_block = _block_from_item(source, patch, path, errors)
        if patch_block is None:
            continue
        if patch_block.kind != target.kind:
            defaults = doc.defaults.get(patch_block.kind, {})
            blocks[index % n] = RawBlock(
                patch_block.kind,
                {**defaults, **patch_block.params},
                path,
                kind_path=patch_block.kind_path,
            )
        else:
            target.params = {**target.params, **patch_block.params}
    return blocks


def resolve(
    doc: Document, blocks: list[RawBlock], errors: list[SpecIssue], model: ModelConfig
) -> list[PlannedBlock]:
    """Evaluate expressions, validate each block's params, run cross-field checks."""
    source = doc.source
    names = {k: getattr(model, k) for k in EXPRESSION_NAMES}
    out = []
    for index, b in enumerate(blocks):
        mod = BLOCKS[b.kind]
        where = f" ({b.kind} block{' ' + b.note if b.note else ''})"
        values, bad = {"kind": b.kind}, False
        for key, (value, path) in b.params.items():
            number = numeric_kind(mod.Params.model_fields[key].annotation)
            if number is not None and isinstance(value, str):
                try:
                    value = evaluate(value, names)
                    value = as_int(value) if number is int else float(value)
                except ExpressionError as e:
                    errors.append(source.issue(path, str(e)))
                    bad = True
                    continue
            values[key] = value
        if bad:
            continue
        try:
            params = mod.Params.model_validate(values)
        except ValidationError as e:
            for err in e.errors():
                key = err["loc"][0] if err["loc"] else None
                if key in b.params:
                    errors.append(source.issue(b.params[key][1], pydantic_message(err)))
                else:
                    message = pydantic_message(err)
                    if err["type"] == "missing":
                        message = (
                            f"required field `{key}` is missing{where}; set it on the "
                            f"block or in `defaults.{b.kind}`"
                        )
                    errors.append(source.issue(b.origin, message))
            continue
        problems = mod.check(params, model.d_model)
        for key, message in problems:
            path = b.params[key][1] if key in b.params else b.origin
            errors.append(source.issue(path, message + ("" if key in b.params else where)))
        if not problems:
            out.append(PlannedBlock(index, b.kind, params, format_path(b.origin)))
    return out


# --- the whole pipeline ------------------------------------------------------------------


def compile_spec(spec: str | Path | dict | Source) -> Plan:
    """Text (a path, a YAML string, a dict) -> the validated, expanded Plan.

    Raises SpecError listing every problem found by the first failing pass."""
    errors: list[SpecIssue] = []
    try:
        source = spec if isinstance(spec, Source) else load_source(spec)
        doc = validate(source, errors)
        if doc is None:
            raise SpecError(errors)
        blocks = apply_defaults_and_patches(doc, expand(doc, errors), errors)
        model = doc.model or doc.partial_model
        planned = resolve(doc, blocks, errors, model) if model is not None else []
    except RecursionError:
        raise SpecError([SpecIssue(str(spec)[:80], 0, 0, "", "spec nested too deeply")]) from None
    if errors:
        raise SpecError(errors)
    return make_plan(doc.name, doc.description, source.file, doc.model, planned)
