"""The probe's runs (archlab/measure/probe_runs.py): a grid of learning rates and seeds,
the summary (the best learning rate's mean over the seeds), worker processes that give
the same figures as one process, failed runs recorded, and the options of `probe` and
`sweep` that set them."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import archlab
import archlab.measure.probe as probe_module
from archlab.measure.mqar import MQAR
from archlab.measure.probe import ProbeSettings, run_probe
from archlab.measure.probe_runs import (
    ProbeFailed,
    ProbeGrid,
    by_learning_rate,
    probe_many,
    run_probes,
    summarize,
)

ROOT = Path(__file__).resolve().parents[2]
ATTENTION = ROOT / "specs" / "tiny" / "attention.yaml"
TINY = ProbeSettings(MQAR(64, 4, 32), steps=2, batch=8, eval_sequences=16)
SWEEP = (
    f"base: {ROOT / 'specs' / 'tiny' / 'rat.yaml'}\n"
    "axes:\n  defaults.rat.chunk_size: [8, 16]\nseq: [64]\n"
)


def record(lr: float, seed: int, accuracy: float | None) -> dict:
    """A run record as `train_one` makes it (None: a failed run)."""
    if accuracy is None:
        return {"lr": lr, "seed": seed, "status": "error", "error": f"RuntimeError: seed {seed}"}
    return {"lr": lr, "seed": seed, "status": "ok", "accuracy": accuracy, "seconds": 1.0,
            "held_out_loss": 1 - accuracy, "eval": [], "loss": [seed], "model": "copy"}  # fmt: skip


def fake_probe(plan, settings, device, on_step=None):
    """run_probe's stand-in: accuracy from the lr and seed; fails for a plan named so."""
    if "failing" in plan.name:
        raise RuntimeError("boom")
    on_step(settings.steps, settings.steps, 1.0)
    accuracy = {1e-3: 0.5, 3e-3: 0.6}[settings.lr] + settings.seed / 100
    return {"accuracy": accuracy, "held_out_loss": 1.0, "model": "copy", "seconds": 1.0,
            "loss": [1.0], "eval": [], "chance": 0.25,
            "mqar": {"vocab": 64, "pairs": 4, "seq": 32}}  # fmt: skip


def test_the_grid_takes_every_lr_with_every_seed():
    grid = ProbeGrid(TINY, (1e-3, 3e-3), (0, 1, 2))
    assert [(s.lr, s.seed) for s in grid.runs()] == [
        (1e-3, 0), (1e-3, 1), (1e-3, 2), (3e-3, 0), (3e-3, 1), (3e-3, 2)
    ]  # fmt: skip
    assert {s.steps for s in grid.runs()} == {2} and grid.steps() == 12
    d = grid.to_dict()
    assert d["lrs"] == [1e-3, 3e-3] and d["seeds"] == [0, 1, 2] and "lr" not in d
    assert ProbeGrid.single(TINY).runs() == [TINY]
    assert ProbeGrid(TINY, (1e-3, 0.0), (1, 1)).problems() == [
        "seed 1 given twice",
        "lr must be > 0, weight_decay >= 0 and 0 <= warmup < 1",
    ]


def test_the_summary_takes_the_best_lr_by_its_mean_over_the_seeds():
    records = [
        record(1e-3, 0, 0.95), record(1e-3, 1, 0.45),  # mean 0.70, the best single run
        record(3e-3, 0, 0.70), record(3e-3, 1, 0.80), record(3e-3, 2, None),  # mean 0.75
    ]  # fmt: skip
    r = summarize(records)
    assert r["best_lr"] == 3e-3 and r["accuracy"] == pytest.approx(0.75)
    assert (r["accuracy_min"], r["accuracy_max"]) == (0.70, 0.80)
    assert r["best_seed"] == 1 and r["held_out_loss"] == pytest.approx(0.2)  # the shown run
    assert r["loss"] == [1] and r["best_lr_runs"] == 2
    assert (r["run_count"], r["runs_failed"], r["seconds"]) == (5, 1, 4.0)
    assert [x["status"] for x in r["runs"]] == ["ok"] * 4 + ["error"]
    assert r["runs"][4] == {
        "lr": 3e-3,
        "seed": 2,
        "status": "error",
        "error": "RuntimeError: seed 2",
    }
    assert [x["failed"] for x in r["by_lr"]] == [0, 1]
    tie = summarize([record(3e-3, 0, 0.5), record(1e-3, 0, 0.5)])
    assert tie["best_lr"] == 1e-3  # a tie: the smaller rate
    assert by_learning_rate([record(1e-3, 0, None)])[0]["accuracy"] is None
    with pytest.raises(ProbeFailed, match=r"RuntimeError: seed 0 \(and the other 1 runs failed\)"):
        summarize([record(1e-3, 0, None), record(1e-3, 1, None)])


def test_one_run_gives_what_run_probe_gives(one_thread):
    plan = archlab.compile(ATTENTION)
    alone, grid = run_probe(plan, TINY), run_probes(plan, ProbeGrid.single(TINY))
    assert {k: v for k, v in alone.items() if k != "seconds"} == {
        k: grid[k] for k in alone if k != "seconds"
    }
    assert grid["run_count"] == 1 and grid["best_lr"] == TINY.lr and grid["best_seed"] == 0
    assert (grid["accuracy_min"], grid["accuracy_max"]) == (alone["accuracy"],) * 2


def test_two_workers_give_the_same_figures_as_one_process(one_thread):
    """Spawned workers (one thread each) train the same runs bit for bit; a run that
    raises in a worker (seed 2**63: its data generator's seed overflows) is recorded as
    an error and the others go on."""
    plan = archlab.compile(ATTENTION)
    grid = ProbeGrid(TINY, (1e-3, 3e-3), (0, 2**63))
    here = run_probes(plan, grid, jobs=1)
    seen = []
    there = run_probes(plan, grid, on_progress=lambda *a: seen.append(a), jobs=2, threads=2)
    assert [(r["lr"], r["seed"], r["status"]) for r in there["runs"]] == [
        (1e-3, 0, "ok"), (1e-3, 2**63, "error"), (3e-3, 0, "ok"), (3e-3, 2**63, "error")
    ]  # fmt: skip
    assert "Overflow" in there["runs"][1]["error"] and there["runs_failed"] == 2
    for a, b in zip(here["runs"], there["runs"], strict=True):
        assert a.get("accuracy") == b.get("accuracy") and a.get("loss") == b.get("loss")
    assert (here["accuracy"], here["best_lr"]) == (there["accuracy"], there["best_lr"])
    assert seen[-1][:2] == (8, 8) and seen[-1][2].startswith("tiny-attention lr")


def test_a_spec_whose_runs_all_fail_is_an_error_and_the_others_go_on(monkeypatch):
    monkeypatch.setattr(probe_module, "run_probe", fake_probe)
    rat = archlab.compile(ROOT / "specs" / "tiny" / "rat.yaml")
    failing = dataclasses.replace(rat, name="failing")
    ended = []
    got = probe_many(
        [rat, failing], ProbeGrid(TINY, (1e-3,), (0, 1)), on_result=lambda i, r: ended.append(i)
    )
    assert got[0]["accuracy"] == pytest.approx(0.505) and ended == [0, 1]
    assert isinstance(got[1], RuntimeError) and str(got[1]) == "boom"  # the run's own
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        probe_many([rat], ProbeGrid.single(TINY), jobs=0)


def test_probe_command_with_lists(archlab_main, capsys, one_thread):
    spec = str(ATTENTION)
    args = ["probe", "mqar", spec, "--steps", "2", "--eval", "16", "--batch", "8"]
    assert archlab_main([*args, "--lr", "1e-3,3e-3", "--seed", "0-1", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (r,) = doc["results"]
    assert doc["settings"]["lrs"] == [1e-3, 3e-3] and doc["settings"]["seeds"] == [0, 1]
    assert doc["jobs"] == 1 and r["run_count"] == 4 and len(r["runs"]) == 4
    assert r["accuracy"] == max(x["accuracy"] for x in r["by_lr"])
    assert archlab_main([*args, "--seed", "3", "--json"]) == 0  # one number, as before
    (r,) = json.loads(capsys.readouterr().out)["results"]
    assert r["settings"]["seed"] == 3 and r["run_count"] == 1 and r["best_lr"] == 1e-3
    assert archlab_main([*args, "--seed", "0,1"]) == 0
    text = capsys.readouterr().out
    assert "(lr 0.001, batch 8, seeds 0, 1)" in text and "best lr" in text
    assert "%) " not in text and "% (" in text  # the mean, then the seeds' range


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--lr", "0"], "--lr 0: a learning rate is a finite number > 0 (got '0')"),
        (["--lr", "abc"], "--lr abc: 'abc' is not a number"),
        (["--lr", "1e-3,1e-3"], "probe: learning rate 0.001 given twice"),
        (["--seed", "x"], "--seed x: 'x' is not a seed"),
        (["--seed", "3-1"], "--seed 3-1: '3-1' is a range downwards"),
        (["--jobs", "0"], "--jobs must be >= 1 (got 0)"),
    ],
)
def test_probe_command_refuses_bad_lists(archlab_main, capsys, option, message):
    spec = str(ROOT / "specs" / "tiny" / "rat.yaml")
    assert archlab_main(["probe", "mqar", spec, *option]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"archlab: error: {message}") and err.count("\n") == 1, err


def test_sweep_probes_every_lr_and_seed_and_resumes(archlab_main, capsys, tmp_path, monkeypatch):
    """The resume key holds the lr and seed lists, not --probe-jobs; the recall column
    shows the mean and the seeds' range."""
    seen = []
    monkeypatch.setattr(
        probe_module, "run_probe", lambda *a, **k: seen.append(a[1].seed) or fake_probe(*a, **k)
    )
    path = tmp_path / "s.yaml"
    path.write_text(SWEEP)
    args = ["sweep", str(path), "--probe", "mqar", "--probe-steps", "3", "--out", str(tmp_path)]
    lists = ["--probe-lr", "1e-3,3e-3", "--probe-seed", "0,2"]
    assert archlab_main([*args, *lists]) == 0
    text = capsys.readouterr().out
    assert "61.0% (60.0-62.0)" in text
    doc = json.loads((tmp_path / "sweep.json").read_text())
    first = doc["points"][0]["probe"]
    assert first["best_lr"] == 3e-3 and first["run_count"] == 4 and first["best_seed"] == 2
    assert doc["settings"]["probe"]["lrs"] == [1e-3, 3e-3] and len(seen) == 8
    md = (tmp_path / "sweep.md").read_text()
    assert "| 0 | chunk_size=8 | copy | 61.0% (60.0-62.0) | 0.003 | 4 | 4 |" in md
    assert archlab_main([*args, *lists, "--probe-jobs", "2"]) == 0
    assert len(seen) == 8  # nothing ran again
    assert archlab_main([*args, "--probe-lr", "1e-3,3e-3", "--probe-seed", "0-2"]) == 0
    assert len(seen) == 20  # other seeds: both points again, 6 runs each
    capsys.readouterr()


def test_sweep_probes_in_two_workers(archlab_main, capsys, tmp_path):
    """For real at a tiny size: the sweep's points pickle and train in the workers."""
    path = tmp_path / "s.yaml"
    path.write_text(SWEEP)
    assert archlab_main([
        "sweep", str(path), "--probe", "mqar", "--probe-steps", "2", "--probe-eval", "8",
        "--probe-batch", "8", "--probe-jobs", "2", "--threads", "2", "--json",
    ]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert [p["probe"]["status"] for p in doc["points"]] == ["ok", "ok"]
    assert all(0 <= p["probe"]["accuracy"] <= 1 for p in doc["points"])
