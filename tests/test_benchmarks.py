"""The benchmark scripts run end to end (tiny sizes on the CPU), so that a GPU session
spends its time measuring, not debugging them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_rat_layer_small_run(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the interpreter is too slow here
    out = tmp_path / "rat_layer.json"
    assert load("rat_layer").main(["--small", "--repeats", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {"command", "date", "device", "torch", "results"} <= set(doc)
    done = {(r["variant"], r["mode"]) for r in doc["results"] if r["status"] == "ok"}
    assert ("rat L=16 reference", "train") in done and ("attention sdpa", "decode") in done
    assert "rat L=16 triton" in capsys.readouterr().out  # listed as unavailable on a CPU
