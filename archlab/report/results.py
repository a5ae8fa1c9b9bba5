"""Result tables of `profile` and `compare`: the text table, the JSON document and CSV of
measured results, and the crossovers that the plots and the report mark."""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import asdict

from archlab.lang.plan import Plan
from archlab.measure.result import SCHEMA, Result
from archlab.report.tables import human, table

TIMED = ("train", "prefill", "decode")
# the cost figure that a mode's time follows (decode is bound by the bytes it reads)
MODE_METRIC = {
    "train": "train_flops",
    "prefill": "fwd_flops",
    "decode": "decode_bytes",
    "cache": "cache_bytes",
}
METRIC_TEXT = {
    "train_flops": "train FLOPs",
    "fwd_flops": "forward FLOPs",
    "decode_bytes": "decode bytes",
    "cache_bytes": "cache",
}


def _unit(t: float) -> tuple[float, str]:
    return next(((s, u) for s, u in ((1, "s"), (1e-3, "ms")) if t >= s), (1e-6, "us"))


def _digits(v: float) -> str:
    return f"{v:.3g}" if v < 1000 else f"{v:.0f}"


def seconds_text(t: float) -> str:
    """0.0123 -> '12.3 ms' (3 significant digits, s / ms / us)."""
    scale, unit = _unit(t)
    return f"{t / scale:.3g} {unit}"


def spread_text(r: Result) -> str:
    """The 10th-90th percentile range of the runs in the median's unit, '(61.0-70.3)', or
    '(1 run)'; ' unstable' after it when the runs never settled."""
    t = r.timing
    if t.runs < 2:
        text = f"({t.runs} run)"
    else:
        scale, _ = _unit(t.median_s)
        text = f"({_digits(t.p10_s / scale)}-{_digits(t.p90_s / scale)})"
    return text + (" unstable" if r.unstable else "")


def _time_text(r: Result) -> str:
    if r.status != "ok":
        return r.status.upper()
    return f"{seconds_text(r.timing.median_s)} {spread_text(r)}"


def pct(x: float | None) -> str:
    """0.123 -> "12%"; None -> "-"."""
    return "-" if x is None else f"{100 * x:.0f}%"


def peak_pct(r: Result, frac: float | None) -> str:
    """A fraction of a device peak as a percentage; 'peak?' where the measured peak is
    below the achieved rate (the sweep measured it twice: `check_peaks`), never > 100%."""
    doubtful = any(n.startswith("peak?") for n in r.notes)
    return "peak?" if (frac is None and doubtful) or (frac or 0) > 1 else pct(frac)


def result_row(r: Result) -> list:
    """The table row of one result."""
    ok = r.status == "ok"
    cache = (
        "-"
        if r.cache_bytes_measured is None
        else (
            f"{human(r.cache_bytes_measured, 'B', 1024)}"
            + (
                ""
                if r.cache_bytes_measured == r.cache_bytes_analytic
                else f" (model {human(r.cache_bytes_analytic or 0, 'B', 1024)})"
            )
        )
    )
    frac = r.bw_frac if r.mode in ("decode", "throughput") else r.flops_frac
    notes = "; ".join(
        ([r.error] if r.error else [])
        + (["graph"] if r.cuda_graph else [])
        + (["unstable"] if r.unstable else [])
        + (["peak?"] if any(n.startswith("peak?") for n in r.notes) else [])
    )
    return [
        r.spec,
        r.target if r.target != "model" else "",
        r.mode,
        r.batch,
        r.seq_len,
        _time_text(r),
        human(r.tokens_per_s) if ok else "-",
        f"{r.tflops:.3g}" if ok else "-",
        f"{r.gbps:.3g}" if ok and r.gbps else "-",
        peak_pct(r, frac) if ok else "-",
        human(r.peak_memory_bytes, "B", 1024) if r.peak_memory_bytes else "-",
        cache,
        ",".join(f"{k}:{v}" for k, v in r.backends.items() if k != "mlp"),
        notes,
    ]


PROFILE_HEADERS = [
    "spec",
    "target",
    "mode",
    "B",
    "T",
    "time (p10-p90)",
    "tok/s",
    "TFLOP/s",
    "GB/s",
    "%peak",
    "peak mem",
    "cache",
    "backend",
    "notes",
]


def compile_failed(r: Result) -> bool:
    """True for a result that was to run compiled and ran eagerly (its compile failed)."""
    return any(n.startswith("compile failed") for n in r.notes)


def compile_text(r: Result) -> str:
    """The compile column: the compile time (and graph breaks) of a compiled result,
    'failed' for one whose compile failed (timed eagerly), '-' for an eager one."""
    if r.compiled:
        breaks = r.extra.get("graph_breaks") or 0
        return seconds_text(r.compile_s or 0.0) + (
            f", {breaks} break{'s' if breaks > 1 else ''}" if breaks else ""
        )
    return "failed" if compile_failed(r) else "-"


def results_table(results: list[Result]) -> str:
    """The aligned text table of a sweep. %peak is of the matmul peak for train and
    prefill, of the copy bandwidth for decode and throughput. When any case was to run
    under torch.compile, a `compile` column (before the notes) gives each case's compile
    time, 'failed' (timed eagerly) or '-' (eager)."""
    rows = [result_row(r) for r in results]
    headers = PROFILE_HEADERS
    if any(r.compiled or compile_failed(r) for r in results):
        headers = [*headers[:-1], "compile", headers[-1]]
        rows = [[*row[:-1], compile_text(r), row[-1]] for row, r in zip(rows, results, strict=True)]
    return table(headers, rows, right={3, 4, 5, 6, 7, 8, 9, 10})


def results_document(
    results: list[Result], peaks: dict | None, notes: list[str], settings: dict
) -> dict:
    """The JSON document of a sweep (schema `archlab.profile/1`, docs/profile.md)."""
    return {
        "schema": SCHEMA,
        "device": peaks,
        "settings": settings,
        "notes": notes,
        "results": [r.to_dict() for r in results],
    }


def flat(r: Result) -> dict:
    """One CSV row: timing fields flattened, dicts and lists as text."""
    d = asdict(r)
    timing = d.pop("timing") or {}
    for k in ("median_s", "p10_s", "p90_s", "min_s", "max_s", "runs"):
        d[k] = timing.get(k)
    d["backends"] = ";".join(f"{k}={v}" for k, v in r.backends.items())
    d["notes"] = "; ".join(r.notes)
    d["extra"] = json.dumps(r.extra) if r.extra else ""
    return d


def write_csv(results: list[Result], path: str) -> None:
    """CSV of the results to `path` ('-' for stdout)."""
    rows = [flat(r) for r in results]
    if not rows:
        return
    out = sys.stdout if path == "-" else open(path, "w", newline="")  # noqa: SIM115
    try:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if out is not sys.stdout:
            out.close()


# ---- analytic comparison ---------------------------------------------------------------


def crossover_points(plans: list[Plan], metric: str, batch: int = 1) -> list[dict]:
    """Where two specs' `metric` cross (cost model, at `batch`), for every pair: `seq_len`
    is the first T of the new order, `cheaper` whether `spec` is cheaper than `versus` from
    there. Pairs outside the exact method (`CrossoverError`) give no points."""
    from archlab.cost.crossover import crossovers

    points = []
    for i, base in enumerate(plans):
        for plan in plans[i + 1 :]:
            try:
                runs = crossovers(plan, base, metric, batch)
            except Exception:  # noqa: BLE001
                continue
            for before, after in zip(runs, runs[1:], strict=False):
                if after.sign in (-1, 1) and before.sign != after.sign:
                    points.append(
                        {
                            "spec": plan.name,
                            "versus": base.name,
                            "metric": metric,
                            "seq_len": after.start,
                            "batch": batch,
                            "cheaper": after.sign == -1,
                        }
                    )
    return points
