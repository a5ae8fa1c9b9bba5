"""Pareto fronts: the non-dominated points (checked against a brute force), the pairs a
sweep shows, the Markdown report, and plots skipped cleanly without matplotlib."""

from __future__ import annotations

import random

import pytest

from archlab.report import pareto, probe_report
from archlab.report.pareto import front, fronts, markdown, point_metrics


def brute(items, x_higher, y_higher):
    sx, sy = (-1 if x_higher else 1), (-1 if y_higher else 1)

    def beats(a, b):  # a dominates b
        return sx * a[1] <= sx * b[1] and sy * a[2] <= sy * b[2] and (a[1:] != b[1:])

    return {b[0] for b in items if not any(beats(a, b) for a in items)}


@pytest.mark.parametrize("x_higher", [False, True])
@pytest.mark.parametrize("y_higher", [False, True])
def test_front_is_the_non_dominated_set(x_higher, y_higher):
    rng = random.Random(0)
    for _ in range(200):
        items = [(i, rng.randint(0, 6), rng.randint(0, 6)) for i in range(rng.randint(1, 12))]
        got = front(items, x_higher, y_higher)
        assert set(got) == brute(items, x_higher, y_higher)
        xs = [dict((i, x) for i, x, _ in items)[i] for i in got]
        assert xs == sorted(xs)


def test_front_keeps_ties_and_drops_equal_y_at_larger_x():
    assert front([(0, 1, 5), (1, 1, 5), (2, 2, 5), (3, 3, 1)]) == [0, 1, 3]


def point(i, cache, decode, params, flops, recall=None, measured=None):
    cost = {
        "seq_len": 4096, "batch": 1, "params": params, "train_flops": flops,
        "cache_bytes_per_seq": cache, "decode_bytes_per_token": decode,
        "bw_bound_decode_tok_s": 1e12 / decode,
    }  # fmt: skip
    probe = {"status": "ok", "accuracy": recall, "model": "tiny copy", "seconds": 1.0}
    return {
        "point": i,
        "label": f"chunk_size={16 * 2**i}",
        "values": {"defaults.rat.chunk_size": 16 * 2**i},
        "cost": [cost],
        "measured": measured,
        "probe": probe if recall is not None else None,
    }


def doc(points, probe=False, measure=None):
    return {
        "sweep": {
            "name": "t", "description": "", "base": "rat.yaml", "file": "s.yaml",
            "axes": {"defaults.rat.chunk_size": [p["values"]["defaults.rat.chunk_size"]
                                                 for p in points]},
            "zip": False, "seq": [4096], "batch": 1,
        },
        "settings": {
            "bandwidth_GBps": 1000.0, "measure": measure,
            "probe": {"steps": 10, "lrs": [1e-3], "batch": 4, "seeds": [0], "eval_sequences": 8,
                      "task": {"vocab": 64, "pairs": 4, "seq": 32}} if probe else None,
        },
        "notes": [],
        "points": points,
    }  # fmt: skip


def test_fronts_of_a_sweep_with_recall():
    points = [
        point(0, 400, 2000, 10, 100, recall=0.9),
        point(1, 200, 1500, 10, 90, recall=0.6),
        point(2, 100, 1600, 11, 80, recall=0.3),
        point(3, 300, 1700, 12, 95, recall=0.2),
    ]
    d = doc(points, probe=True)
    got = {f["pair"]: f for f in fronts(d)}
    assert set(got) == {"decode_4k", "train_4k", "recall_4k"}
    assert got["decode_4k"]["front"] == [2, 1] and got["decode_4k"]["dominated"] == [0, 3]
    assert got["train_4k"]["front"] == [1, 2]
    assert got["recall_4k"]["x"] == "decode_bytes_per_token@4096"
    assert got["recall_4k"]["front"] == [1, 0]  # cheaper decode, or better recall
    d["fronts"] = list(got.values())
    text = markdown(d, {"recall_4k": "pareto_recall_4k.png"})
    assert "## Pareto fronts" in text and "## Recall probe (MQAR)" in text
    assert "| 1 | chunk_size=32 | 200 B | 1.46 KiB |" in text
    assert "![recall_4k](pareto_recall_4k.png)" in text
    assert "not a\nmeasurement" in text


def test_measured_figures_and_missing_points():
    ok = {"status": "ok", "mode": "decode", "seq_len": 256, "tokens_per_s": 50.0}
    train = {"status": "ok", "mode": "train", "seq_len": 256, "timing": {"median_s": 0.5}}
    oom = {"status": "oom", "mode": "decode", "seq_len": 256}
    m = {"params": 5, "cache_bytes": {"256": 64}, "results": [ok, train], "measured_as": "x"}
    figures = point_metrics(point(0, 1, 2, 3, 4, measured=m))
    assert figures["measured_decode_tok_s@256"] == 50.0
    assert figures["measured_train_s@256"] == 0.5 and figures["measured_cache_bytes@256"] == 64
    failed = {**m, "results": [oom, train]}
    d = doc(
        [point(0, 1, 2, 3, 4, measured=m), point(1, 1, 2, 3, 4, measured=failed)],
        measure={"seqs": [256], "modes": ["train", "decode"], "device": "cpu"},
    )
    got = {f["pair"]: f for f in fronts(d)}
    assert got["measured_decode_256"]["front"] == [0]
    assert got["measured_decode_256"]["missing"] == [1]
    assert got["measured_train_256"]["front"] == [0, 1]


def test_plots_skip_without_matplotlib(monkeypatch, tmp_path):
    d = doc([point(0, 1, 2, 3, 4), point(1, 2, 1, 3, 5)])
    d["fronts"] = fronts(d)
    monkeypatch.setattr(pareto, "_pyplot", lambda: None)
    monkeypatch.setattr(probe_report, "_pyplot", lambda: None)
    assert pareto.front_plots(d, tmp_path) == {}
    assert probe_report.probe_plot([("a", {})], tmp_path) is None
    assert list(tmp_path.iterdir()) == []


def test_plots_with_matplotlib(tmp_path):
    pytest.importorskip("matplotlib")
    d = doc([point(0, 1, 2, 3, 4), point(1, 2, 1, 3, 5), point(2, 2, 2, 3, 5)])
    d["fronts"] = fronts(d)
    images = pareto.front_plots(d, tmp_path)
    assert images == {"decode_4k": "pareto_decode_4k.png", "train_4k": "pareto_train_4k.png"}
    assert (tmp_path / "pareto_decode_4k.png").stat().st_size > 1000


def test_grid_text_names_the_learning_rates_seeds_and_a_torch_init():
    from archlab.report.probe_report import grid_text

    base = {"lrs": [1e-3, 3e-3], "seeds": [0, 1], "batch": 64}
    assert grid_text(base) == "lrs 0.001, 0.003, batch 64, seeds 0, 1"
    assert "init torch" not in grid_text({**base, "init": "blocks"})
    assert grid_text({**base, "lrs": [1e-3], "seeds": [2], "init": "torch"}) == (
        "lr 0.001, batch 64, seed 2, Linear weights drawn by PyTorch's default rule (init torch)"
    )


def test_recall_against_measured_decode_when_both_were_taken():
    def decoded(tok_s):
        r = {"status": "ok", "mode": "decode", "seq_len": 256, "tokens_per_s": tok_s}
        return {"params": 5, "cache_bytes": {"256": 64}, "results": [r], "measured_as": "x"}

    points = [
        point(0, 400, 2000, 10, 100, recall=0.99, measured=decoded(10.0)),
        point(1, 200, 1500, 10, 90, recall=0.5, measured=decoded(30.0)),
        point(2, 100, 1600, 11, 80, recall=0.4, measured=decoded(20.0)),
    ]
    measure = {"seqs": [256], "modes": ["decode"], "device": "cuda"}
    got = {f["pair"]: f for f in fronts(doc(points, probe=True, measure=measure))}
    pair = got["measured_recall_256"]
    assert (pair["x"], pair["y"]) == ("measured_decode_tok_s@256", "mqar_accuracy")
    assert pair["front"] == [0, 1] and pair["dominated"] == [2]  # faster, or recalls more
    train_only = {**measure, "modes": ["train"]}
    assert "measured_recall_256" not in {
        f["pair"] for f in fronts(doc(points, probe=True, measure=train_only))
    }
