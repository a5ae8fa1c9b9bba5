"""`archlab profile` and `archlab compare` on the CPU: JSON schema, CSV, OOM in a sweep,
usage errors (exit 2, no traceback), plots and the report."""

from __future__ import annotations

import csv
import io
import itertools
import json
from pathlib import Path

import pytest

from archlab.cli import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "specs" / "tiny"
PAPER = ROOT / "specs" / "paper"
FAST = [
    "--seq",
    "16,32",
    "--repeats",
    "1",
    "--warmup",
    "0",
    "--prompt",
    "8",
    "--generate",
    "2",
    "--max-batch",
    "8",
]

RESULT_KEYS = {
    "spec": str,
    "file": str,
    "target": str,
    "mode": str,
    "batch": int,
    "seq_len": int,
    "dtype": str,
    "device": str,
    "status": str,
    "error": (str, type(None)),
    "timing": (dict, type(None)),
    "unstable": bool,
    "tokens_per_s": (float, type(None)),
    "flops": (int, type(None)),
    "tflops": (float, type(None)),
    "flops_frac": (float, type(None)),
    "bytes": (int, type(None)),
    "gbps": (float, type(None)),
    "bw_frac": (float, type(None)),
    "peak_memory_bytes": (int, type(None)),
    "cache_bytes_measured": (int, type(None)),
    "cache_bytes_analytic": (int, type(None)),
    "backends": dict,
    "cuda_graph": (bool, type(None)),
    "compiled": bool,
    "compile_s": (float, type(None)),
    "scaled": (str, type(None)),
    "extra": dict,
    "notes": list,
}
TIMING_KEYS = {"median_s", "p10_s", "p90_s", "min_s", "max_s", "runs"}


def run_json(capsys, *argv) -> dict:
    assert main(list(map(str, argv))) == 0
    return json.loads(capsys.readouterr().out)


def check_schema(doc: dict) -> None:
    assert doc["schema"] == "archlab.profile/1"
    assert {"device", "matmul_tflops", "copy_gbps", "torch", "dtype"} <= set(doc["device"])
    assert isinstance(doc["notes"], list) and isinstance(doc["settings"], dict)
    for r in doc["results"]:
        assert set(r) == set(RESULT_KEYS)
        for key, kind in RESULT_KEYS.items():
            assert isinstance(r[key], kind), (key, r[key])
        assert r["status"] in ("ok", "oom", "error")
        if r["status"] == "ok":
            assert set(r["timing"]) == TIMING_KEYS and r["tokens_per_s"] > 0


def test_profile_json_schema_all_modes(capsys):
    doc = run_json(capsys, "profile", TINY / "rat_swa.yaml", "--mode", "all", "--json", *FAST)
    check_schema(doc)
    modes = [r["mode"] for r in doc["results"]]
    assert modes == ["train", "train", "prefill", "prefill", "decode", "decode", "throughput"]
    assert all(r["status"] == "ok" for r in doc["results"])
    assert "scaled-down" in doc["notes"][0] and doc["results"][0]["scaled"]
    tput = doc["results"][-1]
    assert tput["extra"]["search"] and tput["batch"] >= 1 and tput["seq_len"] == 8


def test_oom_in_a_sweep_goes_on(capsys):
    doc = run_json(
        capsys,
        "profile",
        TINY / "attention.yaml",
        "--mode",
        "prefill,decode",
        "--decode-batch",
        str(1 << 40),
        "--json",
        *FAST,
    )
    check_schema(doc)
    by_mode = {(r["mode"], r["seq_len"]): r["status"] for r in doc["results"]}
    assert by_mode == {
        ("prefill", 16): "ok",
        ("prefill", 32): "ok",
        ("decode", 16): "oom",
        ("decode", 32): "oom",
    }


def test_profile_table_csv_and_out(tmp_path, capsys):
    out = tmp_path / "o"
    assert (
        main(
            [
                "profile",
                str(TINY / "rat.yaml"),
                "--mode",
                "decode",
                "--out",
                str(out),
                "--csv",
                str(tmp_path / "x.csv"),
                *FAST,
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "scaled-down" in text and "decode" in text and "TFLOP/s" in text
    check_schema(json.loads((out / "profile.json").read_text()))
    rows = list(csv.DictReader(io.StringIO((tmp_path / "x.csv").read_text())))
    assert len(rows) == 2 and rows[0]["mode"] == "decode" and float(rows[0]["median_s"]) > 0
    assert (out / "profile.csv").is_file()


def test_profile_layers(capsys):
    doc = run_json(
        capsys,
        "profile",
        TINY / "rat.yaml",
        TINY / "attention.yaml",
        "--json",
        "--layer",
        "rat:chunk_size=8",
        "--layer",
        "attention",
        "--mode",
        "train,decode",
        *FAST,
    )
    check_schema(doc)
    targets = {r["target"] for r in doc["results"]}
    assert any("chunk_size=8" in t for t in targets) and any("attention" in t for t in targets)
    assert len(doc["results"]) == 2 * 2 * 2


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--mode", "fly"], "unknown mode"),
        (["--layer", "warp"], "unknown kind"),
        (["--layer", "rat:chunk_size"], "key=value"),
        (["--layer", "rat:chunk_size=0"], "--layer rat"),
        (["--layer", "ssm"], "no spec has"),
        (["--layer", "rat", "--mode", "throughput"], "whole models"),
        (["--device", "cuda:0"], None),
        (["--device", "tpu"], "--device"),
        (["--seq", "abc"], "bad length"),
        (["--repeats", "0"], "--repeats"),
        (["--batch", "-1"], "--batch"),
    ],
)
def test_usage_errors_exit_2(argv, message, capsys):
    import torch

    if argv[:2] == ["--device", "cuda:0"] and torch.cuda.is_available():
        pytest.skip("a CUDA device is available")
    assert main(["profile", str(TINY / "rat.yaml"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("archlab: error:") and "Traceback" not in err
    assert message is None or message in err


def test_missing_spec_and_invalid_spec(tmp_path, capsys):
    assert main(["compare", str(tmp_path / "nope.yaml")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {d_model: 8, vocab_size: 10}\nstack: [{kind: rat, heads: 3}]\n")
    assert main(["profile", str(bad)]) == 1
    assert "chunk_size" in capsys.readouterr().err


def test_compare_analytic_only(tmp_path, capsys):
    specs = [PAPER / "attention.yaml", PAPER / "rat.yaml", PAPER / "rat_swa.yaml"]
    doc = run_json(capsys, "compare", *specs, "--seq", "1k,4k", "--json")
    assert doc["schema"] == "archlab.compare/1" and doc["measured"] is None
    assert [(r["spec"], r["seq_len"]) for r in doc["analytic"]][:2] == [
        ("attention-1.3b", 1024),
        ("rat-l16-1.3b", 1024),
    ]
    assert doc["analytic"][0]["ratio"]["cache_bytes"] == 1.0
    assert any(c["metric"] == "train_flops" and c["seq_len"] == 547 for c in doc["crossovers"])
    assert main(["compare", *map(str, specs), "--seq", "1k,4k"]) == 0
    text = capsys.readouterr().out
    assert "rat-l16-1.3b" in text and "(x0.062)" in text and "crossovers" in text


def test_compare_measure_writes_plots_and_report(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "cmp"
    specs = [TINY / "attention.yaml", TINY / "rat.yaml", TINY / "rat_swa.yaml"]
    assert main(["compare", *map(str, specs), "--measure", "--out", str(out), *FAST]) == 0
    text = capsys.readouterr().out
    assert "measured (scaled)" in text and "analytic (as written)" in text
    assert "throughput" in text and "scaled-down" in text
    for stem in ("latency", "cache", "flops", "throughput"):
        assert (out / f"{stem}.png").stat().st_size > 1000
        assert (out / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
    report = (out / "report.md").read_text()
    assert "![latency](latency.png)" in report and "| spec |" in report
    assert "train, measured (scaled)" in report and "params, analytic (as written)" in report
    for name in ("tiny-attention", "tiny-rat", "tiny-rat-swa"):  # every spec's scaling
        assert f"| {name} | d_model 128, heads 4x32, vocab 512, 4 of 8 blocks" in report
    latency = (out / "latency.svg").read_text()
    assert latency.count("4 of 8 blocks") == 3  # the caption: every spec, not the first only
    assert "(decode bytes at batch 4, model)" in latency  # the measured decode batch
    doc = json.loads((out / "compare.json").read_text())
    check_schema(doc["measured"])
    assert len(doc["measured"]["results"]) == 3 * (3 * 2 + 1)


def test_parallel_blocks_profile_at_the_right_position(capsys):
    """Every branch of a parallel block is marked as holding T tokens, so prefill runs
    again and again and decode runs at position T (not 0, 1, 2, ...)."""
    doc = run_json(
        capsys,
        "profile",
        TINY / "parallel.yaml",
        "--mode",
        "prefill,decode",
        "--json",
        "--repeats",
        "3",
        "--warmup",
        "1",
        "--max-time",
        "0.5",
        "--seq",
        "16",
    )
    check_schema(doc)
    assert [(r["mode"], r["status"]) for r in doc["results"]] == [
        ("prefill", "ok"),
        ("decode", "ok"),
    ]


def test_a_target_that_cannot_be_built_is_a_result(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    flex = tmp_path / "flex.yaml"
    flex.write_text("extends: " + str(TINY / "rat.yaml") + "\ndefaults: {rat: {backend: flex}}\n")
    doc = run_json(
        capsys,
        "profile",
        TINY / "rat.yaml",
        flex,
        "--mode",
        "prefill",
        "--json",
        *FAST,
    )
    statuses = [(r["spec"], r["status"]) for r in doc["results"]]
    assert statuses[:2] == [("tiny-rat (rat.yaml)", "ok"), ("tiny-rat (rat.yaml)", "ok")]
    assert [s for _, s in statuses[2:]] == ["error", "error"]
    assert "flex" in doc["results"][-1]["error"]


def test_specs_with_one_name_are_kept_apart(tmp_path, capsys):
    variant = tmp_path / "variant.yaml"
    variant.write_text(
        "extends: " + str(TINY / "rat.yaml") + "\ndefaults: {rat: {chunk_size: 2}}\n"
    )
    doc = run_json(
        capsys,
        "compare",
        TINY / "rat.yaml",
        variant,
        "--measure",
        "--mode",
        "decode",
        "--json",
        *FAST,
    )
    names = {r["spec"] for r in doc["measured"]["results"]}
    assert names == {"tiny-rat (rat.yaml)", "tiny-rat (variant.yaml)"}


def files_seen_after_each_case(monkeypatch, path) -> list[dict]:
    """Spy on the sweep: the JSON at `path` as it stands after each case's `on_result`."""
    import archlab.measure.cases as cases_module

    seen, real_sweep = [], cases_module.run_cases

    def sweep(*args, on_result=None, **kw):
        def spy(results, peaks):
            on_result(results, peaks)
            seen.append(json.loads(path.read_text()))

        return real_sweep(*args, on_result=spy, **kw)

    monkeypatch.setattr(cases_module, "run_cases", sweep)
    return seen


def test_out_is_written_after_every_case(tmp_path, monkeypatch, capsys):
    """A run cut short keeps what it measured: with --out, profile.json is rewritten after
    each case (marked partial), and the finished run replaces it with the whole sweep."""
    seen = files_seen_after_each_case(monkeypatch, tmp_path / "profile.json")
    argv = ["profile", str(TINY / "rat.yaml"), "--mode", "train,prefill", "--out", str(tmp_path)]
    assert main([*argv, *FAST]) == 0
    assert [len(d["results"]) for d in seen] == [1, 2, 3, 4]
    assert all(any("partial" in n for n in d["notes"]) for d in seen)
    final = json.loads((tmp_path / "profile.json").read_text())
    assert len(final["results"]) == 4 and not any("partial" in n for n in final["notes"])


def test_compare_out_keeps_partial_results_until_done(tmp_path, monkeypatch, capsys):
    """compare --measure --out writes measured.partial.json after every case, so a run cut
    short keeps what it measured; the finished run removes it (compare.json has it all)."""
    seen = files_seen_after_each_case(monkeypatch, tmp_path / "measured.partial.json")
    argv = ["compare", str(TINY / "rat.yaml"), "--measure", "--mode", "prefill"]
    assert main([*argv, "--out", str(tmp_path), *FAST]) == 0
    assert [len(d["results"]) for d in seen] == [1, 2]
    assert all(any("partial" in n for n in d["notes"]) for d in seen)
    assert not (tmp_path / "measured.partial.json").exists()
    final = json.loads((tmp_path / "compare.json").read_text())
    assert len(final["measured"]["results"]) == 2


def test_compare_marks_failed_cases_on_the_latency_plot(tmp_path, capsys):
    """A case that ran out of memory is drawn as a labelled cross, not left out silently;
    compare.json keeps the sweep's settings with the measured results."""
    pytest.importorskip("matplotlib")
    argv = ["compare", str(TINY / "attention.yaml"), str(TINY / "rat.yaml"), "--measure"]
    argv += ["--mode", "decode", "--decode-batch", str(1 << 40), "--out", str(tmp_path)]
    assert main([*argv, *FAST]) == 0
    capsys.readouterr()
    svg = (tmp_path / "latency.svg").read_text()
    assert svg.count(": OOM -->") == 4  # two specs at two lengths, each labelled
    settings = json.loads((tmp_path / "compare.json").read_text())["measured"]["settings"]
    assert settings["decode_batch"] == 1 << 40 and settings["seqs"] == [16, 32]


def test_compare_says_how_every_spec_was_scaled(tmp_path, capsys):
    """One rule for every spec, and each spec's own scaling in the JSON and the text."""
    specs = [TINY / "attention.yaml", TINY / "rat_swa.yaml"]
    argv = ["compare", *map(str, specs), "--measure", "--mode", "decode", *FAST]
    doc = run_json(capsys, *argv, "--json")
    how = {s["name"]: s["measured_as"] for s in doc["specs"]}
    assert how == {
        "tiny-attention": "d_model 128, heads 4x32, vocab 512, 4 of 8 blocks "
        "(2 of 4 units of A-), float32",
        "tiny-rat-swa": "d_model 128, heads 4x32, vocab 512, 4 of 8 blocks "
        "(1 of 2 units of R- L-), float32",
    }
    assert {r["spec"]: r["scaled"] for r in doc["measured"]["results"]} == how
    assert [n for n in doc["notes"] if n.startswith("scaled ")] == [
        f"scaled {k}: {v}" for k, v in how.items()
    ]
    assert main([*argv]) == 0
    text = capsys.readouterr().out
    assert all(f"{k}  {v}" in text or f"{k}    {v}" in text for k, v in how.items())
    assert "analytic (as written)" in text and "measured (scaled)" in text


def test_full_size_on_the_cpu_runs_in_float32(tmp_path, capsys):
    bf16 = tmp_path / "bf16.yaml"
    bf16.write_text(f"extends: {TINY / 'attention.yaml'}\nmodel: {{dtype: bfloat16}}\n")
    argv = ["profile", bf16, "--full-size", "--mode", "prefill", "--json", *FAST]
    doc = run_json(capsys, *argv[: -len(FAST)], "--seq", "16", *FAST[2:])
    assert doc["settings"]["dtype"] == "float32" and doc["device"]["dtype"] == "float32"
    assert [r["dtype"] for r in doc["results"]] == ["float32"]
    assert doc["results"][0]["scaled"] is None
    assert not any("scaled" in n for n in doc["notes"])


def test_unstable_cases_are_flagged(monkeypatch, capsys):
    """Runs whose spread never settles within the time budget: 'unstable' in the JSON,
    a note, and the table's row."""
    import torch

    from archlab.measure import profile, throughput

    throughput.device_peaks(torch.device("cpu"), torch.float32)  # cached before the clock
    ticks = itertools.accumulate(0.002 + 0.02 * (i % 2) for i in range(10**6))
    monkeypatch.setattr(profile, "_clock", lambda: next(ticks))  # runs of 2 or 22 ms
    argv = ["profile", TINY / "rat.yaml", "--mode", "prefill", "--seq", "16", "--warmup", "0"]
    doc = run_json(capsys, *argv, "--repeats", "3", "--max-time", "0.2", "--json")
    r = doc["results"][0]
    assert r["unstable"] is True and r["timing"]["runs"] > 3
    assert any(n.startswith("unstable:") for n in r["notes"])
    assert any("marked unstable" in n for n in doc["notes"])
