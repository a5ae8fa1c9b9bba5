"""Property-based fuzzing of the bundled specs: mutated at the YAML level (tags, anchors
and aliases, alias bombs, types, unicode, control characters, bytes that are not UTF-8,
huge and negative numbers, deep nesting, truncation, `extends` to odd paths) and at the
spec level (values replaced, keys added and removed). Every input either compiles (and
costs) or raises SpecError whose every error points into a file (line and column > 0),
within TIME_BOUND seconds of CPU time; `archlab validate --json` exits 0 or 1 on it.

CI runs a fixed few hundred cases (under a minute); ARCHLAB_FUZZ_EXAMPLES=10000 runs that
many random ones (docs/language.md, "Robustness", has the count and the result)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archlab
from archlab import SpecError
from archlab.cli import main
from archlab.lang.loader import parse_yaml

ROOT = Path(__file__).resolve().parents[2]
SPECS = {
    p.relative_to(ROOT / "specs").as_posix(): p.read_text() for p in ROOT.glob("specs/**/*.yaml")
}
EXAMPLES = int(os.environ.get("ARCHLAB_FUZZ_EXAMPLES", "300"))
FIXED = "ARCHLAB_FUZZ_EXAMPLES" not in os.environ
TIME_BOUND = 2.0  # seconds of CPU time per case
VALUE_LINE = re.compile(r"^(\s*(?:- )?[\w*-]+:[ \t]+|\s*- )(\S.*)$")

TAGS = [
    "!!binary",
    "!!timestamp",
    "!!bool",
    "!!int",
    "!!float",
    "!!str",
    "!!null",
    "!!map",
    "!!seq",
    "!!set",
    "!!omap",
    "!!python/object:os.system",
    "!!python/name:os.system",
    "!custom",
    "!",
    "!<tag:example.com,2000:x>",
]
SCALARS = [
    "-1",
    "0",
    "-0.0",
    "1e309",
    "-1e309",
    ".nan",
    ".inf",
    "0x7fffffffffffffff",
    "0o777",
    "1_000",
    "1:30",
    "2001-12-14",
    "2001-12-14t21:59:43.10-05:00",
    "=",
    "<<",
    "~",
    "yes",
    "off",
    "９",
    "'４'",
    '"\\0"',
    '"\\x07\\x1b"',
    '"\\ud800"',
    '"\\U0001F600"',
    "(R- L-x2",
    "Rx3",
    "(((R)x100)x100)x100",
    "d_model // 2.0",
    "10 ** 10 ** 10",
    "__import__('os')",
    "4 * d_model",
    "[]",
    "{}",
    "[mlp, [mlp]]",
    "{kind: attention, window: 64}",
    "{parallel: [rnn, rnn]}",
    "mlpp",
]
EXTENDS = [
    "/etc/passwd",
    "/etc/hostname.yaml",
    "/dev/zero",
    "/dev/stdin",
    ".",
    "..",
    "_case.yaml",
    "../paper",
    "../paper/base-1.3b.yaml",
    "../tiny/rat.yaml",
    '"a\\0b.yaml"',
    "x" * 300 + ".yaml",
    "/".join(["d" * 200] * 30) + ".yaml",
    "../../../../../../../../etc/x.yaml",
    "~/.ssh/config.yaml",
    "fifo.yaml",
    "loop.yaml",
    "dir.yaml",
    "big.yaml",
    "latin1.yaml",
    "secret.txt",
    "list.yaml",
    "''",
    "123",
    "[a.yaml]",
    "nested/../../paper/rat.yaml",
]
CONTROL = ["\x00", "\x07", "\x1b", "\x7f", "\x85", "\u2028", "\ufeff", "\ufffe", "\t", "\r"]


def _value_lines(lines: list[str]) -> list[int]:
    return [i for i, line in enumerate(lines) if VALUE_LINE.match(line)]


def _at_value(draw, text: str, render) -> str:
    lines = text.split("\n")
    candidates = _value_lines(lines)
    if not candidates:
        return text
    i = draw(st.sampled_from(candidates))
    m = VALUE_LINE.match(lines[i])
    lines[i] = m[1] + render(m[2])
    return "\n".join(lines)


def _random_spot(draw, text: str, insert: str) -> str:
    i = draw(st.integers(0, len(text)))
    return text[:i] + insert + text[i:]


def op_tag(draw, text):
    tag = draw(st.sampled_from(TAGS))
    return _at_value(draw, text, lambda v: f"{tag} {v}")


def op_scalar(draw, text):
    value = draw(
        st.one_of(
            st.sampled_from(SCALARS),
            st.integers(-(10**30), 10**30).map(str),
            st.integers(1, 6000).map(lambda n: "9" * n),
            st.text(max_size=20).map(json.dumps),
        )
    )
    return _at_value(draw, text, lambda _: value)


def op_alias(draw, text):
    text = _at_value(draw, text, lambda v: f"&a {v}")
    return _at_value(draw, text, lambda _: draw(st.sampled_from(["*a", "*b", "[*a, *a]"])))


def op_laughs(draw, text):
    n = draw(st.integers(1, 12))
    bomb = 'l0: &l0 ["x","x","x","x","x","x","x","x","x"]\n'
    bomb += "".join(f"l{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 9) + "]\n" for i in range(1, n))
    return bomb + text


def op_recursive(draw, text):
    return text + draw(
        st.sampled_from(["\nr: &r [*r]\n", "\nr: &r {a: *r}\n", "\nr: &r {<<: *r}\n"])
    )


def op_merge(draw, text):
    return _at_value(draw, text, lambda v: draw(st.sampled_from(["{<<: 3}", "{<<: [1]}", v])))


def op_deep(draw, text):
    n = draw(st.integers(1, 3000))
    kind = draw(st.sampled_from(["[", "{a: ", "- "]))
    close = {"[": "]", "{a: ": "}", "- ": ""}[kind]
    return _at_value(draw, text, lambda _: kind * n + "1" + close * n)


def op_extends(draw, text):
    target = draw(st.sampled_from(EXTENDS))
    lines = [line for line in text.split("\n") if not line.startswith("extends:")]
    return f"extends: {target}\n" + "\n".join(lines)


def op_unicode(draw, text):
    return _random_spot(draw, text, draw(st.text(min_size=1, max_size=8)))


def op_control(draw, text):
    return _random_spot(draw, text, draw(st.sampled_from(CONTROL)))


def op_bytes(draw, text):
    data = text.encode("utf-8")
    i = draw(st.integers(0, len(data)))
    return data[:i] + draw(st.binary(min_size=1, max_size=6)) + data[i:]


def op_truncate(draw, text):
    return text[: draw(st.integers(0, len(text)))]


def op_lines(draw, text):
    lines = text.split("\n")
    i = draw(st.integers(0, len(lines) - 1))
    action = draw(st.sampled_from(["dup", "del", "tab", "dedent", "indent"]))
    if action == "dup":
        lines.insert(i, lines[i])
    elif action == "del":
        del lines[i]
    elif action == "tab":
        lines[i] = "\t" + lines[i]
    elif action == "dedent":
        lines[i] = lines[i].lstrip()
    else:
        lines[i] = "   " + lines[i]
    return "\n".join(lines)


def op_big(draw, text):
    return text + "\n# " + "x" * draw(st.sampled_from([10, 4 << 20]))


VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(),
        st.text(max_size=12),
        st.sampled_from(["rat", "(R-)x3", "4 * d_model", "R)x", "parallel", "extends.yaml"]),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(obj, prefix=()):
    yield prefix
    if len(prefix) > 12:  # deep (or recursive, through aliases): go no further
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def op_spec(draw, text):
    """Spec level: a value replaced, a key added or one removed."""
    try:  # archlab's loader: bounded (PyYAML's own would expand an alias bomb)
        source = parse_yaml(text, "<fuzz>")
    except SpecError:
        return text
    if len(source.values) > 2000:
        return text
    data = source.data
    if not isinstance(data, dict) or not data:
        return text
    path = draw(st.sampled_from([p for p in _paths(data) if p]))
    parent = data
    for part in path[:-1]:
        parent = parent[part]
    action = draw(st.sampled_from(["replace", "add", "delete"]))
    if action == "replace":
        parent[path[-1]] = draw(VALUES)
    elif action == "add" and isinstance(parent, dict):
        parent[draw(st.text(max_size=10))] = draw(VALUES)
    elif isinstance(parent, dict):
        del parent[path[-1]]
    return yaml.safe_dump(data, allow_unicode=True)


OPS = [
    op_tag,
    op_scalar,
    op_alias,
    op_laughs,
    op_recursive,
    op_merge,
    op_deep,
    op_extends,
    op_unicode,
    op_control,
    op_bytes,
    op_truncate,
    op_lines,
    op_big,
    op_spec,
    op_spec,
]


@st.composite
def cases(draw):
    name = draw(st.sampled_from(sorted(SPECS)))
    text: str | bytes = SPECS[name]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(OPS))
        if isinstance(text, bytes):
            break  # bytes that are not UTF-8 are the last word
        text = op(draw, text)
    return name, text


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A copy of specs/ in a project folder of its own, with odd files to extend."""
    root = tmp_path_factory.mktemp("fuzz")
    (root / "pyproject.toml").write_text("")
    for name, text in SPECS.items():
        (root / "specs" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "specs" / name).write_text(text)
    for folder in {(root / "specs" / n).parent for n in SPECS}:
        os.mkfifo(folder / "fifo.yaml")
        (folder / "loop.yaml").symlink_to(folder / "loop2.yaml")
        (folder / "loop2.yaml").symlink_to(folder / "loop.yaml")
        (folder / "dir.yaml").mkdir()
        (folder / "big.yaml").write_text("# " + "x" * (4 << 20))
        (folder / "latin1.yaml").write_bytes(b"model: {d_model: 8}\nname: caf\xe9\n")
        (folder / "secret.txt").write_text("password: hunter2\n")
        (folder / "list.yaml").write_text("- 1\n- 2\n")
    return root


def check(tree: Path, name: str, text: str | bytes) -> None:
    path = tree / "specs" / Path(name).parent / "_case.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_bytes(text.encode("utf-8", "surrogatepass"))
    start = time.process_time()
    try:
        plan = archlab.compile(str(path))
        archlab.cost(plan, seq_len=min(plan.model.max_seq_len, 1 << 16))
    except SpecError as e:
        assert e.errors, "a SpecError lists at least one error"
        for err in e.errors:
            assert err.line > 0 and err.col > 0, f"no position: {err}"
            assert str(err).startswith(f"{err.file}:{err.line}:{err.col}: "), err
            assert "hunter2" not in err.message, err
    elapsed = time.process_time() - start
    assert elapsed < TIME_BOUND, f"{elapsed:.2f} s"


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=FIXED,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(case=cases())
def test_mutated_specs_compile_or_fail_with_positions(tree, case):
    check(tree, *case)


@settings(
    max_examples=max(20, EXAMPLES // 10),
    deadline=None,
    derandomize=FIXED,
    suppress_health_check=list(HealthCheck),
    database=None,
)
@given(case=cases())
def test_validate_json_exits_0_or_1(tree, case):
    name, text = case
    path = tree / "specs" / Path(name).parent / "_cli_case.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        status = main(["validate", "--json", str(path)])
    assert status in (0, 1)
    doc = json.loads(out.getvalue())
    assert doc[0]["valid"] is (status == 0)


def test_every_bundled_spec_compiles_in_the_copy(tree):
    for name in SPECS:
        if "base" not in name:
            archlab.compile(str(tree / "specs" / name))
