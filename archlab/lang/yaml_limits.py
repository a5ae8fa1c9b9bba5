"""YAML text -> a node graph, within limits, or a positioned problem.

The text is read twice by the same parser (libyaml's when PyYAML has it, else PyYAML's
own): first as a stream of events, counted against the limits (nodes, aliases, nesting)
and searched for explicit tags, stopping at the first limit crossed; then composed into
nodes. Aliases share nodes, so the graph is measured as it would expand (a recursive
alias is refused) before anything is built from it ("billion laughs" are refused in
milliseconds). Every problem carries the line and column (1-based) it is about.
"""

from __future__ import annotations

import re

import yaml
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

MAX_BYTES = 4 << 20  # of UTF-8 text
MAX_DEPTH = 64  # nested mappings and lists
MAX_NODES = 100_000  # as written, and after aliases are expanded
MAX_ALIASES = 10_000

MERGE = "tag:yaml.org,2002:merge"
_DROPPED = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:value"}  # read as strings
_FLOAT_12 = re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$")


class YamlProblem(Exception):
    """A problem with the YAML itself, at (line, col), 1-based (0 when unknown)."""

    def __init__(self, message: str, line: int = 0, col: int = 0):
        super().__init__(message)
        self.message, self.line, self.col = message, line, col


def _resolvers() -> dict:
    """YAML 1.1's implicit types without timestamps and `=`, plus YAML 1.2's `1e-6`."""
    table = {
        first: [(tag, rx) for tag, rx in entries if tag not in _DROPPED]
        for first, entries in Resolver.yaml_implicit_resolvers.items()
    }
    for first in "-+0123456789":
        table.setdefault(first, []).append(("tag:yaml.org,2002:float", _FLOAT_12))
    return table


class _SpecResolver(Resolver):
    yaml_implicit_resolvers = _resolvers()


if getattr(yaml, "__with_libyaml__", False):
    from yaml.cyaml import CParser

    class NodeLoader(CParser, SafeConstructor, _SpecResolver):
        """libyaml's parser and composer; the safe constructor for scalars."""

        BYTE_POSITIONS = True  # libyaml's reader errors count bytes of UTF-8

        def __init__(self, text: str):
            CParser.__init__(self, text)
            SafeConstructor.__init__(self)
            _SpecResolver.__init__(self)

else:  # pragma: no cover - PyYAML without libyaml
    from yaml.composer import Composer
    from yaml.parser import Parser
    from yaml.reader import Reader
    from yaml.scanner import Scanner

    class NodeLoader(Reader, Scanner, Parser, Composer, SafeConstructor, _SpecResolver):
        """PyYAML's own parser and composer (slower; the same limits)."""

        BYTE_POSITIONS = False

        def __init__(self, text: str):
            Reader.__init__(self, text)
            Scanner.__init__(self)
            Parser.__init__(self)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            _SpecResolver.__init__(self)


_NODE_OF = {
    yaml.ScalarEvent: yaml.ScalarNode,
    yaml.SequenceStartEvent: yaml.SequenceNode,
    yaml.MappingStartEvent: yaml.MappingNode,
}


def line_col(text: str, index: int) -> tuple[int, int]:
    """1-based (line, column) of character `index` of `text`."""
    index = max(0, min(index, len(text)))
    line_start = text.rfind("\n", 0, index) + 1
    return text.count("\n", 0, index) + 1, index - line_start + 1


def _mark(mark) -> tuple[int, int]:
    return (mark.line + 1, mark.column + 1) if mark is not None else (0, 0)


def _scan(text: str) -> tuple[dict[tuple[int, type], str], int]:
    """Check the event stream against the limits; returns the explicit tags by
    (position index, node type) and the number of aliases."""
    loader = NodeLoader(text)
    nodes = aliases = depth = 0
    tagged: dict[tuple[int, type], str] = {}
    try:
        while loader.check_event():
            event = loader.get_event()
            kind = type(event)
            if kind is yaml.AliasEvent:
                aliases += 1
                if aliases > MAX_ALIASES:
                    raise YamlProblem(
                        f"more than {MAX_ALIASES:,} aliases (the limit)", *_mark(event.start_mark)
                    )
                continue
            if kind in (yaml.SequenceEndEvent, yaml.MappingEndEvent):
                depth -= 1
                continue
            if kind not in _NODE_OF:
                continue
            nodes += 1
            if nodes > MAX_NODES:
                raise YamlProblem(
                    f"the YAML has more than {MAX_NODES:,} nodes (values, keys, lists and "
                    "mappings; the limit)",
                    *_mark(event.start_mark),
                )
            if event.tag is not None:
                tagged[(event.start_mark.index, _NODE_OF[kind])] = event.tag
            if kind is not yaml.ScalarEvent:
                depth += 1
                if depth > MAX_DEPTH:
                    raise YamlProblem(
                        f"nested deeper than {MAX_DEPTH} levels", *_mark(event.start_mark)
                    )
    finally:
        loader.dispose()
    return tagged, aliases


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def expanded_sizes(root) -> dict[int, int]:
    """id(node) -> how many nodes it stands for once aliases are expanded (capped just
    above MAX_NODES). A node that contains itself through an alias is a YamlProblem."""
    size: dict[int, int] = {}
    open_: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            size[key] = min(MAX_NODES + 1, 1 + sum(size[id(c)] for c in _children(node)))
            continue
        if key in size:
            continue
        if key in open_:
            raise YamlProblem(
                "an alias refers to a mapping or list that contains it (a recursive structure)",
                *_mark(node.start_mark),
            )
        open_.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)
    return size


def _too_big(root, size: dict[int, int]) -> YamlProblem:
    node = root
    while True:
        big = [c for c in _children(node) if size[id(c)] > MAX_NODES]
        if not big:
            break
        node = big[0]
    return YamlProblem(
        f"the YAML expands to more than {MAX_NODES:,} nodes through its aliases (the limit)",
        *_mark(node.start_mark),
    )


def _reader_problem(text: str, e: yaml.reader.ReaderError) -> YamlProblem:
    index = e.position or 0
    if NodeLoader.BYTE_POSITIONS:
        index = len(text.encode("utf-8", "surrogatepass")[:index].decode("utf-8", "replace"))
    line, col = line_col(text, index)
    char = f" (character #x{e.character:04x})" if isinstance(e.character, int) else ""
    return YamlProblem(f"not a text file: {e.reason}{char}", line, col)


def compose(text: str):
    """(root node or None, the loader that constructs its scalars, explicit tags by
    position). Raises YamlProblem. The caller disposes of the loader."""
    size = len(text) if len(text) > MAX_BYTES else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise YamlProblem(f"larger than {MAX_BYTES:,} bytes (4 MiB, the limit)", 1, 1)
    loader = None
    try:
        tagged, aliases = _scan(text)
        loader = NodeLoader(text)
        root = loader.get_single_node()
        if root is not None and aliases:  # without aliases the nodes were counted
            size_of = expanded_sizes(root)
            if size_of[id(root)] > MAX_NODES:
                raise _too_big(root, size_of)
        return root, loader, tagged
    except Exception as e:
        if loader is not None:
            loader.dispose()
        raise _problem(text, e) from None


def _problem(text: str, e: Exception) -> Exception:
    """The YamlProblem an exception from the parser stands for."""
    if isinstance(e, YamlProblem):
        return e
    if isinstance(e, yaml.MarkedYAMLError):
        line, col = _mark(e.problem_mark or e.context_mark)
        problem = " ".join(str(p) for p in (e.context, e.problem) if p) or "invalid YAML"
        return YamlProblem(f"YAML syntax error: {problem}", line, col)
    if isinstance(e, yaml.reader.ReaderError):
        return _reader_problem(text, e)
    if isinstance(e, UnicodeEncodeError):  # a lone surrogate in a Python string
        return YamlProblem("not a text file: a lone surrogate character", *line_col(text, e.start))
    if isinstance(e, RecursionError):
        return YamlProblem(f"nested deeper than {MAX_DEPTH} levels", 1, 1)
    if isinstance(e, yaml.YAMLError | ValueError | TypeError | OverflowError | MemoryError):
        return YamlProblem(f"YAML error: {str(e)[:200]}", 1, 1)
    return e
