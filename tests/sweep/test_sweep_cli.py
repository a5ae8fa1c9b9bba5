"""`archlab sweep`: the cost of a 15-point sweep in well under 5 s, its files, its errors,
measuring (faked here, and once for real at a tiny size), probing, and resuming from
`--out` without running a point twice."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest

import archlab.measure.cases as measure_cases
import archlab.measure.probe as probe_module
from archlab.measure.result import Result, Timing

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = str(ROOT / "sweeps" / "rat_chunks.yaml")
TINY = (
    f"base: {ROOT / 'specs' / 'tiny' / 'rat.yaml'}\n"
    "axes:\n  defaults.rat.chunk_size: [8, 16]\nseq: [64]\n"
)


def run_json(main, capsys, *argv) -> dict:
    assert main(["sweep", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_15_point_cost_sweep_is_fast(archlab_main, capsys):
    start = time.perf_counter()
    doc = run_json(archlab_main, capsys, EXAMPLE)
    seconds = time.perf_counter() - start
    print(f"archlab sweep (15 points x 2 lengths, cost only): {seconds:.2f} s in all, "
          f"{doc['timing']['cost_s']:.3f} s costing")  # fmt: skip
    assert seconds < 5.0
    assert doc["schema"] == "archlab.sweep/1" and len(doc["points"]) == 15
    p = doc["points"][12]
    assert p["label"] == "chunk_size=256, stack=(R-)x24"
    assert [c["seq_len"] for c in p["cost"]] == [4096, 32768]
    c = p["cost"][0]
    assert c["decode_bytes_per_token"] == c["decode_bytes"]  # batch 1
    assert c["bw_bound_decode_tok_s"] == pytest.approx(1e12 / c["decode_bytes"])
    fronts = {f["pair"]: f for f in doc["fronts"]}
    assert fronts["decode_4k"]["front"] == [12]  # all-RAT at chunk 256: least cache and bytes
    assert doc["settings"]["measure"] is None and doc["settings"]["probe"] is None


def test_files_and_text(archlab_main, capsys, tmp_path):
    out = tmp_path / "out"
    assert archlab_main(["sweep", EXAMPLE, "--out", str(out), "--bandwidth", "4800"]) == 0
    text = capsys.readouterr().out
    assert "cost of 15 points x 2 lengths:" in text and "bw-bound tok/s @4k" in text
    doc = json.loads((out / "sweep.json").read_text())
    assert doc["settings"]["bandwidth_GBps"] == 4800 and "partial" not in " ".join(doc["notes"])
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert len(rows) == 15 and rows[3]["axis:defaults.rat.chunk_size"] == "32"
    assert {"params", "cache_bytes_per_seq@4096", "bw_bound_decode_tok_s@32768"} <= set(rows[0])
    md = (out / "sweep.md").read_text()
    assert "# Sweep `rat-chunks`" in md and "### decode bytes read per token, T=4k" in md
    for name in doc["files"]:
        assert (out / name).is_file()


def test_invalid_sweep(archlab_main, capsys, tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(TINY.replace("[8, 16]", "[8, -1]"))
    assert archlab_main(["sweep", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}:3:32: axes.defaults.rat.chunk_size[1] (point 1: chunk_size=-1): must be" in err
    assert archlab_main(["sweep", str(tmp_path / "none.yaml")]) == 2


def fake_cases(calls):
    def sweep(plans, modes, sizes, layers, quiet=False, on_result=None):
        calls.append(plans[0].name)
        results = []
        for mode in modes:
            for T in sizes.seqs:
                r = Result(plans[0].name, "", "model", mode, 1, T, "float32", "cpu")
                r.timing = Timing.of([0.01 * len(calls)])
                r.tokens_per_s = 100.0 * len(calls)
                results.append(r)
                if on_result:
                    on_result(results, {})
        return results, {"device": "fake"}, ["CPU: measured on scaled-down copies"]

    return sweep


def test_measure_and_resume(archlab_main, capsys, tmp_path, monkeypatch):
    calls: list[str] = []
    monkeypatch.setattr(measure_cases, "run_cases", fake_cases(calls))
    path = tmp_path / "s.yaml"
    path.write_text(TINY)
    out = str(tmp_path / "out")
    args = [str(path), "--measure", "--seq", "32", "--out", out]
    doc = run_json(archlab_main, capsys, *args)
    assert len(calls) == 2
    m = doc["points"][1]["measured"]
    assert m["measured_as"].startswith("d_model 128") and set(m["cache_bytes"]) == {"32"}
    assert [r["mode"] for r in m["results"]] == ["train", "decode"]
    assert {f["pair"] for f in doc["fronts"]} >= {"measured_decode_32", "measured_train_32"}
    again = run_json(archlab_main, capsys, *args)
    assert len(calls) == 2  # nothing measured twice
    assert "2 points' measurements reused from the earlier run in --out" in again["notes"]
    assert again["points"][1]["measured"] == m
    run_json(archlab_main, capsys, *args[:-4], "--seq", "48", "--out", out)
    assert len(calls) == 4  # other settings: measured again


def test_probe_in_a_sweep_resumes_and_records_failures(archlab_main, capsys, tmp_path, monkeypatch):
    seen: list[int] = []

    def fake_probe(plan, settings, device, on_step=None):
        seen.append(settings.steps)
        if "chunk_size=16" in plan.name:
            raise RuntimeError("boom")
        on_step(settings.steps, settings.steps, 1.0)
        return {"accuracy": 0.5, "model": "copy", "seconds": 1.0, "loss": [1.0], "eval": [],
                "chance": 0.25, "mqar": {"vocab": 64, "pairs": 4, "seq": 32}}  # fmt: skip

    monkeypatch.setattr(probe_module, "run_probe", fake_probe)
    path = tmp_path / "s.yaml"
    path.write_text(TINY)
    args = [str(path), "--probe", "mqar", "--probe-steps", "7", "--out", str(tmp_path / "o")]
    doc = run_json(archlab_main, capsys, *args)
    first, second = doc["points"][0]["probe"], doc["points"][1]["probe"]
    assert first["accuracy"] == 0.5 and second["status"] == "error" and "boom" in second["error"]
    assert doc["settings"]["probe"]["steps"] == 7 and seen == [7, 7]
    assert [f["pair"] for f in doc["fronts"] if f["basis"] == "probe"] == ["recall_64"]
    run_json(archlab_main, capsys, *args)
    assert seen == [7, 7, 7]  # the point that failed runs again; the other is reused


@pytest.mark.slow
def test_measure_for_real_at_a_tiny_size(archlab_main, capsys, tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(TINY)
    doc = run_json(
        archlab_main, capsys, str(path), "--measure", "--mode", "decode", "--seq", "32",
        "--repeats", "1", "--warmup", "0", "--max-time", "0.2", "--threads", "1",
        "--d-model", "64", "--vocab", "128",
    )  # fmt: skip
    for p in doc["points"]:
        (r,) = p["measured"]["results"]
        assert r["status"] == "ok" and r["tokens_per_s"] > 0 and r["scaled"]
    assert any(n.startswith("CPU: measured on scaled-down copies") for n in doc["notes"])
