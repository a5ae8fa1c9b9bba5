"""The compiler: named, pure passes from text to Plan.

    load -> validate -> expand -> resolve -> plan

Each pass appends every error it can find (with the YAML position of the node it is
about) to one list and hands on what it could make sense of, so that one run reports
as much as possible; the compiler raises SpecError with all of them at the end.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from archlab.blocks.base import ModelConfig
from archlab.blocks.registry import kinds as block_kinds
from archlab.lang import pattern as patterns
from archlab.lang.errors import SpecError, SpecIssue, format_path, short
from archlab.lang.expressions import ExpressionError, as_int, evaluate
from archlab.lang.loader import Source, load_source
from archlab.lang.plan import Plan, PlannedBlock, make_plan
from archlab.lang.sharing import resolve_sharing
from archlab.lang.spec import (
    EXPRESSION_NAMES,
    LANGUAGE_VERSION,
    MAX_BLOCKS,
    TOP_LEVEL_KEYS,
    numeric_kind,
)
from archlab.lang.stack import (
    BLOCK_LIMIT_MESSAGE,
    Param,
    RawBlock,
    block_from_item,
    block_weight,
    check_fields,
    expand,
    suggest,
    topology,
)
from archlab.lang.warnings import plan_warnings


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


def pydantic_message(err: dict) -> str:
    """A short, user-facing message for one pydantic error."""
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    got = f" (got {short(value)})"
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
    if type(version) is not int or version != LANGUAGE_VERSION:  # 1.0 and true are not 1
        errors.append(
            source.issue(
                ("archlab",),
                f"unsupported language version {short(version)} "
                f"(this archlab reads version {LANGUAGE_VERSION})",
            )
        )
    name = data.get("name", Path(source.file).stem if source.file[:1] != "<" else "spec")
    description = data.get("description", "")
    for key, value in (("name", name), ("description", description)):
        if not isinstance(value, str):
            errors.append(source.issue((key,), f"must be a string (got {short(value)})"))
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


def _or_empty(value):
    """An absent (None) section is empty; any other value is checked as it is."""
    return {} if value is None else value


def _validate_defaults(source: Source, errors) -> dict[str, dict[str, Param]]:
    raw = _or_empty(source.data.get("defaults"))
    if not isinstance(raw, dict):
        errors.append(source.issue(("defaults",), "must be a mapping of kind -> params"))
        return {}
    out = {}
    for kind, params in raw.items():
        if kind not in block_kinds():
            errors.append(
                source.issue(
                    ("defaults", kind), "unknown block kind" + suggest(kind, block_kinds())
                )
            )
        elif not isinstance(params, dict):
            errors.append(source.issue(("defaults", kind), "must be a mapping of params"))
        else:
            for key in ("kind", "name", "share_cache"):
                if key in params:
                    errors.append(
                        source.issue(
                            ("defaults", kind, key), f"`{key}` belongs on a block, not in defaults"
                        )
                    )
            out[kind] = check_fields(source, kind, params, ("defaults", kind), errors)
    return out


def _validate_symbols(source: Source, errors) -> dict[str, RawBlock]:
    raw = _or_empty(source.data.get("symbols"))
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
        block = block_from_item(source, item, path, errors)
        if block is not None:
            out[sym] = block
    return out


# --- pass 4: resolve (defaults, `at` patches, expressions, checks) -----------------------


def apply_defaults_and_patches(
    doc: Document, blocks: list[RawBlock], errors: list[SpecIssue], complete: bool = True
) -> list[RawBlock]:
    """Fill params from `defaults[kind]`, then apply `at` patches (only to a complete
    stack: with items left out, indices would point at the wrong blocks)."""
    source = doc.source
    for b in blocks:
        b.params = {**doc.defaults.get(b.kind, {}), **b.params}
        for branch in b.branches:
            branch.params = {**doc.defaults.get(branch.kind, {}), **branch.params}
    at = _or_empty(source.data.get("at"))
    if not isinstance(at, dict):
        errors.append(source.issue(("at",), "must be a mapping of block index -> patch"))
        return blocks
    n = len(blocks)
    if n == 0 or not complete:
        for key in at:
            if not isinstance(key, int) or isinstance(key, bool):
                errors.append(
                    source.issue(
                        ("at", key), f"a block index must be an integer (got {short(key)})"
                    )
                )
        return blocks
    patched: dict[int, object] = {}
    for key, patch in at.items():
        path = ("at", key)
        index = key if isinstance(key, int) and not isinstance(key, bool) else None
        if index is None:
            errors.append(
                source.issue(path, f"a block index must be an integer (got {short(key)})")
            )
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
        if index % n in patched:
            errors.append(
                source.issue(
                    path, f"block {index % n} is already patched by at[{patched[index % n]}]"
                )
            )
            continue
        patched[index % n] = key
        target = blocks[index % n]
        if isinstance(patch, dict) and "kind" not in patch and "parallel" not in patch:
            patch_block = RawBlock(
                target.kind,
                check_fields(source, target.kind, patch, path, errors),
                path,
                **topology(source, patch, path, errors, in_parallel=False),
            )
        else:
            patch_block = block_from_item(source, patch, path, errors)
        if patch_block is None:
            continue
        if patch_block.kind != target.kind or patch_block.branches:
            for part in (patch_block, *patch_block.branches):
                part.params = {**doc.defaults.get(part.kind, {}), **part.params}
            blocks[index % n] = patch_block
        else:
            target.params = {**target.params, **patch_block.params}
            target.name = patch_block.name or target.name
            target.share = patch_block.share or target.share
    return blocks


def resolve(
    doc: Document, blocks: list[RawBlock], errors: list[SpecIssue], model: ModelConfig
) -> list[PlannedBlock]:
    """Evaluate expressions, validate each block's params, run cross-field checks."""
    names = {k: getattr(model, k) for k in EXPRESSION_NAMES}
    out = []
    for index, b in enumerate(blocks):
        branches = [_resolve_params(doc.source, x, names, model, errors) for x in b.branches]
        if None in branches:
            continue
        params = _resolve_params(doc.source, b, names, model, errors, branches)
        if params is not None:
            name = b.name[0] if b.name else None
            labels = tuple(x.name[0] if x.name else None for x in b.branches)
            planned = PlannedBlock(index, b.kind, params, format_path(b.origin), name)
            out.append(
                dataclasses.replace(planned, branch_names=labels) if any(labels) else planned
            )
    return out


def _resolve_params(source, b: RawBlock, names, model, errors, branches=()):
    """One block's validated Params, or None after appending its errors."""
    mod = block_kinds()[b.kind]
    where = f" ({b.kind} block{' ' + b.note if b.note else ''})"
    values, bad = {"kind": b.kind}, False
    for key, (value, path) in b.params.items():
        number = numeric_kind(mod.params.model_fields[key].annotation)
        if number is not None and isinstance(value, str):
            try:
                value = evaluate(value, names)
                value = as_int(value) if number is int else float(value)
            except ExpressionError as e:
                errors.append(source.issue(path, str(e)))
                bad = True
                continue
        values[key] = value
    if mod.composite:
        values["branches"] = list(branches)
    if bad:
        return None
    try:
        params = mod.params.model_validate(values)
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
        return None
    if mod.composite:
        return params  # each branch was checked on its own
    problems = mod.check(params, model.d_model)
    for key, message in problems:
        if key in b.params:
            errors.append(source.issue(b.params[key][1], message))
        else:  # a value the block did not write: name it, and where its inputs came from
            errors.append(source.issue(b.origin, f"{key}: {message}{_provenance(b)}"))
    return None if problems else params


def _provenance(b: RawBlock) -> str:
    """' (attention block from symbol 'A'; heads from defaults.attention.heads)': the
    block, and the params it took from elsewhere than its own stack item."""
    n = len(b.origin)
    inherited = [
        f"{k} from {format_path(p)}" for k, (_, p) in b.params.items() if p[:n] != b.origin
    ]
    note = f" {b.note}" if b.note else ""
    more = f"; {', '.join(inherited[:4])}" if inherited else ""
    return f" ({b.kind} block{note}{more})"


# --- the whole pipeline ------------------------------------------------------------------


def compile_spec(spec: str | Path | dict | Source, roots=None) -> Plan:
    """Text (a path, a YAML string, a dict) -> the validated, expanded Plan. `extends`
    may reach the folders in `roots` besides the spec's own and the working folder.

    Raises SpecError listing every problem found by the first failing pass. Warnings
    (valid, but probably not meant) are in the Plan's `warnings`."""
    errors: list[SpecIssue] = []
    source = spec if isinstance(spec, Source) else load_source(spec, roots)
    try:
        doc = validate(source, errors)
        if doc is None:
            raise SpecError(errors)
        blocks, complete = expand(source, doc.symbols, errors)
        blocks = apply_defaults_and_patches(doc, blocks, errors, complete)
        if sum(block_weight(b) for b in blocks) > MAX_BLOCKS:
            errors.append(source.issue(("at",), BLOCK_LIMIT_MESSAGE))
            raise SpecError(errors)
        model = doc.model or doc.partial_model
        planned = resolve(doc, blocks, errors, model) if model is not None else []
        if complete and len(planned) == len(blocks):
            planned = resolve_sharing(source, blocks, planned, model, errors)
    except RecursionError:
        raise SpecError([source.issue((), "spec nested too deeply")]) from None
    if errors:
        raise SpecError(errors)
    warnings = plan_warnings(source, blocks, planned, doc.model)
    plan = make_plan(doc.name, doc.description, source.file, doc.model, planned, warnings)
    plan.positions["model.max_seq_len"] = source.pos(("model", "max_seq_len"))
    return plan
