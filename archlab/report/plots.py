"""The plots of `archlab compare`, as PNG and SVG: latency against T per mode, cache and
FLOPs against T, throughput bars; log axes where the range calls for it, crossovers from
the cost model marked. They need matplotlib (`pip install "archlab[plot]"`)."""

from __future__ import annotations

import math
from pathlib import Path

from archlab.lang.plan import Plan
from archlab.measure.result import Result
from archlab.report.results import METRIC_TEXT, MODE_METRIC, TIMED, crossover_points
from archlab.report.tables import human


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def plots_available() -> bool:
    """True when matplotlib can be imported."""
    return _pyplot() is not None


def _grid(seqs: list[int]) -> list[int]:
    lo, hi = min(min(seqs), 256), max(max(seqs), 131072)
    n = 40
    return sorted({round(lo * (hi / lo) ** (i / (n - 1))) for i in range(n)})


def _style(
    ax,
    xs: list[float],
    ys: list[float],
    xlabel: str,
    ylabel: str,
    title: str,
    yunit: str | None = None,
) -> None:
    """Log axes where the range calls for it (x: 8x, y: 20x), human tick labels."""
    from matplotlib.ticker import FuncFormatter

    if xs and max(xs) / max(min(xs), 1e-30) >= 8:
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda v, _: human(v, "", 1024).replace(" ", "").replace("i", ""))
        )
    positive = [y for y in ys if y and y > 0]
    if positive and max(positive) / min(positive) >= 20:
        ax.set_yscale("log")
    if yunit is not None:
        base = 1024 if yunit == "B" else 1000
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: human(v, yunit, base)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)


def _lines(ax, series: dict[str, tuple[list, list]], markers: bool) -> None:
    """One line per spec, labelled at its right end (no legend needed)."""
    ends = []
    for i, (name, (xs, ys)) in enumerate(series.items()):
        pts = [(x, y) for x, y in zip(xs, ys, strict=True) if y is not None]
        if not pts:
            continue
        (line,) = ax.plot(
            *zip(*pts, strict=True),
            marker="os^Dv<>"[i % 7] if markers else None,
            color=f"C{i}",  # the spec's colour, even where an earlier spec drew nothing
            lw=1.6,
            ms=4,
        )
        ends.append((pts[-1], name, line.get_color()))
    ends.sort(key=lambda e: e[0][1])
    last_y, dy = None, 0
    for (x, y), name, color in ends:
        close = last_y is not None and y > 0 and last_y > 0 and abs(math.log(y / last_y)) < 0.15
        dy = dy + 9 if close else 0
        last_y = y
        ax.annotate(
            name,
            (x, y),
            xytext=(5, dy),
            textcoords="offset points",
            color=color,
            fontsize=8,
            va="center",
        )
    ax.margins(x=0.25)


def _failures(ax, failed: list[tuple[Result, str]]) -> None:
    """A cross at the foot of the plot for each case that did not run (out of memory or an
    error), in its spec's colour and labelled, so that a missing point is never silent."""
    at_x: dict[int, int] = {}
    top = ax.get_xaxis_transform()  # x in data, y in axes fraction
    for r, color in failed:
        n = at_x[r.seq_len] = at_x.get(r.seq_len, -1) + 1
        ax.plot([r.seq_len], [0.04], marker="x", color=color, ms=7, transform=top)
        ax.annotate(
            f"{r.spec}: {'OOM' if r.status == 'oom' else 'error'}",
            (r.seq_len, 0.04),
            xycoords=top,
            xytext=(0, 7 + 9 * n),
            textcoords="offset points",
            color=color,
            fontsize=7,
            ha="center",
            va="bottom",
        )


def _crossings(ax, points: list[dict], xs: list[float]) -> None:
    """A dashed vertical line at each crossover inside the plotted range, with its text."""
    if not xs:
        return
    for k, p in enumerate(q for q in points if min(xs) <= q["seq_len"] <= max(xs)):
        ax.axvline(p["seq_len"], color="0.4", ls="--", lw=0.8)
        word = "cheaper" if p["cheaper"] else "dearer"
        at = f" at batch {p['batch']}" if p.get("batch", 1) != 1 else ""
        ax.text(
            p["seq_len"],
            0.97 - 0.12 * (k % 4),
            f" {p['spec']} {word} than\n"
            f" {p['versus']} from T={p['seq_len']:,}\n ({METRIC_TEXT[p['metric']]}{at}, model)",
            transform=ax.get_xaxis_transform(),
            fontsize=6.5,
            va="top",
            color="0.25",
        )


def _caption(fig, names: list[str], how: dict[str, str | None]) -> float:
    """Below the axes, one line per spec in its colour: how its measured model was made
    (every spec's scaling, not only the first's). Returns the figure fraction it takes."""
    lines = [(f"C{i}", f"{name}: {how[name]}") for i, name in enumerate(names) if how.get(name)]
    if not lines:
        return 0.0
    height = fig.get_figheight()
    step = 11 / 72 / height  # one 7.5-point line, in figure fraction
    for k, (color, text) in enumerate(reversed(lines)):
        fig.text(0.01, 0.01 + k * step, text, fontsize=7.5, color=color, ha="left", va="bottom")
    fig.text(0.01, 0.01 + len(lines) * step, "measured models:", fontsize=7.5, va="bottom")
    return 0.02 + (len(lines) + 1) * step


def _save(fig, out: Path, stem: str, plt, bottom: float = 0.0) -> list[Path]:
    paths = [out / f"{stem}.png", out / f"{stem}.svg"]
    fig.tight_layout(rect=(0, bottom, 1, 1))
    for p in paths:
        fig.savefig(p, dpi=120)
    plt.close(fig)
    return paths


def write_plots(
    out: Path,
    plans: list[Plan],
    seqs: list[int],
    results: list[Result] | None,
    measured_plans: list[Plan] | None,
    measured_note: str,
    measured_as: dict[str, str | None] | None = None,
) -> list[Path]:
    """latency (per mode), cache, flops and throughput plots as PNG and SVG in `out`;
    [] without matplotlib. `measured_note` (in the measured plots' titles) says where they
    ran; `measured_as` (spec -> how its measured model was made, e.g. its scaling) is the
    caption under them, one line per spec."""
    plt = _pyplot()
    if plt is None:
        return []
    from archlab.cost.analytic import metric_function

    paths: list[Path] = []
    grid = _grid(seqs)
    for metric, stem, ylabel, unit in (
        ("cache_bytes", "cache", "inference cache", "B"),
        ("train_flops", "flops", "train FLOPs (fwd + bwd)", ""),
    ):
        fig, ax = plt.subplots(figsize=(7.5, 4.8))
        series = {p.name: (grid, [metric_function(p, metric)(t) for t in grid]) for p in plans}
        _lines(ax, series, markers=False)
        _style(
            ax,
            grid,
            [y for _, ys in series.values() for y in ys],
            "sequence length T",
            ylabel,
            f"{METRIC_TEXT[metric]} against T, batch 1 (cost model, specs as "
            "written); dashed: crossovers",
            unit,
        )
        _crossings(ax, crossover_points(plans, metric), grid)
        paths += _save(fig, out, stem, plt)
    if results:
        how = measured_as or {}
        names = [p.name for p in plans]
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.5 + 0.16 * (len(names) + 1) * bool(how)))
        mplans = measured_plans or plans
        for ax, mode in zip(axes, TIMED, strict=True):
            series, failed, shaky = {}, [], []
            for i, p in enumerate(mplans):
                rs = [r for r in results if r.spec == p.name and r.mode == mode]
                series[p.name] = (
                    [r.seq_len for r in rs],
                    [r.timing.median_s * 1e3 if r.status == "ok" else None for r in rs],
                )
                failed += [(r, f"C{i}") for r in rs if r.status != "ok"]
                shaky += [(r, f"C{i}") for r in rs if r.unstable]
            _lines(ax, series, markers=True)
            for r, color in shaky:  # runs that never settled: the point is marked '?'
                y = r.timing.median_s * 1e3
                ax.annotate(
                    "?",
                    (r.seq_len, y),
                    xytext=(0, 4),
                    textcoords="offset points",
                    color=color,
                    fontsize=9,
                    ha="center",
                    va="bottom",
                )
            batch = {r.batch for r in results if r.mode == mode and r.status == "ok"}
            batch = batch or {r.batch for r in results if r.mode == mode}
            _style(
                ax,
                seqs,
                [y for _, ys in series.values() for y in ys if y],
                "context position T" if mode == "decode" else "sequence length T",
                "median time (ms)",
                f"{mode}, batch {'/'.join(map(str, sorted(batch)))}",
            )
            # the crossovers of the measured models at the measured batch (decode: bytes
            # grow with the batch's caches; FLOPs are linear in the batch)
            at = min(batch) if batch else 1
            _crossings(ax, crossover_points(mplans, MODE_METRIC[mode], at), seqs)
            _failures(ax, failed)
        unsure = (
            "; ?: unstable (the runs never settled)" if any(r.unstable for r in results) else ""
        )
        fig.suptitle(
            f"Measured latency ({measured_note}); dashed: cost-model crossovers "
            f"of the measured models at the measured batch{unsure}",
            fontsize=10,
        )
        paths += _save(fig, out, "latency", plt, _caption(fig, names, how))
        done = [r for r in results if r.mode == "throughput" and r.status == "ok"]
        if done:
            fig, ax = plt.subplots(
                figsize=(max(7.5, 1.6 * len(done) + 3), 4.5 + 0.16 * (len(names) + 1) * bool(how))
            )
            bars = ax.bar(
                [r.spec for r in done],
                [r.tokens_per_s for r in done],
                color=[
                    f"C{names.index(r.spec) if r.spec in names else i}" for i, r in enumerate(done)
                ],
            )
            for bar, r in zip(bars, done, strict=True):
                cap = " (search limit)" if r.extra.get("capped") else ""
                ax.annotate(
                    f"{r.tokens_per_s:,.0f} tok/s\nbatch {r.batch}{cap}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
            r0 = done[0]
            ax.set_ylabel("generated tokens per second")
            ax.set_title(
                f"Generation throughput: {r0.extra['generate']} tokens after "
                f"{r0.extra['prompt']}, largest batch that fits\n({measured_note})",
                fontsize=9,
            )
            ax.margins(y=0.2)
            paths += _save(fig, out, "throughput", plt, _caption(fig, names, how))
    return paths
