"""YAML -> plain data with source positions; `extends` chains, deep-merged.

Only plain mappings, lists and scalars are read: any explicit tag is an error, and no
tag ever builds a Python object (`yaml_limits` holds the parser and its limits). A spec
may extend only `.yaml`/`.yml` files inside its own folder, its project and the working
folder's project, and the roots the caller names (`load_source(roots=...)`,
`extends_roots`, the CLI's `--extends-root`).
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from archlab.lang.errors import SpecError, SpecIssue, format_path
from archlab.lang.files import SPEC_SUFFIXES, Unreadable, cwd, os_reason, project_root, read_text
from archlab.lang.yaml_limits import (
    MAX_BYTES,
    MAX_DEPTH,
    MAX_NODES,
    MERGE,
    YamlProblem,
    compose,
)

__all__ = ["MAX_BYTES", "MAX_DEPTH", "MAX_NODES", "Source", "load_source", "parse_yaml"]

Pos = tuple[str, int, int]  # file, line, col (1-based)
MAX_EXTENDS = 16  # files in one extends chain
_EXTRA_ROOTS: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar(
    "archlab_extends_roots", default=()
)


@dataclass
class Source:
    """A loaded spec: its data and, for every path inside it, where it was written."""

    data: Any
    positions: dict[tuple, Pos] = field(default_factory=dict)  # keys of mapping entries
    file: str = "<spec>"
    values: dict[tuple, Pos] = field(default_factory=dict)  # where each value starts

    def pos(self, path: tuple) -> Pos:
        """Position of `path`, or of its nearest ancestor that has one."""
        path = tuple(path)
        while path:
            if path in self.positions:
                return self.positions[path]
            path = path[:-1]
        return self.positions.get((), (self.file, 0, 0))

    def issue(self, path: tuple, message: str) -> SpecIssue:
        file, line, col = self.pos(path)
        return SpecIssue(file, line, col, format_path(path), message)


# --- YAML nodes -> data with positions -----------------------------------------------------

_PLAIN = (str, int, float, bool, type(None))
_STR = "tag:yaml.org,2002:str"


class _Builder:
    """Walks the node graph (aliases expanded) into plain data, recording positions."""

    def __init__(self, loader, file: str, tagged: dict):
        self.loader, self.file, self.tagged = loader, file, tagged
        self.positions: dict[tuple, Pos] = {}
        self.values: dict[tuple, Pos] = {}
        self.errors: list[SpecIssue] = []

    def at(self, node) -> Pos:
        return (self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def error(self, node, path: tuple, message: str) -> None:
        self.errors.append(SpecIssue(*self.at(node), format_path(path), message))

    def tag_of(self, node) -> str | None:
        """The tag written on `node` ('!!binary' for YAML's own), or None."""
        tag = self.tagged.get((node.start_mark.index, type(node)))
        return tag.replace("tag:yaml.org,2002:", "!!", 1) if tag else None

    def build(self, node, path: tuple, depth: int = 0) -> Any:
        here = self.at(node)
        self.positions.setdefault(path, here)
        self.values[path] = here
        if depth > MAX_DEPTH:
            self.error(node, path, f"nested deeper than {MAX_DEPTH} levels")
            return None
        tag = self.tag_of(node)
        if tag is not None:
            self.error(
                node,
                path,
                f"unsupported YAML tag {tag!r}: a spec holds plain mappings, lists and "
                "scalars (no tags)",
            )
            return None
        if isinstance(node, yaml.MappingNode):
            return self.mapping(node, path, depth)
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, path + (i,), depth + 1) for i, item in enumerate(node.value)]
        return self.scalar(node, path)

    def scalar(self, node, path: tuple) -> Any:
        if node.tag == _STR or node.tag == MERGE:  # `<<` where it is no key: the string
            return node.value
        try:
            value = self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
            problem = str(getattr(e, "problem", None) or e)
            if "digits" in problem:  # int("9" * 5000): Python's limit on digits
                problem = "an integer with more digits than Python reads (4300)"
            self.error(node, path, f"cannot read this value: {problem[:120]}")
            return None
        if not isinstance(value, _PLAIN):  # no implicit tag builds anything else
            self.error(node, path, f"unsupported YAML value of type {type(value).__name__}")
            return None
        return value

    def entries(self, node, path: tuple, depth: int, explicit: bool = True) -> list:
        """(key node, value node, written here?) with `<<` merges flattened first."""
        merged, own = [], []
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.tag == MERGE and not self.tag_of(key):
                sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
                if not all(isinstance(s, yaml.MappingNode) for s in sources):
                    self.error(value, path, "`<<` merges a mapping or a list of mappings")
                elif any(self.tag_of(n) for n in (value, *sources)):
                    self.error(value, path, "unsupported YAML tag on what `<<` merges")
                elif depth >= MAX_DEPTH:
                    self.error(value, path, f"merges nested deeper than {MAX_DEPTH} levels")
                else:
                    for s in reversed(sources):  # the first mapping listed wins
                        merged += self.entries(s, path, depth + 1, explicit=False)
            else:
                own.append((key, value, explicit))
        return merged + own

    def mapping(self, node, path: tuple, depth: int) -> dict:
        out: dict = {}
        seen: set = set()
        for key_node, value_node, explicit in self.entries(node, path, depth):
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(key_node, path, "mapping keys must be plain scalars")
                continue
            if self.tag_of(key_node):
                self.error(key_node, path, f"unsupported YAML tag {self.tag_of(key_node)!r}")
                continue
            key = self.scalar(key_node, path)
            if not isinstance(key, str | int) or isinstance(key, bool):
                key = str(key)
            if explicit and key in seen:
                self.error(key_node, path + (key,), "duplicate key")
                continue
            if explicit:
                seen.add(key)
            self.positions[path + (key,)] = self.at(key_node)
            out[key] = self.build(value_node, path + (key,), depth + 1)
        return out


def parse_yaml(text: str, file: str) -> Source:
    """Parse one YAML document into a Source; any YAML problem becomes a SpecError that
    points into the text (line and column)."""
    loader = None
    try:
        node, loader, tagged = compose(text)
        builder = _Builder(loader, file, tagged)
        data = {} if node is None else builder.build(node, ())
    except YamlProblem as e:
        raise SpecError([SpecIssue(file, e.line, e.col, "", e.message)]) from None
    finally:
        if loader is not None:
            loader.dispose()
    if builder.errors:
        raise SpecError(builder.errors)
    if node is None:
        builder.positions[()] = (file, 1, 1)
    return Source(data, builder.positions, file, builder.values)


# --- extends -------------------------------------------------------------------------------


def deep_merge(base: Source, child: Source) -> Source:
    """Child over base: mappings merge, lists and scalars replace (with their positions).
    Linear in the size of both: the replaced paths are collected, then each position is
    kept from the side its path (or an ancestor) came from."""
    replaced: set[tuple] = set()

    def merge(b: Any, c: Any, path: tuple) -> Any:
        if isinstance(b, dict) and isinstance(c, dict):
            out = dict(b)
            for k, v in c.items():
                if k in b:
                    out[k] = merge(b[k], v, path + (k,))
                else:
                    replaced.add(path + (k,))
                    out[k] = v
            return out
        replaced.add(path)
        return c

    def from_child(path: tuple) -> bool:
        return any(path[:i] in replaced for i in range(len(path) + 1))

    data = merge(base.data, child.data, ())
    tables = []
    for mine, theirs in ((base.positions, child.positions), (base.values, child.values)):
        table = {p: v for p, v in mine.items() if not from_child(p)}
        table.update({p: v for p, v in theirs.items() if from_child(p)})
        tables.append(table)
    positions, values = tables
    positions[()] = child.positions.get((), (child.file, 1, 1))
    return Source(data, positions, child.file, values)


def load_file(
    path: str | Path, roots: tuple[Path, ...] = (), _chain: tuple[Path, ...] = ()
) -> Source:
    """Load a spec file and resolve its `extends` chain (paths relative to the file),
    within the file's folder, the working folder and `roots`."""
    path = Path(path)
    shown = str(path)
    try:
        text = read_text(path)
        resolved = path.resolve()
    except Unreadable as e:
        raise SpecError([SpecIssue(shown, e.line, e.col, "", e.message)]) from None
    except (OSError, RuntimeError, ValueError) as e:
        raise SpecError([SpecIssue(shown, 0, 0, "", f"cannot resolve the path: {e}")]) from None
    if not _chain:
        roots = (resolved.parent, project_root(resolved.parent), *roots)
    source = parse_yaml(text, shown)
    return resolve_extends(source, resolved.parent, _chain + (resolved,), roots)


def _show(target: str) -> str:
    """The path as written (repr'd when it holds odd characters; cut when long)."""
    cut = target if len(target) <= 120 else target[:117] + "..."
    return cut if cut.isprintable() and cut.strip() == cut else repr(cut)


def resolve_extends(
    source: Source, base_dir: Path, chain: tuple[Path, ...] = (), roots: tuple[Path, ...] = ()
) -> Source:
    """Merge the spec named by `extends` (and its own chain) under `source`. Every problem
    with the file named is a SpecError at the `extends` key that names the path."""
    if not isinstance(source.data, dict) or "extends" not in source.data:
        return source
    target = source.data["extends"]

    def fail(message: str):
        raise SpecError([source.issue(("extends",), message)])

    if not isinstance(target, str) or not target:
        fail("must be a file path (a string)")
    if "\0" in target:
        fail(f"not a possible file name (it holds a NUL character): {_show(target)}")
    if len(target) > 4096 or any(len(part) > 255 for part in target.split("/")):
        fail(f"file name too long: {_show(target)}")
    if not target.lower().endswith(SPEC_SUFFIXES):
        fail(f"extends names a spec file (.yaml or .yml), not {_show(target)}")
    try:
        parent_path = (base_dir / target).resolve()
    except (OSError, RuntimeError, ValueError) as e:
        reason = os_reason(e) if isinstance(e, OSError) else "a symbolic link loop"
        fail(f"cannot resolve {_show(target)}: {reason}")
    if parent_path in chain:
        cycle = " -> ".join(p.name for p in (*chain, parent_path))
        fail(f"extends cycle: {cycle}")
    if len(chain) >= MAX_EXTENDS:
        fail(f"an extends chain longer than {MAX_EXTENDS} files (the limit)")
    allowed = tuple(dict.fromkeys(r for r in (*roots, project_root(cwd())) if r is not None))
    if not any(parent_path.is_relative_to(r) for r in allowed):
        folders = ", ".join(str(r) for r in allowed)
        fail(
            f"{_show(target)} is outside the folders a spec may extend from ({folders}); "
            "name its folder with --extends-root DIR (Python: roots=[DIR])"
        )
    try:
        text = read_text(parent_path)
    except Unreadable as e:
        fail(f"{e.message}: {_show(target)}")
    parent = resolve_extends(
        parse_yaml(text, str(parent_path)), parent_path.parent, chain + (parent_path,), roots
    )
    if not isinstance(parent.data, dict):
        fail(f"{_show(target)} is not a mapping")
    own = Source(
        {k: v for k, v in source.data.items() if k != "extends"},
        source.positions,
        source.file,
        source.values,
    )
    return deep_merge(parent, own)


@contextlib.contextmanager
def extends_roots(dirs):
    """Within the block, `extends` may also reach into `dirs` (the CLI's --extends-root)."""
    token = _EXTRA_ROOTS.set(tuple(Path(d).resolve() for d in dirs or ()))
    try:
        yield
    finally:
        _EXTRA_ROOTS.reset(token)


def load_source(spec: str | Path | dict, roots=None) -> Source:
    """A path, a YAML string or a dict -> Source (with `extends` resolved). `extends` may
    name `.yaml`/`.yml` files inside: the spec's own folder (the working folder for a
    string or a dict); the project it is in and the project the working folder is in (the
    nearest folder above with `.git` or `pyproject.toml`, never `/` or the home folder);
    and the folders in `roots` (and `extends_roots`, the CLI's --extends-root)."""
    extra = tuple(Path(r).resolve() for r in roots or ()) + _EXTRA_ROOTS.get()
    here = (cwd() or Path("."),)  # a string's or a dict's own folder: the working folder
    if isinstance(spec, dict):
        return resolve_extends(Source(spec, {}, "<dict>"), here[0], (), here + extra)
    if isinstance(spec, Path):
        return load_file(spec, extra)
    if isinstance(spec, str):
        looks_like_path = "\n" not in spec and spec.strip().endswith(SPEC_SUFFIXES)
        try:
            is_file = "\n" not in spec and len(spec) < 4096 and Path(spec).is_file()
        except (OSError, ValueError):  # not a possible path (too long, NUL byte): YAML
            is_file = False
        if looks_like_path or is_file:
            return load_file(spec, extra)
        return resolve_extends(parse_yaml(spec, "<string>"), here[0], (), here + extra)
    raise TypeError(f"a spec is a path, a YAML string or a dict, not {type(spec).__name__}")
