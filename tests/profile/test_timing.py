"""Timing a case: runs until stable or out of time, the unstable flag, progress inside a
case, a peak below the achieved rate. A fake clock stands in for slow or noisy runs."""

from __future__ import annotations

import itertools

import torch

from archlab.measure import cases, profile
from archlab.measure.result import Result, Settings, Timing, judge_timing
from archlab.report.results import result_row

CPU = torch.device("cpu")


def fake_time(monkeypatch, durations):
    """profile's clock stands still but for the runs: each run of the function returned
    takes the next of `durations` (cycled)."""
    now, it = [0.0], itertools.cycle(durations)
    monkeypatch.setattr(profile, "_clock", lambda: now[0])

    def run() -> None:
        now[0] += next(it)

    return run


def test_noisy_runs_go_on_until_the_budget_and_are_flagged(monkeypatch):
    run = fake_time(monkeypatch, [0.01, 0.03])
    t = profile.time_fn(run, CPU, Settings(0, 3, 1.0))
    assert 40 <= t.runs <= 60 and t.spread > 0.2  # more than `repeats`: until the 1 s budget
    r = Result("s", "f", "model", "train", 1, 16, "float32", "cpu", timing=t)
    judge_timing(r, Settings(0, 3, 1.0))
    assert r.unstable and r.notes[0].startswith("unstable:")
    r.tokens_per_s = r.tflops = 1.0
    assert "unstable" in result_row(r)[5] and "unstable" in result_row(r)[-1]


def test_steady_runs_stop_at_repeats(monkeypatch):
    run = fake_time(monkeypatch, [0.01, 0.0105, 0.0095])
    t = profile.time_fn(run, CPU, Settings(0, 3, 100.0))
    assert t.runs == 3 and t.spread < 0.2
    r = Result("s", "f", "model", "train", 1, 16, "float32", "cpu", timing=t)
    judge_timing(r, Settings(0, 3, 100.0))
    assert not r.unstable and r.notes == []
    r.tokens_per_s = r.tflops = 1.0
    assert result_row(r)[5] == "10 ms (9.5-10.5)"


def test_a_slow_case_honours_its_budget_and_shows_progress(monkeypatch, capsys):
    run = fake_time(monkeypatch, [30.0])  # every run 30 s
    progress = cases.Progress(1, every_s=0.0)
    progress.start("big model train")
    with profile.reporting(progress.run):
        t = profile.time_fn(run, CPU, Settings(2, 3, 5.0))
    assert t.runs == 1  # one warm-up (it took the budget), one run: no more
    err = capsys.readouterr().err
    assert "warm-up 1: 30 s/run" in err and "run 1: 30 s/run" in err and "warm-up 2" not in err
    r = Result("s", "f", "model", "train", 1, 16, "float32", "cpu", timing=t)
    judge_timing(r, Settings(2, 3, 5.0))
    assert "1 run only" in r.notes[0] and not r.unstable


def test_a_peak_below_the_achieved_rate_is_measured_again(monkeypatch):
    low = {"device": "x", "matmul_tflops": 1.0, "copy_gbps": 10.0}
    calls = []

    def peaks(device, dtype, refresh=False):
        calls.append(refresh)
        return dict(low, matmul_tflops=4.0) if len(calls) == 1 else low

    r = Result("s", "f", "model", "train", 1, 16, "float32", "cpu", timing=Timing.of([1.0]))
    r.tflops, r.flops_frac, r.gbps, r.bw_frac, r.tokens_per_s = 2.0, 2.0, 5.0, 0.5, 1.0
    sizes = cases.Sizes(*[None] * 17)
    sizes.device = CPU
    monkeypatch.setattr(cases, "device_peaks", peaks)
    notes = cases.check_peaks([r], {"float32": low}, sizes)  # measured again: 4 TFLOP/s
    assert calls == [True] and r.flops_frac == 0.5 and notes and "peak?" not in notes[0]
    r.flops_frac = 2.0
    notes = cases.check_peaks([r], {"float32": low}, sizes)  # measured again: still 1
    assert r.flops_frac is None and r.notes[-1].startswith("peak?") and "peak?" in notes[0]
    row = result_row(r)
    assert row[9] == "peak?" and "peak?" in row[-1]
