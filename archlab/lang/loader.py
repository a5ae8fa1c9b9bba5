"""YAML -> plain data with source positions; `extends` chains, deep-merged.

Only `yaml.SafeLoader` is used: tags that would build Python objects are errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from archlab.lang.errors import SpecError, SpecIssue, format_path

Pos = tuple[str, int, int]  # file, line, col (1-based)
MAX_DEPTH = 64
MAX_BYTES = 4 << 20


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


class _Loader(yaml.SafeLoader):
    """The safe loader, reading `1e-6` as a number as YAML 1.2 does (YAML 1.1 wants a dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
MAX_NODES = 200_000  # aliases can make a small file expand enormously ("billion laughs")


class _TooLarge(Exception):
    pass


def _build(node: yaml.Node, loader: _Loader, file: str, path: tuple, positions, errors, depth=0):
    if len(positions) > 2 * MAX_NODES:
        raise _TooLarge
    here = (file, node.start_mark.line + 1, node.start_mark.column + 1)
    positions.setdefault(path, here)
    positions[("$value",) + path] = here
    if depth > MAX_DEPTH:
        errors.append(
            SpecIssue(
                file,
                *positions[path][1:],
                format_path(path),
                f"nested deeper than {MAX_DEPTH} levels",
            )
        )
        return None
    standard = {
        yaml.MappingNode: "tag:yaml.org,2002:map",
        yaml.SequenceNode: "tag:yaml.org,2002:seq",
    }
    if type(node) in standard and node.tag != standard[type(node)]:
        errors.append(
            _at(
                file,
                node,
                path,
                f"unsupported YAML tag {node.tag!r}: a spec holds "
                "plain mappings, lists and scalars",
            )
        )
        return None
    if isinstance(node, yaml.MappingNode):
        explicit = [k for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge"]
        loader.flatten_mapping(node)  # merged (`<<`) entries first, then the explicit ones
        out: dict = {}
        seen: set = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                errors.append(_at(file, key_node, path, "mapping keys must be plain scalars"))
                continue
            key = loader.construct_object(key_node)
            if not isinstance(key, str | int) or isinstance(key, bool):
                key = str(key)
            if key in seen and key_node in explicit:
                errors.append(_at(file, key_node, path + (key,), "duplicate key"))
                continue
            if key_node in explicit:
                seen.add(key)
            positions[path + (key,)] = (
                file,
                key_node.start_mark.line + 1,
                key_node.start_mark.column + 1,
            )
            out[key] = _build(value_node, loader, file, path + (key,), positions, errors, depth + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [
            _build(item, loader, file, path + (i,), positions, errors, depth + 1)
            for i, item in enumerate(node.value)
        ]
    return loader.construct_object(node)


def _at(file: str, node: yaml.Node, path: tuple, message: str) -> SpecIssue:
    return SpecIssue(
        file, node.start_mark.line + 1, node.start_mark.column + 1, format_path(path), message
    )


def parse_yaml(text: str, file: str) -> Source:
    """Parse one YAML document into a Source; any YAML problem becomes a SpecError."""
    if len(text) > MAX_BYTES:
        raise SpecError([SpecIssue(file, 0, 0, "", f"spec is larger than {MAX_BYTES} bytes")])
    loader = None
    try:
        loader = _Loader(text)
        node = loader.get_single_node()
        positions: dict[tuple, Pos] = {}
        errors: list[SpecIssue] = []
        data = {} if node is None else _build(node, loader, file, (), positions, errors)
        values = {p[1:]: v for p, v in positions.items() if p[:1] == ("$value",)}
        positions = {p: v for p, v in positions.items() if p[:1] != ("$value",)}
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        problem = " ".join(str(p) for p in (e.context, e.problem) if p) or "invalid YAML"
        raise SpecError([SpecIssue(file, line, col, "", f"YAML syntax error: {problem}")]) from None
    except yaml.reader.ReaderError as e:
        raise SpecError(
            [
                SpecIssue(
                    file,
                    0,
                    e.position + 1 if e.position is not None else 0,
                    "",
                    f"not a text file: {e.reason} at character {e.position}",
                )
            ]
        ) from None
    except (yaml.YAMLError, ValueError, TypeError, OverflowError) as e:
        raise SpecError([SpecIssue(file, 0, 0, "", f"YAML error: {e}")]) from None
    except RecursionError:
        raise SpecError([SpecIssue(file, 0, 0, "", "YAML nested too deeply")]) from None
    except _TooLarge:
        raise SpecError(
            [SpecIssue(file, 0, 0, "", f"YAML expands to more than {MAX_NODES} nodes (aliases)")]
        ) from None
    finally:
        if loader is not None:
            loader.dispose()
    if errors:
        raise SpecError(errors)
    return Source(data, positions, file, values)


def deep_merge(base: Source, child: Source) -> Source:
    """Child over base: mappings merge, lists and scalars replace (with their positions)."""
    positions, values = dict(base.positions), dict(base.values)

    def merge(b: Any, c: Any, path: tuple) -> Any:
        if isinstance(b, dict) and isinstance(c, dict):
            out = dict(b)
            for k, v in c.items():
                out[k] = merge(b[k], v, path + (k,)) if k in b else _take(v, path + (k,))
            return out
        return _take(c, path)

    def _take(value: Any, path: tuple) -> Any:
        for table, new in ((positions, child.positions), (values, child.values)):
            for p in [p for p in table if p[: len(path)] == path]:
                del table[p]
            table.update({p: v for p, v in new.items() if p[: len(path)] == path})
        return value

    data = merge(base.data, child.data, ())
    positions[()] = child.positions.get((), (child.file, 1, 1))
    return Source(data, positions, child.file, values)


def load_file(path: str | Path, _chain: tuple[Path, ...] = ()) -> Source:
    """Load a spec file and resolve its `extends` chain (paths relative to the file)."""
    path = Path(path)
    shown = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([SpecIssue(shown, 0, 0, "", "file not found")]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError([SpecIssue(shown, 0, 0, "", f"cannot read file: {e}")]) from None
    source = parse_yaml(text, shown)
    return resolve_extends(source, path.resolve().parent, _chain + (path.resolve(),))


def resolve_extends(source: Source, base_dir: Path, chain: tuple[Path, ...] = ()) -> Source:
    """Merge the spec named by `extends` (and its own chain) under `source`."""
    if not isinstance(source.data, dict) or "extends" not in source.data:
        return source
    target = source.data["extends"]
    if not isinstance(target, str) or not target:
        raise SpecError([source.issue(("extends",), "must be a file path (a string)")])
    parent_path = (base_dir / target).resolve()
    if parent_path in chain:
        cycle = " -> ".join(p.name for p in (*chain, parent_path))
        raise SpecError([source.issue(("extends",), f"extends cycle: {cycle}")])
    if not parent_path.is_file():
        raise SpecError([source.issue(("extends",), f"file not found: {target}")])
    parent = load_file(parent_path, chain)
    if not isinstance(parent.data, dict):
        raise SpecError([source.issue(("extends",), f"{target} is not a mapping")])
    own = Source(
        {k: v for k, v in source.data.items() if k != "extends"},
        source.positions,
        source.file,
        source.values,
    )
    return deep_merge(parent, own)


def load_source(spec: str | Path | dict) -> Source:
    """A path, a YAML string or a dict -> Source (with `extends` resolved)."""
    if isinstance(spec, dict):
        return resolve_extends(Source(spec, {}, "<dict>"), Path.cwd())
    if isinstance(spec, Path):
        return load_file(spec)
    if isinstance(spec, str):
        looks_like_path = "\n" not in spec and spec.strip().endswith((".yaml", ".yml"))
        try:
            is_file = "\n" not in spec and Path(spec).is_file()
        except (OSError, ValueError):  # not a possible path (too long, NUL byte): YAML
            is_file = False
        if looks_like_path or is_file:
            return load_file(spec)
        return resolve_extends(parse_yaml(spec, "<string>"), Path.cwd())
    raise TypeError(f"a spec is a path, a YAML string or a dict, not {type(spec).__name__}")
