"""Property test: any input ends in a plan or a clean SpecError with positions, never
in another exception (no traceback for users)."""

from __future__ import annotations

import copy

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import archlab
from archlab import SpecError

VALID = {
    "name": "fuzz",
    "model": {"d_model": 64, "vocab_size": 100, "max_seq_len": 64, "dtype": "float32"},
    "defaults": {
        "rat": {"heads": 4, "chunk_size": 8},
        "local_attention": {"heads": 4, "window": 8},
        "attention": {"heads": 4},
        "mlp": {"hidden": "2 * d_model"},
    },
    "symbols": {"W": {"kind": "local_attention", "window": 4}},
    "stack": ["(R- L-)x2", {"kind": "rat", "chunk_size": 16}, {"repeat": 2, "stack": ["mlp"]}],
    "at": {-1: {"kind": "attention", "heads": 2}},
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.sampled_from(
        [
            "(R-",
            "R)x",
            "(R-)x999999999",
            "((((",
            "x3",
            "*-M",
            "rat",
            "4 * d_model",
            "10 ** 10 ** 10",
            "__import__('os')",
            "d_model // 0",
            "min()",
            "()",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from paths(v, prefix + (i,))


@st.composite
def mutated_specs(draw):
    spec = copy.deepcopy(VALID)
    for _ in range(draw(st.integers(1, 4))):
        all_paths = [p for p in paths(spec) if p]
        path = draw(st.sampled_from(all_paths))
        parent = spec
        for part in path[:-1]:
            parent = parent[part]
        action = draw(st.sampled_from(["replace", "add_key", "delete"]))
        if action == "replace":
            parent[path[-1]] = draw(values)
        elif action == "add_key" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = draw(values)
        elif isinstance(parent, dict):
            del parent[path[-1]]
    return yaml.safe_dump(spec, allow_unicode=True)


def deep(n: int) -> str:
    return "stack: " + "[" * n + "mlp" + "]" * n + "\nmodel: {d_model: 8, vocab_size: 4}\n"


junk = st.one_of(
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.text(max_size=200),
    st.integers(1, 3000).map(deep),
    st.integers(1, 200).map(
        lambda n: (
            "stack: '" + "(" * n + "R" + ")x2" * n + "'\n"
            "model: {d_model: 8, vocab_size: 4}\ndefaults: {rat: {heads: 1, "
            "chunk_size: 1}}\n"
        )
    ),
    st.sampled_from(
        [
            "{",
            "]",
            "a: b: c",
            "- - -",
            "stack: !!binary AAAA",
            "&a [*a]",
            "a: &x {b: *x}",
            "model: {d_model: 8, vocab_size: 4}\nstack: *undefined",
        ]
    ),
)


def check(text: str) -> None:
    try:
        archlab.compile(text + ("\n" if "\n" not in text else ""))
    except SpecError as e:
        assert e.errors, "a SpecError must list at least one error"
        for err in e.errors:
            assert isinstance(err.line, int) and isinstance(err.col, int)
            assert isinstance(err.message, str) and err.message
            assert str(err).startswith(err.file)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated_specs())
def test_mutated_specs_never_crash(text):
    check(text)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(junk)
def test_junk_never_crashes(text):
    check(text)


def test_the_unmutated_spec_is_valid():
    plan = archlab.compile(yaml.safe_dump(VALID))
    assert len(plan.blocks) == 11
