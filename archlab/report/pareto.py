"""Pareto fronts of a sweep (`archlab sweep`): which points no other point beats on both
figures of a pair a designer weighs, the sweep's CSV, its Markdown report `sweep.md`, and
its plots (the fronts, and the recall probe's training curves). Plots need matplotlib
(`pip install "archlab[plot]"`); without it everything else is written.

The pairs (lower is better, but for rates and recall): cache bytes against decode bytes
per token, parameters against train FLOPs (at each cost T); with `--measure` the measured
model's cache bytes against its decode tok/s and its parameters against its train step
time (at each measured T); with `--probe mqar` decode bytes per token against recall.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

from archlab.lang.sweep_file import value_text as axis_value
from archlab.report.plots import _pyplot, _save, _style
from archlab.report.probe_report import GRID_TEXT, grid_text, probe_cells
from archlab.report.results import seconds_text
from archlab.report.tables import human

# metric -> (words, short header, kind of number, better side)
METRICS = {
    "params": ("parameters", "params", "count", "lower"),
    "train_flops": ("train FLOPs (fwd + bwd, batch x T)", "train FLOPs", "flop", "lower"),
    "cache_bytes_per_seq": ("cache bytes per sequence", "cache/seq", "bytes", "lower"),
    "decode_bytes_per_token": ("decode bytes read per token", "decode B/tok", "bytes", "lower"),
    "bw_bound_decode_tok_s": (
        "decode tok/s bound from bandwidth (analytic, not measured)", "bw-bound tok/s", "rate",
        "higher",
    ),
    "measured_params": ("parameters of the measured model", "meas. params", "count", "lower"),
    "measured_cache_bytes": (
        "cache bytes per sequence of the measured model", "meas. cache/seq", "bytes", "lower",
    ),
    "measured_train_s": ("measured train step time", "meas. train step", "seconds", "lower"),
    "measured_decode_tok_s": ("measured decode tok/s", "meas. decode tok/s", "rate", "higher"),
    "measured_prefill_tok_s": ("measured prefill tok/s", "meas. prefill tok/s", "rate", "higher"),
    "mqar_accuracy": ("MQAR recall accuracy (held-out)", "recall", "share", "higher"),
}  # fmt: skip
LABEL = {"textcoords": "offset points", "fontsize": 6.5, "va": "bottom"}


def seq_text(T: int) -> str:
    """4096 -> '4k'; 1000 -> '1000'."""
    return f"{T // 1024}k" if T % 1024 == 0 else str(T)


def value_text(metric: str, v: float | None) -> str:
    """A figure in human units."""
    if v is None:
        return "-"
    kind = METRICS[metric.split("@")[0]][2]
    if kind == "bytes":
        return human(v, "B", 1024)
    if kind == "flop":
        return human(v, "FLOP")
    if kind == "rate":
        return human(v) + " tok/s"
    if kind == "seconds":
        return seconds_text(v)
    if kind == "share":
        return f"{100 * v:.1f}%"
    return human(v)


def metric_name(metric: str) -> str:
    """'cache_bytes_per_seq@4096' -> 'cache bytes per sequence, T=4k'."""
    name, _, T = metric.partition("@")
    return METRICS[name][0] + (f", T={seq_text(int(T))}" if T else "")


def short_name(metric: str) -> str:
    """'cache_bytes_per_seq@4096' -> 'cache/seq @4k'."""
    name, _, T = metric.partition("@")
    return METRICS[name][1] + (f" @{seq_text(int(T))}" if T else "")


# ---- the figures of each point ---------------------------------------------------------


COST_FIGURES = (
    "train_flops",
    "cache_bytes_per_seq",
    "decode_bytes_per_token",
    "bw_bound_decode_tok_s",
)
# mode -> (figure, how it is read from a measured result)
MEASURED = {
    "decode": ("measured_decode_tok_s", lambda r: r["tokens_per_s"]),
    "train": ("measured_train_s", lambda r: r["timing"]["median_s"]),
    "prefill": ("measured_prefill_tok_s", lambda r: r["tokens_per_s"]),
}


def point_metrics(point: dict) -> dict[str, float]:
    """Every figure of a point, keyed `metric` or `metric@T`."""
    out: dict[str, float] = {}
    for c in point.get("cost") or []:
        out["params"] = c["params"]
        out.update({f"{k}@{c['seq_len']}": c[k] for k in COST_FIGURES})
    m = point.get("measured")
    if m:
        out["measured_params"] = m["params"]
        out.update({f"measured_cache_bytes@{T}": b for T, b in m["cache_bytes"].items()})
        for r in m["results"]:
            if r["status"] == "ok" and r["mode"] in MEASURED:
                name, read = MEASURED[r["mode"]]
                out[f"{name}@{r['seq_len']}"] = read(r)
    if (point.get("probe") or {}).get("accuracy") is not None:
        out["mqar_accuracy"] = point["probe"]["accuracy"]
    return out


# ---- fronts -----------------------------------------------------------------------------


def front(items: list[tuple[int, float, float]], x_higher=False, y_higher=False) -> list[int]:
    """The ids of the non-dominated (id, x, y) items, in increasing x: no other item is at
    least as good on both and better on one (equal items are all kept)."""
    sx, sy = (-1 if x_higher else 1), (-1 if y_higher else 1)
    rows = sorted((sx * x, sy * y, i) for i, x, y in items)
    kept, best, k = [], float("inf"), 0
    while k < len(rows):
        group = [r for r in rows[k:] if r[0] == rows[k][0]]  # one x
        k += len(group)
        low = min(r[1] for r in group)
        if low < best:
            kept += [r[2] for r in group if r[1] == low]
            best = low
    order = {i: x for i, x, _ in items}
    return sorted(kept, key=lambda i: (order[i], i))


def pairs(doc: dict) -> list[dict]:
    """The pairs this sweep can show: analytic at every cost T, measured at every measured
    T (when measured), recall at every cost T (when probed)."""
    settings, out, seqs = doc.get("settings") or {}, [], doc["sweep"]["seq"]
    for T in seqs:
        out.append(("decode", T, "cache_bytes_per_seq", "decode_bytes_per_token", "analytic"))
        out.append(("train", T, "params", "train_flops", "analytic"))
    for T in (settings.get("measure") or {}).get("seqs") or []:
        out.append(
            ("measured_decode", T, "measured_cache_bytes", "measured_decode_tok_s", "measured")
        )
        out.append(("measured_train", T, "measured_params", "measured_train_s", "measured"))
    for T in seqs if settings.get("probe") else []:
        out.append(("recall", T, "decode_bytes_per_token", "mqar_accuracy", "probe"))
    measure = settings.get("measure") or {}
    decoded = settings.get("probe") and "decode" in (measure.get("modes") or [])
    for T in measure.get("seqs") or [] if decoded else []:
        out.append(
            ("measured_recall", T, "measured_decode_tok_s", "mqar_accuracy", "measured_probe")
        )

    def at(metric: str, T: int) -> str:  # params and recall are one figure, not one per T
        return (
            metric if metric in ("params", "measured_params", "mqar_accuracy") else f"{metric}@{T}"
        )

    return [
        {"pair": f"{n}_{seq_text(T)}", "x": at(x, T), "y": at(y, T), "basis": b}
        for n, T, x, y, b in out
    ]


def _higher(metric: str) -> bool:
    return METRICS[metric.split("@")[0]][3] == "higher"


def fronts(doc: dict) -> list[dict]:
    """Every pair's front: `front` (point numbers, in increasing x), `dominated`, and
    `missing` (points without one of the figures: a failed or skipped case)."""
    figures = {p["point"]: point_metrics(p) for p in doc["points"]}
    out = []
    for pair in pairs(doc):
        x, y = pair["x"], pair["y"]
        have = [(i, f[x], f[y]) for i, f in figures.items() if None not in (f.get(x), f.get(y))]
        ids, got = front(have, _higher(x), _higher(y)), {i for i, *_ in have}
        missing = sorted(set(figures) - got)
        if have:
            out.append(
                {**pair, "front": ids, "dominated": sorted(got - set(ids)), "missing": missing}
            )
    return out


# ---- the Markdown report ---------------------------------------------------------------

BASIS = {
    "analytic": "cost model (`archlab cost`), the specs as written",
    "measured": "measured on this machine, each point's measured model (see Measured models)",
    "probe": "recall of the probe's small copy of each point (MQAR); decode bytes from the "
    "cost model, as written",
    "measured_probe": "recall of the probe's small copy of each point (MQAR); decode tokens/s "
    "measured on this machine (see Measured models)",
}
COLUMNS = """\
**params** exact parameter count; **train FLOPs** matmul FLOPs of one forward and backward
pass over batch x T tokens; **cache/seq** inference cache (keys, values, states) after T
tokens; **decode B/tok** bytes one decode step reads at position T (all weights + the
cache) per sequence: what bounds decode speed; **bw-bound tok/s** bandwidth / decode B/tok,
an upper bound on decode tokens/s from the bytes alone, a calculation, **not a
measurement**; **meas. ...** medians of `archlab profile` cases of each point's measured
model (on a CPU a scaled-down copy, listed under "Measured models": they rank the
architectures, they are not the full-size models' speed; train: one step of batch x T);
**recall** MQAR accuracy of the probe's small copy on held-out sequences (of several runs,
the best learning rate's mean over the seeds).
"""
FRONT_TEXT = (
    "A point is on the front of a pair when no other point is at least as good on both "
    "figures and better on one; every point off the front is beaten on both counts by one "
    "on it. Fronts are listed in increasing x."
)


def _cell(p: dict, metric: str) -> str:
    return value_text(metric, point_metrics(p).get(metric))


def _md_table(head: list[str], rows: list[list]) -> list[str]:
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return out + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows] + [""]


def _seqs(seqs: list[int]) -> str:
    return ", ".join(seq_text(T) for T in seqs)


def markdown(doc: dict, images: dict[str, str] | None = None) -> str:
    """`sweep.md`: what was swept, every point's figures, and the front of every pair
    (with its plot where `images` names one)."""
    images, s, points = images or {}, doc["sweep"], doc["points"]
    settings, by_id = doc.get("settings") or {}, {p["point"]: p for p in doc["points"]}
    varying = [a for a, vs in s["axes"].items() if len(vs) > 1] or list(s["axes"])
    how = "the values taken together (zip)" if s["zip"] else "every combination of the values"
    m, probe = settings.get("measure"), settings.get("probe")
    lines = [f"# Sweep `{s['name']}`", "", s.get("description") or "", ""]
    lines += [f"Base spec `{s['base']}`; {len(points)} points, {how}.", ""]
    axes = [[f"`{a}`", ", ".join(f"`{axis_value(v)}`" for v in vs)] for a, vs in s["axes"].items()]
    lines += _md_table(["axis", "values"], axes) + [
        f"- Cost model at T = {_seqs(s['seq'])}, batch {s['batch']}; bandwidth bounds at "
        f"{settings.get('bandwidth_GBps', 0):g} GB/s.",
        f"- Measured ({', '.join(m['modes'])}) on {m['device']} at T = {_seqs(m['seqs'])}."
        if m
        else "- Not measured (`--measure` times each point).",
        "- Recall probed with MQAR (below)." if probe else "- Recall not probed (`--probe mqar`).",
        *[f"- {n}" for n in doc.get("notes") or []],
        "",
        "## Points",
        "",
    ]
    figures = dict.fromkeys(k for p in points for k in point_metrics(p))
    metrics = [k for k in figures if k != "measured_params"]
    head = ["#", *(a.split(".")[-1] for a in varying), *(short_name(k) for k in metrics)]
    rows = [[p["point"], *(axis_value(p["values"][a]) for a in varying)] for p in points]
    lines += _md_table(
        head, [r + [_cell(p, k) for k in metrics] for r, p in zip(rows, points, strict=True)]
    )
    lines += [COLUMNS, "## Pareto fronts", "", FRONT_TEXT, ""]
    for f in doc.get("fronts") or []:
        x, y = f["x"], f["y"]
        better = [METRICS[k.split("@")[0]][3] for k in (x, y)]
        off = ", ".join(f"#{i}" for i in f["dominated"]) or "none"
        missing = ", ".join(f"#{i}" for i in f["missing"])
        front = [[i, by_id[i]["label"], _cell(by_id[i], x), _cell(by_id[i], y)] for i in f["front"]]
        lines += [
            f"### {metric_name(y)} against {metric_name(x)}",
            "",
            f"x: {metric_name(x)} ({better[0]} is better); y: {metric_name(y)} ({better[1]} "
            f"is better). Basis: {BASIS[f['basis']]}.",
            "",
            *_md_table(["#", "point", metric_name(x), metric_name(y)], front),
            f"On the front: {len(f['front'])} of {len(points)}. Off it: {off}."
            + (f" No figure for: {missing}." if missing else ""),
            "",
        ]
        lines += [f"![{f['pair']}]({images[f['pair']]})", ""] if f["pair"] in images else []
    if m:
        lines += ["## Measured models", "", *_md_table(["#", "point", "measured model"], [
            [p["point"], p["label"], p["measured"]["measured_as"]] for p in points
            if p.get("measured")
        ])]  # fmt: skip
    if probe:
        t = probe["task"]
        several = len(probe["lrs"]) * len(probe["seeds"]) > 1
        lines += [
            "## Recall probe (MQAR)",
            "",
            f"Each point's copy trained {probe['steps']} AdamW steps ({grid_text(probe)}) on "
            f"MQAR: vocabulary {t['vocab']}, {t['pairs']} key-value pairs in {t['seq']} "
            f"tokens; accuracy on {probe['eval_sequences']} held-out sequences; chance "
            f"(guessing among the sequence's values) {100 / t['pairs']:.0f}%."
            + (f" {GRID_TEXT}" if several else ""),
            "",
        ]
        rows = [[p["point"], p["label"], *probe_cells(p.get("probe") or {})] for p in points]
        head = ["#", "point", "copy trained", "recall", "best lr", "runs", "seconds"]
        lines += _md_table(head, rows)
        lines += [f"![training curves]({images['probe']})", ""] if "probe" in images else []
    return "\n".join(lines)


# ---- plots ------------------------------------------------------------------------------


def front_plots(doc: dict, out: Path) -> dict[str, str]:
    """One plot per pair (PNG and SVG): every point, labelled by the axis values that
    differ, the front drawn as a line through its points. {pair: PNG name}; {} without
    matplotlib."""
    plt = _pyplot()
    if plt is None:
        return {}
    by_id = {p["point"]: p for p in doc["points"]}
    figures = {i: point_metrics(p) for i, p in by_id.items()}
    done = {}
    for f in doc.get("fronts") or []:
        x, y = f["x"], f["y"]
        fig, ax = plt.subplots(figsize=(8, 5.2))
        have = [i for i in by_id if i not in f["missing"]]
        xs, ys = [figures[i][x] for i in have], [figures[i][y] for i in have]
        on = set(f["front"])
        ax.scatter(xs, ys, c=["C3" if i in on else "0.6" for i in have], s=22, zorder=3)
        fx, fy = [figures[i][x] for i in f["front"]], [figures[i][y] for i in f["front"]]
        ax.step(fx, fy, where="post", color="C3", lw=1.2, zorder=2)
        basis = textwrap.fill(f"{BASIS[f['basis']]}; red: the Pareto front", 100)
        title = f"{metric_name(y)} against {metric_name(x)}\n{basis}"
        _style(ax, xs, ys, metric_name(x), metric_name(y), title)
        for axis, metric, vs in ((ax.xaxis, x, xs), (ax.yaxis, y, ys)):
            _ticks(axis, METRICS[metric.split("@")[0]][2], vs)
        ax.margins(x=0.2, y=0.18)
        texts = [(f"#{i} {by_id[i]['label']}", "C3" if i in on else "0.35") for i in have]
        _labels(ax, list(zip(xs, ys, texts, strict=True)))
        _save(fig, out, f"pareto_{f['pair']}", plt)
        done[f["pair"]] = f"pareto_{f['pair']}.png"
    return done


def _labels(ax, points: list) -> None:
    """Each point's label beside it, moved up (with a leader line) off the labels below."""
    ax.figure.canvas.draw()  # the axes' limits and scales are final
    per_point, placed = 72 / ax.figure.dpi, []
    for x, y, (text, color) in sorted(points, key=lambda p: (p[1], p[0])):
        px, py = (v * per_point for v in ax.transData.transform((x, y)))
        dy = 3
        while any(abs(px - qx) < 110 and abs(py + dy - qy) < 8 for qx, qy in placed):
            dy += 8
        placed.append((px, py + dy))
        line = {"arrowprops": {"arrowstyle": "-", "lw": 0.4, "color": color}} if dy > 3 else {}
        ax.annotate(text, (x, y), xytext=(4, dy), color=color, **LABEL, **line)


def _ticks(axis, kind: str, values: list[float]) -> None:
    """Human tick labels; with more digits where the values span less than 1.5x."""
    from matplotlib.ticker import FuncFormatter

    if kind in ("share", "seconds"):
        text = (lambda v: f"{100 * v:.0f}%") if kind == "share" else seconds_text
        axis.set_major_formatter(FuncFormatter(lambda v, _: text(v)))
        return
    unit = {"bytes": "B", "flop": "FLOP"}.get(kind, "")
    base = 1024 if unit == "B" else 1000
    lo, hi = min(values), max(values)
    if not (lo > 0 and hi / lo < 1.5):
        axis.set_major_formatter(FuncFormatter(lambda v, _: human(v, unit, base)))
        return
    power = min(6, int(math.log(hi, base)))
    scale = base**power
    digits = min(6, max(0, math.ceil(-math.log10(max((hi - lo) / scale, 1e-9))) + 1))
    prefix = ["", "K", "M", "G", "T", "P", "E"][power] + ("i" if base == 1024 and power else "")
    sep = " " if unit else ""
    axis.set_major_formatter(
        FuncFormatter(lambda v, _: f"{v / scale:.{digits}f}{sep}{prefix}{unit}")
    )
