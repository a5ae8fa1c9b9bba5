"""Regression tests for the edges found by fuzzing: every input here once crashed, hung or
gave a poor message. Never a traceback, never a hang: a Plan, or a SpecError whose every
error points into the file (line:col)."""

from __future__ import annotations

import json
import os
import time

import jsonschema
import pytest

import archlab
from archlab import SpecError
from archlab.lang.loader import Source, deep_merge, load_source, parse_yaml
from archlab.lang.spec import json_schema

M = "model: {d_model: 64, vocab_size: 100}\n"


def errors(text_or_path, **kw) -> list:
    with pytest.raises(SpecError) as info:
        archlab.compile(text_or_path, **kw) if not kw else load_source(text_or_path, **kw)
    return info.value.errors


def fast(seconds: float = 1.0):
    """A context that fails when its body takes more CPU time than `seconds`."""

    class Timer:
        def __enter__(self):
            self.start = time.process_time()

        def __exit__(self, *exc):
            elapsed = time.process_time() - self.start
            assert exc[0] is not None or elapsed < seconds, f"took {elapsed:.2f} s"

    return Timer()


# --- 4. exceptions from the loader are positioned SpecErrors ----------------------------


@pytest.mark.parametrize(
    "text,needle,line",
    [
        ("stack: !!bool yes (A-)x24\n" + M, "unsupported YAML tag '!!bool'", 1),
        (M + "stack: mlp\nname: !!int\n", "'!!int'", 3),
        ("model: !!int\nstack: mlp\n", "'!!int'", 1),
        (M + "stack: !!binary AAAA\n", "'!!binary'", 2),
        (M + "stack: mlp\ndescription: !!timestamp 2001-12-14\n", "'!!timestamp'", 3),
        (M + "stack: mlp\nname: !!timestamp d_model // 2.0\n", "'!!timestamp'", 3),
        (M + "stack: [!!python/object:os.system x]\n", "python/object", 2),
        (M + "stack: mlp\nname: !custom x\n", "'!custom'", 3),
        (M + "stack: !!str mlp\n", "'!!str'", 2),
        (M + "stack: mlp\nat: {!!int 0: mlp}\n", "'!!int'", 3),
        ("archlab: 1.0\n" + M + "stack: mlp\n", "unsupported language version 1.0", 1),
        ("archlab: true\n" + M + "stack: mlp\n", "unsupported language version True", 1),
        ("model: {d_model: 8, vocab_size: 4, dtype: d_model // 2.0}\nstack: mlp\n", "one of", 1),
        (M + "stack: mlp\nname: " + "9" * 5000 + "\n", "more digits", 3),
        (M + "stack: mlp\nname: a\x01b\n", "control characters", 3),
        (M + "stack: [mlp,\n  mlp\n", "YAML syntax error", 4),
        ("a: &a [*a]\n", "recursive", 1),
        (M + "stack: mlp\nx: {<<: 3}\n", "`<<` merges a mapping", 3),
        ("- " * 100 + "x\n", "nested deeper than 64", 1),
    ],
)
def test_yaml_problems_are_positioned_spec_errors(tmp_path, text, needle, line):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    errs = errors(str(path))
    hits = [e for e in errs if needle in e.message]
    assert hits, [str(e) for e in errs]
    assert hits[0].line == line and hits[0].col > 0
    assert all(e.line > 0 for e in errs), [str(e) for e in errs]


@pytest.mark.parametrize(
    "text", ["stack: !!bool yes (A-)x24\n", "model: !!int\n", "x: é\x07\n", "a: [1,\n"]
)
def test_load_spec_raises_spec_errors(text):
    with pytest.raises(SpecError) as info:
        archlab.load_spec(text)
    assert all(e.line > 0 for e in info.value.errors)


def test_plain_dates_and_equals_signs_are_strings():
    plan = archlab.compile(M + "stack: mlp\nname: 2001-12-14\ndescription: '='\n")
    assert plan.name == "2001-12-14"
    assert archlab.load_spec(M + "stack: mlp\nx: =\n").data["x"] == "="


def test_not_utf8_and_control_characters_give_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"model: {d_model: 8, vocab_size: 4}\nname: caf\xe9\nstack: mlp\n")
    [err] = errors(str(path))
    assert (err.line, err.col) == (2, 10) and "not UTF-8" in err.message
    path.write_text(M + "stack: mlp\nname: ab\x07c\n")
    [err] = errors(str(path))
    assert (err.line, err.col) == (3, 9) and "not a text file" in err.message
    assert "character N" not in err.message and "at character" not in err.message
    [err] = errors(M + "stack: mlp\nname: é\x07\n")  # a string: libyaml counts bytes
    assert (err.line, err.col) == (3, 8)


def test_size_limit_counts_bytes_and_is_checked_before_reading(tmp_path, monkeypatch):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(5 << 20)  # sparse: 5 MiB that were never written
    child = tmp_path / "child.yaml"
    child.write_text("extends: big.yaml\n" + M + "stack: mlp\n")

    def no_read(file, *a, **k):
        assert "big" not in str(file), "read before its size was checked"
        return open(file, *a, **k)

    monkeypatch.setattr("archlab.lang.files.open", no_read, raising=False)
    [err] = errors(str(big))
    assert "larger than 4,194,304 bytes" in err.message and err.line == 1
    [err] = errors(str(child))
    assert "larger than" in err.message and "big.yaml" in err.message
    assert (err.file, err.line) == (str(child), 1)
    monkeypatch.undo()
    wide = "name: '" + "é" * (2 << 20) + "'\n"  # 2M characters, 4M bytes of UTF-8
    [err] = errors(M + "stack: mlp\n" + wide)
    assert "larger than" in err.message and err.line == 1


# --- 2. extends: inside the spec's folders only, every failure positioned ----------------


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """tmp/spec/child.yaml and tmp/base.yaml (outside the child's folder); no project."""
    (tmp_path / "spec").mkdir()
    (tmp_path / "base.yaml").write_text(M + "stack: mlp\n")
    (tmp_path / "secret.txt").write_text("password: hunter2\n")
    monkeypatch.chdir(tmp_path / "spec")
    return tmp_path


def test_extends_outside_the_spec_folder_needs_a_root(outside):
    child = outside / "spec" / "child.yaml"
    child.write_text("extends: ../base.yaml\n")
    [err] = errors(str(child))
    assert "outside the folders" in err.message and "--extends-root" in err.message
    assert (err.line, err.col, err.path) == (1, 1, "extends")
    assert archlab.compile(load_source(str(child), roots=[outside])).blocks
    from archlab.lang.loader import extends_roots

    with extends_roots([outside]):
        assert archlab.compile(str(child)).blocks


@pytest.mark.parametrize(
    "target,needle",
    [
        ("../secret.txt", "spec file (.yaml or .yml)"),
        ("secret.txt", "spec file (.yaml or .yml)"),
        ("/etc/passwd", "spec file (.yaml or .yml)"),
        ("missing.yaml", "file not found: missing.yaml"),
        ("folder.yaml", "is a directory"),
        ('"a\\0b.yaml"', "NUL"),
        ("x" * 300 + ".yaml", "file name too long"),
        ("loop.yaml", "symbolic link loop"),
        ("child.yaml", "extends cycle: child.yaml -> child.yaml"),
        ("''", "must be a file path"),
        ("[a.yaml]", "must be a file path"),
    ],
)
def test_extends_failures_are_positioned_and_name_the_path(outside, target, needle):
    spec = outside / "spec"
    (spec / "folder.yaml").mkdir(exist_ok=True)
    if not (spec / "loop.yaml").is_symlink():
        (spec / "loop.yaml").symlink_to(spec / "loop2.yaml")
        (spec / "loop2.yaml").symlink_to(spec / "loop.yaml")
    (spec / "secret.txt").write_text("password: hunter2\n")
    child = spec / "child.yaml"
    child.write_text(f"extends: {target}\n" + M + "stack: mlp\n")
    [err] = errors(str(child))
    assert needle in err.message, err.message
    assert (err.file, err.line, err.path) == (str(child), 1, "extends")
    assert "hunter2" not in err.message


def test_unreadable_parent_is_positioned(outside, monkeypatch):
    (outside / "spec" / "base.yaml").write_text(M + "stack: mlp\n")
    child = outside / "spec" / "child.yaml"
    child.write_text("extends: base.yaml\n")

    def denied(file, *a, **k):
        if str(file).endswith("base.yaml"):
            raise PermissionError(13, "Permission denied")
        return open(file, *a, **k)

    monkeypatch.setattr("archlab.lang.files.open", denied, raising=False)
    [err] = errors(str(child))
    assert "permission denied: base.yaml" in err.message and err.line == 1


def test_extends_chains_are_bounded(outside):
    spec = outside / "spec"
    (spec / "f0.yaml").write_text(M + "stack: mlp\n")
    for i in range(1, 40):
        (spec / f"f{i}.yaml").write_text(f"extends: f{i - 1}.yaml\n")
    assert archlab.compile(str(spec / "f15.yaml")).blocks
    with fast(1.0):
        [err] = errors(str(spec / "f39.yaml"))
    assert "longer than 16 files" in err.message and err.line == 1


def test_yaml_errors_in_a_parent_point_into_the_parent(outside):
    spec = outside / "spec"
    (spec / "base.yaml").write_text("model: {d_model: 8\n")
    (spec / "child.yaml").write_text("extends: base.yaml\nstack: mlp\n")
    [err] = errors(str(spec / "child.yaml"))
    assert err.file.endswith("base.yaml") and err.line > 0


# --- 3. denial of service -----------------------------------------------------------------


def test_many_keys_load_in_linear_time():
    text = "x:\n" + "".join(f"  k{i}: {i}\n" for i in range(45_000))  # 90,003 nodes
    with fast(2.0):
        assert len(parse_yaml(text, "<s>").data["x"]) == 45_000


def test_deep_merge_is_linear():
    n = 40_000
    base = Source(
        {"a": {f"k{i}": i for i in range(n)}}, {("a", f"k{i}"): ("b", i, 1) for i in range(n)}
    )
    child = Source({"a": {f"k{i}": -i for i in range(0, n, 2)}}, {})
    with fast(1.5):
        merged = deep_merge(base, child)
    assert merged.data["a"]["k2"] == -2 and merged.data["a"]["k1"] == 1


def test_parallel_branches_count_toward_the_block_limit():
    text = (
        M + "symbols: {P: {parallel: [" + ", ".join(["rnn"] * 64) + "]}}\n" + 'stack: "(P)x10000"\n'
    )
    with fast(1.0):
        [err] = errors(text)
    assert "more than 10000 blocks" in err.message and "per branch" in err.message
    wide = "{parallel: [" + ", ".join(["rnn"] * 60) + "]}"
    many = M + "stack: '(N)x200'\nat: {" + ", ".join(f"{i}: {wide}" for i in range(200)) + "}\n"
    assert "more than 10000 blocks" in errors(many)[0].message


def test_alias_bombs_are_refused_at_once_with_a_clear_message():
    bomb = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n'
    for i in range(12):
        prev, name = chr(97 + i), chr(98 + i)
        bomb += f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]\n"
    with fast(0.3):
        [err] = errors(bomb + M + "stack: mlp\n")
    assert "through its aliases" in err.message and err.line > 0
    flat = "x: [" + ",".join(["1"] * 110_000) + "]\n"
    with fast(1.5):
        [err] = errors(flat)
    assert "more than 100,000 nodes" in err.message and "alias" not in err.message
    with fast(0.3):
        [err] = errors("x: [" + ",".join(["*a"] * 10_001) + "]\n")  # also undefined
    assert "alias" in err.message


def test_deep_nesting_is_refused_without_recursion():
    with fast(1.0):
        for text in ("x: " + "[" * 100_000, "- " * 1_000_000 + "x", "x: " + "{a: " * 50_000):
            [err] = errors(text)
            assert err.line == 1 and ("nested" in err.message or "nesting" in err.message)


# --- 5. messages ----------------------------------------------------------------------------


def test_a_field_of_another_kind_names_that_kind():
    [err] = errors(M + "stack: [{kind: attention, heads: 4, window: 64}]\n")
    assert err.path == "stack[0].window"
    assert "`window` is a field of local_attention" in err.message


def test_a_check_on_a_derived_value_names_the_field_and_its_source():
    errs = errors(
        "model: {d_model: 512, vocab_size: 10}\ndefaults: {attention: {heads: 7}}\nstack: A\n"
    )
    messages = " | ".join(e.message for e in errs)
    assert "head_dim: must be even when rope is on" in messages
    assert "heads from defaults.attention.heads" in messages


@pytest.mark.parametrize(
    "pattern,needle,offset",
    [
        ("(R- L-x2", "unclosed '('", 0),
        ("(R- (L-)x2", "unclosed '('", 0),
        ("R-)x2", "unmatched ')'", 2),
        ("Rx3", "write (R)x3, not Rx3", 1),
        ("(R-) x3 Nx2", "write (N)x2, not Nx2", 9),
        ("x3", "write (...)x3", 0),
        ("(R)x４", "expected a repeat count", 4),
    ],
)
def test_pattern_messages(pattern, needle, offset):
    [err] = errors(M + f"stack: '{pattern}'\n")
    assert needle in err.message
    caret_line = err.message.splitlines()[-1]
    assert caret_line.index("^") - 4 == offset
    assert "unknown symbol 'x'" not in err.message


def test_long_values_are_cut_in_messages():
    [err] = errors(M + "stack: mlp\nname: [" + ", ".join(["abcdef"] * 5000) + "]\n")
    assert len(err.message) < 200


# --- warnings -------------------------------------------------------------------------------


def test_warnings_for_windows_and_rat_chunks_longer_than_max_seq_len():
    plan = archlab.compile(
        "model: {d_model: 16, vocab_size: 10, max_seq_len: 64}\n"
        "defaults: {local_attention: {heads: 2, window: 100}}\n"
        "stack: ['(L-)x3', {kind: rat, heads: 2, chunk_size: 128}, "
        "{kind: local_attention, heads: 2, window: 64}, "
        "{kind: ssm, head_dim: 8, chunk_size: 256}]\n"
    )
    text = [w.warning() for w in plan.warnings]
    assert len(text) == 2, text  # the default once; the rat chunk; not window 64, not ssm
    assert text[0].startswith("<string>:2:40: defaults.local_attention.window: warning: window")
    assert "chunk_size (128) is larger than model.max_seq_len (64)" in text[1]


# --- 7. the schema ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft202012Validator(json_schema())


@pytest.mark.parametrize(
    "junk",
    [
        {"stack": ["mlpp"]},
        {"stack": "mlpp"},
        {"stack": [{"pattern": "mlpp"}]},
        {"at": {0: {"chunksize": 4}}},
        {"at": {0: {"chunk_size": 4, "window": 8}}},
        {"stack": [{"parallel": ["mlp"]}]},
        {"model": None},
        {"archlab": 2},
    ],
)
def test_schema_rejects(validator, junk):
    assert list(validator.iter_errors(junk)), junk


@pytest.mark.parametrize(
    "good",
    [
        {"stack": "(R- L-)x12"},
        {"stack": ["M-M-M-M*-", "mlp", {"pattern": "(W-)x2"}]},
        {"at": {0: {"chunk_size": 4}, -1: "attention", 2: {"merge": "sum"}}},
        {"defaults": None, "symbols": None, "at": None},
    ],
)
def test_schema_accepts(validator, good):
    assert not list(validator.iter_errors(good)), good


def test_schema_has_real_defaults_and_descriptions():
    schema = json_schema()
    text = json.dumps(schema)
    assert '"default": null' not in text
    defs = schema["$defs"]
    assert defs["RatBlock"]["properties"]["qk_groups"]["default"] == 2
    assert defs["Model"]["properties"]["max_seq_len"]["default"] == 4096
    assert defs["Parallel"]["properties"]["merge"]["default"] == "mean"

    def walk(node, where):
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                assert prop.get("description"), f"{where}.{name} has no description"
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")

    walk(schema, "schema")


def test_the_file_based_loader_and_strings_agree(tmp_path):
    text = M + "stack: '(R-)x2'\ndefaults: {rat: {heads: 4, chunk_size: 8}}\n"
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert archlab.compile(str(path)).kinds() == archlab.compile(text).kinds()
    assert os.path.basename(archlab.compile(str(path)).file) == "s.yaml"
