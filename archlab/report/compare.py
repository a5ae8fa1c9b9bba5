"""The comparison of `archlab compare`: analytic rows, measured rows beside them, the
Markdown report, and the files of `--out` (plots, compare.json, CSV).

Analytic figures come from the cost model on the specs as written (batch 1); measured
ones from `archlab.measure.profile` results (on the CPU: scaled-down copies, labelled so
in the headers, with each spec's scaling beside the table).
Ratios are this spec's figure over the first spec's at the same T. Crossovers are the
sequence lengths where the cost model says a spec becomes cheaper or dearer than the
first one (`archlab.cost.crossovers`); the plots mark those inside their range.
Plots need matplotlib (`pip install "archlab[plot]"`); without it the rest still works.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from archlab.cost.analytic import spec_cost
from archlab.lang.plan import Plan
from archlab.measure.result import Result
from archlab.report.results import (
    METRIC_TEXT,
    TIMED,
    crossover_points,
    peak_pct,
    results_document,
    seconds_text,
    write_csv,
)
from archlab.report.tables import human, table

COMPARE_SCHEMA = "archlab.compare/1"


def analytic_rows(plans: list[Plan], seqs: list[int]) -> list[dict]:
    """Cost-model figures of each spec at each T (batch 1), with ratios to the first."""
    rows = []
    for T in seqs:
        base = None
        for plan in plans:
            c = spec_cost(plan, batch=1, seq_len=T)
            row = {
                "spec": plan.name,
                "seq_len": T,
                "params": c.params,
                "fwd_flops": c.fwd_flops,
                "train_flops": c.train_flops,
                "cache_bytes": c.cache_bytes,
                "decode_flops": c.decode_flops,
                "decode_bytes": c.decode_bytes,
            }
            base = base or row
            row["ratio"] = {
                k: row[k] / base[k] if base[k] else None
                for k in row
                if k not in ("spec", "seq_len")
            }
            rows.append(row)
    return rows


def ratio_text(value: float | None, ratio: float | None, fmt) -> str:
    if value is None:
        return "-"
    return fmt(value) + ("" if ratio is None or math.isclose(ratio, 1) else f" (x{ratio:.2g})")


def measured_index(results: list[Result]) -> dict:
    return {(r.spec, r.mode, r.seq_len): r for r in results}


def compare_rows(
    plans: list[Plan], seqs: list[int], analytic: list[dict], results: list[Result] | None
) -> tuple[list[str], list[list]]:
    """Headers and rows of the side-by-side table (one row per spec and T)."""
    headers = ["spec", "T", "params", "train FLOPs", "cache", "decode bytes"]
    if results is not None:
        headers += ["train", "prefill", "decode"]
    got = measured_index(results or [])
    compiled = any(r.compiled for r in results or [])  # then an eager case is marked so
    rows = []
    for row in analytic:
        q = row["ratio"]
        cells = [
            row["spec"],
            row["seq_len"],
            ratio_text(row["params"], q["params"], human),
            ratio_text(row["train_flops"], q["train_flops"], human),
            ratio_text(row["cache_bytes"], q["cache_bytes"], lambda v: human(v, "B", 1024)),
            ratio_text(row["decode_bytes"], q["decode_bytes"], lambda v: human(v, "B", 1024)),
        ]
        for mode in TIMED if results is not None else ():
            r, base = (
                got.get((row["spec"], mode, row["seq_len"])),
                got.get((plans[0].name, mode, row["seq_len"])),
            )
            if r is None or r.status != "ok":
                cells.append("-" if r is None else r.status.upper())
                continue
            ok = base is not None and base.status == "ok"
            ratio = r.timing.median_s / base.timing.median_s if ok else None
            cells.append(
                ratio_text(r.timing.median_s, ratio, seconds_text)
                + (" unstable" if r.unstable else "")
                + (" eager" if compiled and not r.compiled else "")
            )
        rows.append(cells)
    return headers, rows


ANALYTIC = "analytic (as written)"


def measured_label(results: list[Result]) -> str:
    """'measured (scaled)' when the measured models are scaled-down copies, else
    'measured (full size)': a measured ratio is never shown as an analytic one."""
    return "measured (scaled)" if any(r.scaled for r in results) else "measured (full size)"


def measured_as(plans: list[Plan], results: list[Result]) -> dict[str, str | None]:
    """How each spec's measured model was made: its scaling ('d_model 256, ...'), or
    'as written, <dtype>'; None for a spec with no result."""
    first = {}
    for r in results:
        first.setdefault(r.spec, r)
    return {
        p.name: (
            None
            if p.name not in first
            else first[p.name].scaled or f"as written, {first[p.name].dtype}"
        )
        for p in plans
    }


def throughput_rows(results: list[Result]) -> list[list]:
    done = [r for r in results if r.mode == "throughput"]
    base = next((r for r in done if r.status == "ok"), None)
    rows = []
    for r in done:
        if r.status != "ok":
            rows.append([r.spec, "-", r.status.upper(), "-", "-"])
            continue
        ratio = r.tokens_per_s / base.tokens_per_s if base else None
        rows.append(
            [
                r.spec,
                r.batch,
                ratio_text(r.tokens_per_s, ratio, lambda v: f"{v:,.0f}"),
                f"{r.gbps:.3g}" if r.gbps else "-",
                peak_pct(r, r.bw_frac),
            ]
        )
    return rows


THROUGHPUT_HEADERS = ["spec", "batch", "tokens/s", "GB/s", "%bw"]


def compile_failures(results: list[Result]) -> list[str]:
    """One line per case whose compile failed (timed eagerly, 'eager' in the table)."""
    return [
        f"{r.spec} {r.mode} T={r.seq_len}: {n} ('eager' in the table)"
        for r in results
        for n in r.notes
        if n.startswith("compile failed")
    ]


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(
    path: Path, title: str, intro: list[str], sections: list[tuple[str, str]], plots: list[Path]
) -> None:
    """A short Markdown report: intro lines, titled sections, the plots embedded."""
    text = [f"# {title}", "", *intro, ""]
    for head, body in sections:
        text += [f"## {head}", "", body, ""]
    if plots:
        text += ["## Plots", ""]
        text += [f"![{p.stem}]({p.name})\n" for p in plots if p.suffix == ".png"]
    path.write_text("\n".join(text))


# ---- the compare command's output ------------------------------------------------------


def compare_outputs(
    plans: list[Plan],
    seqs: list[int],
    results: list[Result] | None,
    measured_plans: list[Plan] | None,
    notes: list[str],
    peaks: dict | None,
    out: Path | None,
    measured_note: str = "",
    settings: dict | None = None,
) -> tuple[str, dict]:
    """The text (tables, crossovers, notes) and the JSON document of a comparison
    (`measured_note` says on what the measurements ran, for the plots' titles: when the
    measured models are scaled copies it is replaced by the device and "scaled-down
    copies", every spec's own scaling going into a table, the report and the plots'
    captions; `settings` are the sweep's, recorded with the measured results); with
    `out`, also plots, compare.json, compare.csv (measured results) and report.md there.
    Headers label the analytic columns "analytic (as written)" and the measured ones
    "measured (scaled)" or "measured (full size)"."""
    analytic = analytic_rows(plans, seqs)
    headers, rows = compare_rows(plans, seqs, analytic, results)
    label = measured_label(results or [])
    groups = [(2, ANALYTIC)] + ([(6, label)] if results is not None else [])
    md_headers = headers[:2] + [
        f"{h}, {ANALYTIC if i < 6 else label}" for i, h in enumerate(headers) if i >= 2
    ]
    how = measured_as(plans, results) if results is not None else {}
    if how and any(r.scaled for r in results):
        measured_note = f"{(peaks or {}).get('device', 'CPU')}; scaled-down copies, listed below"
    points = [
        p
        for m in ("train_flops", "cache_bytes", "decode_bytes")
        for p in crossover_points(plans, m)
    ]
    intro = [
        f"{len(plans)} specs; ratios (xN) are to {plans[0].name} at the same T; "
        "analytic columns: cost model, specs as written, batch 1"
    ]
    if results is not None and peaks:
        intro.append(
            f"measured on {peaks['device']} (torch {peaks['torch']}); {label} columns: "
            "median time (ratio to the first spec's measured model)"
        )
    intro += [n for n in notes if not n.startswith("scaled ")]  # per spec: the table below
    intro += compile_failures(results or [])
    lines = [
        *intro,
        "",
        table(headers, rows, right=set(range(1, len(headers))), groups=groups),
        "",
    ]
    how_rows = [[name, text] for name, text in how.items() if text is not None]
    if how_rows:
        lines += [table(["spec", "measured model"], how_rows, right=set()), ""]
    tput = throughput_rows(results or [])
    if tput:
        r0 = next(r for r in results if r.mode == "throughput")
        lines += [
            f"throughput, {label}: {r0.extra['generate']} tokens after "
            f"{r0.extra['prompt']}, largest batch that fits",
            table(THROUGHPUT_HEADERS, tput, right={1, 2, 3, 4}),
            "",
        ]
    cross_text = [
        f"{p['spec']} becomes {'cheaper' if p['cheaper'] else 'dearer'} than "
        f"{p['versus']} in {METRIC_TEXT[p['metric']]} from T = {p['seq_len']:,}"
        for p in points
    ]
    lines += ["crossovers (cost model):"] + [f"  {c}" for c in cross_text or ["none"]]
    doc = {
        "schema": COMPARE_SCHEMA,
        "specs": [{"name": p.name, "file": p.file, "measured_as": how.get(p.name)} for p in plans],
        "seq": seqs,
        "analytic": analytic,
        "crossovers": points,
        "notes": notes,
        "measured": None
        if results is None
        else results_document(results, peaks, notes, settings or {}),
        "files": [],
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        from archlab.report.plots import plots_available, write_plots  # matplotlib: late

        plots = write_plots(out, plans, seqs, results, measured_plans, measured_note, how)
        if not plots_available():
            lines.append('no plots: matplotlib is missing (pip install "archlab[plot]")')
        if results:
            write_csv(results, str(out / "compare.csv"))
        sections = [("Side by side", markdown_table(md_headers, rows))]
        if how_rows:
            sections.append(
                ("Measured models", markdown_table(["spec", "measured model"], how_rows))
            )
        if tput:
            sections.append(
                (f"Generation throughput, {label}", markdown_table(THROUGHPUT_HEADERS, tput))
            )
        sections.append(
            ("Crossovers (cost model)", "\n".join(f"- {c}" for c in cross_text) or "none")
        )
        write_report(
            out / "report.md",
            "archlab compare: " + " vs ".join(p.name for p in plans),
            [f"{n}.  " for n in intro],
            sections,
            plots,
        )
        doc["files"] = [str(p) for p in [*plots, out / "report.md", out / "compare.json"]]
        (out / "compare.json").write_text(json.dumps(doc, indent=2, default=str))
        lines.append(f"wrote {out / 'report.md'}, {len(plots)} plot files, compare.json")
    return "\n".join(lines), doc
