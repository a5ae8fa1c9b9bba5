"""Sweep files: a base spec and axes of values -> the points of a sweep (no torch).
The format is in docs/sweep.md:

    base: ../paper/rat.yaml         # the spec every point starts from (relative to this file)
    axes:                           # dotted paths into the spec -> the values to try
      defaults.rat.chunk_size: [16, 32, 64, 128, 256]
      stack: ["(R-)x24", "(R- R- R- A-)x6", "(R- A-)x12"]
    zip: false                      # true: the axes' values taken together (same lengths)
    seq: [4k, 32k]                  # lengths the cost is computed at (default: max_seq_len)
    batch: 1                        # and `archlab: 1`, `name`, `description`, optional

A point is the base spec (as loaded, `extends` resolved) with one value of every axis
deep-merged at its path (`merge_value`): mappings merge, lists and scalars replace. The
points are the product of the axes, the last varying fastest, or with `zip: true` the
i-th value of every axis. Each point compiles like any spec; its errors are reported in
the sweep file at the axis value that made the point, naming the point (`compile_points`).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archlab.lang.compiler import compile_spec
from archlab.lang.errors import SpecError, SpecIssue, format_path, short
from archlab.lang.files import SPEC_SUFFIXES, Unreadable, read_text
from archlab.lang.loader import Source, deep_merge, load_file, parse_yaml
from archlab.lang.plan import Plan
from archlab.lang.spec import LANGUAGE_VERSION
from archlab.lang.stack import suggest

SWEEP_KEYS = ("archlab", "name", "description", "base", "axes", "zip", "seq", "batch")
MAX_POINTS = 10_000
_LENGTH = re.compile(r"([0-9]{1,12})([km]?)", re.ASCII)


@dataclass
class Axis:
    """One axis: its dotted name as written, the key path it sets, its values, and the
    short name that labels points (the fewest last segments that tell the axes apart)."""

    name: str
    path: tuple
    values: list
    label: str = ""


@dataclass
class Point:
    """One point of the sweep: its number (0-based), the index of its value on every axis,
    and its spec (the base with the values merged in)."""

    index: int
    picks: tuple[int, ...]
    values: dict[str, Any]
    label: str
    source: Source


@dataclass
class Sweep:
    """A loaded sweep file."""

    file: str
    name: str
    description: str
    base_file: str
    axes: list[Axis]
    zip: bool
    seqs: list[int]
    batch: int
    source: Source  # the sweep file itself
    points: list[Point] = field(default_factory=list)


def value_text(value: Any) -> str:
    """A value as a label shows it: strings bare, the rest as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), default=str)


def parse_length(value: Any) -> int | None:
    """4096, '4096', '4k', '1m' -> tokens (k = 1024); None when not a length >= 1."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 1 else None
    if not isinstance(value, str):
        return None
    match = _LENGTH.fullmatch(value.strip().lower())
    if not match or int(match[1]) < 1:
        return None
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024 * 1024}[match[2]]


# --- the top level ---------------------------------------------------------------------


def load_sweep(path: str | Path) -> Sweep:
    """Read and check a sweep file, load its base spec and make its points. Raises
    SpecError listing every problem of the sweep file (or of the base spec's loading)."""
    path = Path(path)
    try:
        text = read_text(path)
    except Unreadable as e:
        raise SpecError([SpecIssue(str(path), e.line, e.col, "", e.message)]) from None
    source = parse_yaml(text, str(path))
    errors: list[SpecIssue] = []
    data = source.data
    if not isinstance(data, dict):
        raise SpecError([source.issue((), "a sweep file is a mapping with `base` and `axes`")])
    for key in data:
        if key not in SWEEP_KEYS:
            errors.append(source.issue((key,), "unknown key" + suggest(key, SWEEP_KEYS)))
    for key in ("base", "axes"):
        if key not in data:
            errors.append(source.issue((), f"missing required key `{key}`"))
    version = data.get("archlab", LANGUAGE_VERSION)
    if type(version) is not int or version != LANGUAGE_VERSION:  # 1.0 and true are not 1
        errors.append(source.issue(("archlab",), f"unsupported version {short(version)}"))
    errors += [source.issue((k,), "must be a string") for k in ("name", "description")
               if not isinstance(data.get(k, ""), str)]  # fmt: skip
    zipped = data.get("zip", False)
    if not isinstance(zipped, bool):
        errors.append(source.issue(("zip",), f"must be true or false (got {short(zipped)})"))
    batch = data.get("batch", 1)
    if type(batch) is not int or batch < 1:
        errors.append(source.issue(("batch",), f"must be an integer >= 1 (got {short(batch)})"))
    seqs = _seqs(source, errors)
    base_path = _base_path(source, path, errors)
    base = None
    if base_path is not None:
        base = load_file(base_path)  # its own problems point into the base spec
        if not isinstance(base.data, dict):
            errors.append(source.issue(("base",), "the base spec is not a mapping"))
            base = None
    axes = _axes(source, base.data if base else {}, zipped is True, errors)
    if axes and zipped is True and len({len(a.values) for a in axes}) > 1:
        sizes = ", ".join(f"{a.name}: {len(a.values)}" for a in axes)
        errors.append(source.issue(("zip",), f"zip takes axes of one length (got {sizes})"))
    elif axes:
        n = len(axes[0].values) if zipped is True else math.prod(len(a.values) for a in axes)
        rows = [tuple(_canon(a.values[i]) for a in axes) for i in range(n if zipped else 0)]
        same = [f"{rows.index(r)} and {i}" for i, r in enumerate(rows) if r in rows[:i]]
        errors += [source.issue(("zip",), f"points {pair} are the same") for pair in same]
        if n > MAX_POINTS:
            errors.append(
                source.issue(("axes",), f"{n:,} points, over the limit of {MAX_POINTS:,}")
            )
    if errors:
        raise SpecError(errors)
    name, text = data.get("name", path.stem), data.get("description", "")
    sweep = Sweep(
        str(path), name, text, os.path.normpath(base_path), axes, zipped, seqs, batch, source
    )
    sweep.points = make_points(sweep, base)
    return sweep


def _seqs(source: Source, errors: list[SpecIssue]) -> list[int]:
    raw = source.data.get("seq")
    if raw is None:
        return []
    if isinstance(raw, str) and "," in raw:
        items = [(("seq",), part) for part in raw.split(",")]
    elif isinstance(raw, list) and raw:
        items = [(("seq", i), v) for i, v in enumerate(raw)]
    else:
        items = [(("seq",), raw)]
    out = []
    for where, value in items:
        n = parse_length(value)
        if n is None:
            errors.append(
                source.issue(where, f"not a sequence length (got {short(value)}; use 4096 or 4k)")
            )
        elif n not in out:
            out.append(n)
    return sorted(out)


def _base_path(source: Source, sweep_path: Path, errors: list[SpecIssue]) -> Path | None:
    base = source.data.get("base")
    if base is None:
        return None
    if not isinstance(base, str) or not base.strip():
        errors.append(source.issue(("base",), "must be the path of a spec file (a string)"))
        return None
    if not base.lower().endswith(SPEC_SUFFIXES) or "\0" in base:
        errors.append(source.issue(("base",), f"names a spec file (.yaml or .yml), not {base!r}"))
        return None
    path = sweep_path.parent / base
    if not os.path.isfile(path):  # False for paths that cannot exist, too
        errors.append(source.issue(("base",), f"no spec file {base!r} next to the sweep file"))
        return None
    return path


# --- axes --------------------------------------------------------------------------------


def key_path(name: str, base: Any) -> tuple:
    """'at.-2.kind' -> ('at', -2, 'kind'): each segment a key of the base mapping at that
    level; a segment of digits (with an optional minus) is an integer key unless the base
    has it as a string (so `at` patches, whose keys are integers, can be swept)."""
    out: list = []
    here = base
    for part in name.split("."):
        key: Any = part
        if re.fullmatch(r"-?[0-9]+", part) and not (isinstance(here, dict) and part in here):
            key = int(part)
        out.append(key)
        here = here.get(key) if isinstance(here, dict) else None
    return tuple(out)


def _canon(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except TypeError:  # keys of mixed types
        return repr(value)


def _axes(source: Source, base: dict, zipped: bool, errors: list[SpecIssue]) -> list[Axis]:
    raw = source.data.get("axes")
    if raw is None:
        return []
    if not isinstance(raw, dict) or not raw:
        errors.append(source.issue(("axes",), "must be a mapping of spec paths to value lists"))
        return []
    axes = []
    for name, values in raw.items():
        where = ("axes", name)
        if not isinstance(name, str) or not name or any(not p for p in name.split(".")):
            errors.append(
                source.issue(where, "an axis is a dotted path such as defaults.rat.window")
            )
            continue
        if not isinstance(values, list) or not values:
            errors.append(source.issue(where, "must be a non-empty list of values"))
            continue
        texts = [_canon(v) for v in values]
        for k, t in enumerate(texts if not zipped else []):  # zip: the points must differ
            if t in texts[:k]:
                errors.append(
                    source.issue(where + (k,), f"the same value as {name}[{texts.index(t)}]")
                )
        axes.append(Axis(name, key_path(name, base), values))
    for a, b in itertools.permutations(axes, 2):
        if b.path[: len(a.path)] == a.path and len(b.path) > len(a.path):
            errors.append(source.issue(("axes", b.name), f"lies inside the axis {a.name}"))
    _set_labels(axes)
    return axes


def _set_labels(axes: list[Axis]) -> None:
    """Each axis' label: its last segment (two for a number: `at.-1`), or more of its
    path where that is ambiguous."""
    for axis in axes:
        parts = axis.name.split(".")
        first = 2 if re.fullmatch(r"-?[0-9]+", parts[-1]) and len(parts) > 1 else 1
        for n in range(first, len(parts) + 1):
            label = ".".join(parts[-n:])
            others = [".".join(b.name.split(".")[-n:]) for b in axes if b is not axis]
            if label not in others:
                break
        axis.label = label


def varying(axes: list[Axis]) -> list[Axis]:
    """The axes with more than one value (all of them when none has)."""
    return [a for a in axes if len(a.values) > 1] or axes


# --- points ------------------------------------------------------------------------------


def merge_value(base: Source, path: tuple, value: Any, sweep: Source, at: tuple) -> Source:
    """`base` with `value` deep-merged at `path`; the positions of what it sets are those
    of the value in the sweep file (at the sweep's path `at`), so that a compiler error
    about it points there."""
    data: Any = copy.deepcopy(value)
    for key in reversed(path):
        data = {key: data}
    positions, values = {}, {}
    for i in range(1, len(path)):
        positions[path[:i]] = values[path[:i]] = sweep.pos(at)
    for table, theirs in ((positions, sweep.positions), (values, sweep.values)):
        for p, pos in theirs.items():
            if p[: len(at)] == at:
                table[path + p[len(at) :]] = pos
        table.setdefault(path, sweep.pos(at))
    merged = deep_merge(base, Source(data, positions, sweep.file, values))
    merged.positions[()] = base.positions.get((), (base.file, 1, 1))
    return Source(merged.data, merged.positions, base.file, merged.values)


def make_points(sweep: Sweep, base: Source) -> list[Point]:
    """The points: the product of the axes (the last varying fastest), or with `zip` the
    i-th value of every axis; each the base with its values merged in."""
    axes = sweep.axes
    if sweep.zip:
        picks = [tuple(i for _ in axes) for i in range(len(axes[0].values))]
    else:
        picks = list(itertools.product(*(range(len(a.values)) for a in axes)))
    shown = varying(axes)
    points = []
    for n, pick in enumerate(picks):
        source = base
        for axis, k in zip(axes, pick, strict=True):
            source = merge_value(
                source, axis.path, axis.values[k], sweep.source, ("axes", axis.name, k)
            )
        values = {a.name: a.values[k] for a, k in zip(axes, pick, strict=True)}
        label = ", ".join(f"{a.label}={value_text(values[a.name])}" for a in shown)
        points.append(Point(n, pick, values, label, source))
    return points


# --- compiling the points: errors in the sweep file --------------------------------------


def _axis_of(sweep: Sweep, point: Point, issue: SpecIssue) -> int | None:
    """Which axis an issue of a point is about: the axis whose path the issue's path lies
    in (the deepest), else the one whose value in the sweep file the issue points at."""
    best = None
    for i, axis in enumerate(sweep.axes):
        written = format_path(axis.path)
        if issue.path == written or issue.path.startswith((written + ".", written + "[")):
            if best is None or len(axis.path) > len(sweep.axes[best].path):
                best = i
    if best is not None or issue.file != sweep.file:
        return best
    for i, (axis, k) in enumerate(zip(sweep.axes, point.picks, strict=True)):
        at = ("axes", axis.name, k)
        spots = {pos for p, pos in sweep.source.positions.items() if p[: len(at)] == at}
        if (issue.file, issue.line, issue.col) in spots | {sweep.source.pos(at)}:
            return i
    return None


def point_issue(sweep: Sweep, point: Point, issue: SpecIssue) -> tuple[SpecIssue, str]:
    """A point's issue, moved into the sweep file: (the issue without the point, the text
    that names the point). At the value of the axis it is about, its message the
    compiler's (with the spec path where that is inside the value); an issue no axis
    explains is put at the point's first varying value, with where it arose in the spec."""
    i = _axis_of(sweep, point, issue)
    blamed = i if i is not None else sweep.axes.index(varying(sweep.axes)[0])
    axis, k = sweep.axes[blamed], point.picks[blamed]
    at = ("axes", axis.name, k)
    if i is not None and issue.file == sweep.file:
        file, line, col = issue.file, issue.line, issue.col
    else:
        file, line, col = sweep.source.pos(at)
    if i is None:
        message = str(issue)
    elif issue.path == format_path(axis.path):
        message = issue.message
    else:
        message = f"{issue.path}: {issue.message}"
    moved = SpecIssue(file, line, col, format_path(at), message)
    return moved, f"point {point.index}: {point.label}"


def _gather(found: dict) -> list[SpecIssue]:
    """One issue per place and message, naming the first point and counting the others."""
    out = []
    for issue, names in found.items():
        more = len(names) - 1
        also = f"; and {more} more point{'s' if more > 1 else ''}" if more else ""
        out.append(dataclasses.replace(issue, path=f"{issue.path} ({names[0]}{also})"))
    return out


def compile_points(sweep: Sweep) -> tuple[list[Plan], list[SpecIssue]]:
    """Compile every point: (its plans, named `#N label`, and its warnings, both in
    the sweep file). Raises SpecError with the problems of every invalid point."""
    plans: list[Plan] = []
    errors: dict[SpecIssue, list[str]] = {}
    warnings: dict[SpecIssue, list[str]] = {}
    for point in sweep.points:
        try:
            plan = compile_spec(point.source)
        except SpecError as e:
            for issue in e.errors:
                moved, name = point_issue(sweep, point, issue)
                errors.setdefault(moved, []).append(name)
            continue
        for w in plan.warnings:
            moved, name = point_issue(sweep, point, w)
            warnings.setdefault(moved, []).append(name)
        plans.append(dataclasses.replace(plan, name=f"#{point.index} {point.label}"))
    if errors:
        raise SpecError(_gather(errors))
    return plans, _gather(warnings)
