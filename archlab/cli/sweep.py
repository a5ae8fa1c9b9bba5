"""`archlab sweep SWEEP.yaml`: the points of a sweep file (a base spec and axes of values,
archlab/lang/sweep_file.py), each validated and costed (cost model, specs as written),
with `--measure` timed (as `archlab profile` does: on the CPU scaled-down copies,
labelled), with `--probe mqar` trained on recall, and the Pareto fronts of the pairs a
designer weighs (archlab/report/pareto.py). `--out DIR` writes sweep.json, sweep.csv,
sweep.md and the plots, and resumes from them: a point already measured or probed with
the same axis values, spec and settings is not run again. See docs/sweep.md."""

from __future__ import annotations

import csv
import hashlib
import json
import sys
import time
from pathlib import Path

from archlab.cli.common import (
    add_extends_root,
    check_modes,
    existing,
    length_warnings,
    report_warnings,
)
from archlab.cli.measure_options import add_size_options
from archlab.cli.probe import TASKS, Bar, add_probe_options
from archlab.lang.errors import UsageError

SCHEMA = "archlab.sweep/1"


def register(subparsers) -> None:
    """Add `sweep` to the `archlab` parser."""
    p = subparsers.add_parser(
        "sweep",
        help="variants of a spec from a sweep file: cost, speed (--measure), recall "
        "(--probe mqar), Pareto fronts",
    )
    p.add_argument("sweep", metavar="SWEEP", help="the sweep file (base spec and axes)")
    p.add_argument(
        "--measure", action="store_true", help="time every point (CPU: scaled-down copies)"
    )
    p.add_argument("--mode", default="train,decode", help="modes timed with --measure")
    p.add_argument("--probe", choices=TASKS, default=None, help="train each point on MQAR")
    p.add_argument(
        "--bandwidth",
        type=float,
        default=1000.0,
        help="GB/s of memory bandwidth for the analytic decode tok/s bound (default 1000)",
    )
    add_size_options(p, "measured lengths; CPU 256, CUDA the sweep file's seq")
    add_probe_options(p, prefix="probe-")
    add_extends_root(p)
    p.set_defaults(func=run)


def digest(obj) -> str:
    """A short hash of JSON-able data (the resume keys)."""
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_digest(plan) -> str:
    """What is built of a point: its model settings and every block's params."""
    return digest(
        [plan.model.model_dump(), [(b.kind, b.params.model_dump()) for b in plan.order()]]
    )


def cost_rows(plan, seqs: list[int], batch: int, bandwidth_gbps: float) -> list[dict]:
    """The cost model's figures of a point at each T (batch sequences)."""
    from archlab.cost.analytic import spec_cost

    rows = []
    for T in seqs:
        c = spec_cost(plan, batch=batch, seq_len=T)
        per_token = (
            c.decode_bytes // batch if c.decode_bytes % batch == 0 else c.decode_bytes / batch
        )
        rows.append(
            {
                "seq_len": T,
                "batch": batch,
                "params": c.params,
                "fwd_flops": c.fwd_flops,
                "train_flops": c.train_flops,
                "cache_bytes": c.cache_bytes,
                "cache_bytes_per_seq": c.cache_bytes // batch,
                "decode_bytes": c.decode_bytes,
                "decode_bytes_per_token": per_token,
                "bw_bound_decode_tok_s": bandwidth_gbps * 1e9 / per_token,
            }
        )
    return rows


def previous(out: Path | None) -> dict[str, dict]:
    """Resume key -> what an earlier run of this sweep into `out` measured or probed (only
    what ran to the end: a case or probe that failed with an error is run again)."""
    path = out / "sweep.json" if out else None
    if path is None or not path.is_file():
        return {}
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    found = {}
    for p in doc.get("points") or []:
        for part in (p.get("measured"), p.get("probe")):
            if not part or not part.get("key"):
                continue
            results = part.get("results") or []
            if part.get("status", "ok") == "ok" and all(r["status"] != "error" for r in results):
                found[part["key"]] = part
    return found


def run(args) -> int:
    """`archlab sweep`: cost (and measure, probe) every point; fronts; files."""
    from archlab.lang.sweep_file import compile_points, load_sweep
    from archlab.report.pareto import fronts

    sweep = load_sweep(existing(args.sweep))
    if args.bandwidth <= 0:
        raise UsageError(f"--bandwidth must be > 0 (got {args.bandwidth})")
    plans, warnings = compile_points(sweep)
    start = time.perf_counter()
    seqs = sweep.seqs or sorted({p.model.max_seq_len for p in plans})
    past = {str(w): w for p in plans for w in length_warnings(p, seqs, "seq")}  # one each
    shown = report_warnings(warnings + list(past.values()), args)
    doc = {
        "schema": SCHEMA,
        "sweep": {
            "file": sweep.file,
            "name": sweep.name,
            "description": sweep.description,
            "base": sweep.base_file,
            "axes": {a.name: a.values for a in sweep.axes},
            "zip": sweep.zip,
            "seq": seqs,
            "batch": sweep.batch,
        },
        "device": None,
        "settings": {"bandwidth_GBps": args.bandwidth, "measure": None, "probe": None},
        "notes": [],
        "warnings": shown,
        "points": [],
    }
    bar = Bar(len(plans), after_s=1.0)
    for n, (point, plan) in enumerate(zip(sweep.points, plans, strict=True)):
        doc["points"].append(
            {
                "point": point.index,
                "label": point.label,
                "values": point.values,
                "name": plan.name,
                "spec_digest": plan_digest(plan),
                "cost": cost_rows(plan, seqs, sweep.batch, args.bandwidth),
                "measured": None,
                "probe": None,
            }
        )
        bar.update(n + 1, f"cost #{point.index}")
    bar.close()
    doc["timing"] = {"cost_s": time.perf_counter() - start}
    out = Path(args.out) if args.out else None
    old = previous(out)

    def save() -> None:  # a run cut short keeps what it did
        out.mkdir(parents=True, exist_ok=True)
        partial = {**doc, "notes": doc["notes"] + ["partial: the sweep has not ended"]}
        (out / "sweep.json").write_text(json.dumps(partial, indent=2, default=str))

    if out:  # the cost at once: a run cut short in measuring or probing keeps it
        save()
    if args.measure:
        measure_points(doc, plans, args, old, save if out else None)
    if args.probe:
        probe_points(doc, plans, args, old, save if out else None)
    doc["fronts"] = fronts(doc)
    if out:
        doc["files"] = write_files(doc, out)
    if args.csv:
        write_csv(doc, args.csv)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    elif args.csv != "-":
        print(text_report(doc))
        if out:
            print(f"wrote {', '.join(str(out / f) for f in doc['files'])}")
    return 0


def measure_points(doc: dict, plans, args, old: dict, save) -> None:
    """Time every point as `archlab profile` does (one sweep of cases per point)."""
    from archlab.cli.measure_options import parse_modes, resolve_sizes, settings_dict
    from archlab.cost.analytic import param_count, spec_cost
    from archlab.measure import MODES
    from archlab.measure.cases import compile_notes, prepare, result_from_dict, run_cases

    check_modes(args.mode, MODES)
    modes = parse_modes(args.mode)
    sizes = resolve_sizes(args)
    if not args.seq and sizes.device.type == "cuda":
        sizes.seqs = list(doc["sweep"]["seq"])
    settings = settings_dict(sizes)
    settings.pop("refresh_peaks", None)
    doc["settings"]["measure"] = {"modes": modes, "device": str(sizes.device), **settings}
    per_point = len(sizes.seqs) * len([m for m in modes if m != "throughput"]) + (
        "throughput" in modes
    )
    bar, reused, measured = Bar(len(plans)), 0, []
    for n, (point, plan) in enumerate(zip(doc["points"], plans, strict=True)):
        key = digest(["measure", point["spec_digest"], point["label"], settings, modes])
        if key in old:
            point["measured"], reused = old[key], reused + 1
            measured += [result_from_dict(r) for r in old[key].get("results") or []]
            bar.skip(1)
            continue

        def case(results, peaks, n=n, label=point["label"]):
            bar.update(n + len(results) / per_point, f"measure #{n} {label}")

        bar.update(n, f"measure #{n} {point['label']}")
        try:
            small, described = prepare(plan, sizes)
        except UsageError as e:  # a point that cannot be scaled down: the others go on
            doc["notes"].append(f"#{n} not measured: {e}")
            continue
        results, peaks, notes = run_cases([plan], modes, sizes, [], quiet=True, on_result=case)
        doc["device"] = peaks
        measured += results
        doc["notes"] += [
            x
            for x in notes
            if not x.startswith(("scaled ", "torch.compile:")) and x not in doc["notes"]
        ]
        point["measured"] = {
            "key": key,
            "measured_as": described or f"as written, {small.model.dtype}",
            "params": param_count(small),
            "cache_bytes": {str(T): spec_cost(small, 1, T).cache_bytes for T in sizes.seqs},
            "results": [r.to_dict() for r in results],
        }
        if save:
            save()
    bar.close()
    doc["notes"] += compile_notes(measured, sizes.settings)  # one line for every point
    if reused:
        doc["notes"].append(f"{reused} points' measurements reused from the earlier run in --out")


def probe_points(doc: dict, plans, args, old: dict, save) -> None:
    """Train every point's copies on MQAR (archlab.measure.probe_runs: every lr and seed
    given, `--probe-jobs` at once); a point whose every run fails is recorded with its
    error and the sweep goes on."""
    from archlab.cli.probe import pick_device, probe_grid, probe_jobs
    from archlab.measure.probe_runs import error_text, probe_many

    device = pick_device(args.device, args.threads)
    grid, jobs = probe_grid(args, device), probe_jobs(args)
    doc["settings"]["probe"] = {"name": args.probe, "device": str(device), **grid.to_dict()}
    steps, todo = grid.steps(), []
    bar = Bar(len(plans) * steps)
    for point, plan in zip(doc["points"], plans, strict=True):
        key = digest(["probe", point["spec_digest"], point["label"], doc["settings"]["probe"]])
        if key in old:
            point["probe"] = old[key]
            bar.skip(steps)
        else:
            todo.append((point, plan, key))

    def finished(k: int, result) -> None:
        point, _, key = todo[k]
        if isinstance(result, Exception):  # one point's failure is its result
            error = error_text(result)
            point["probe"] = {"key": key, "status": "error", "error": error, "accuracy": None}
        else:
            point["probe"] = {"key": key, "status": "ok", **result}
        if save:
            save()

    def progress(done: int, total: int, text: str) -> None:
        bar.update(bar.skipped + done, text)

    probe_many(
        [plan for _, plan, _ in todo], grid, device, jobs=jobs, on_progress=progress,
        on_result=finished,
    )  # fmt: skip
    bar.close()
    reused = len(plans) - len(todo)
    if reused:
        doc["notes"].append(f"{reused} points' probes reused from the earlier run in --out")


def write_csv(doc: dict, path) -> None:
    """One row per point: number, label, axis values, every figure (`metric@T`)."""
    from archlab.lang.sweep_file import value_text
    from archlab.report.pareto import point_metrics

    rows = []
    for p in doc["points"]:
        row = {"point": p["point"], "label": p["label"]}
        row.update({f"axis:{a}": value_text(v) for a, v in p["values"].items()})
        row.update(point_metrics(p))
        row["measured_as"] = (p.get("measured") or {}).get("measured_as", "")
        row["probe_model"] = (p.get("probe") or {}).get("model", "")
        rows.append(row)
    fields = list(dict.fromkeys(k for r in rows for k in r))
    out = sys.stdout if str(path) == "-" else open(path, "w", newline="")  # noqa: SIM115
    try:
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    finally:
        if out is not sys.stdout:
            out.close()


def write_files(doc: dict, out: Path) -> list[str]:
    """sweep.json, sweep.csv, sweep.md and the plots in `out`; their names."""
    from archlab.report.pareto import front_plots, markdown
    from archlab.report.probe_report import probe_plot

    out.mkdir(parents=True, exist_ok=True)
    images = front_plots(doc, out)
    curves = [
        (f"#{p['point']} {p['label']}", p["probe"])
        for p in doc["points"]
        if p.get("probe") and p["probe"].get("status") == "ok"
    ]
    curve = probe_plot(curves, out, "probe_curves") if curves else None
    if curve:
        images["probe"] = curve
    names = ["sweep.json", "sweep.csv", "sweep.md", *images.values()]
    if not images:
        doc["notes"].append("no plots: matplotlib is not installed (pip install 'archlab[plot]')")
    doc["files"] = names
    (out / "sweep.md").write_text(markdown(doc, images))
    write_csv(doc, out / "sweep.csv")
    (out / "sweep.json").write_text(json.dumps(doc, indent=2, default=str))
    return names


def text_report(doc: dict) -> str:
    """The points as a table (the first cost T's figures, measured and recall columns
    where there are any), then every front as the points on it."""
    from archlab.report.pareto import (
        metric_name,
        point_metrics,
        seq_text,
        short_name,
        value_text,
    )
    from archlab.report.probe_report import recall_text
    from archlab.report.tables import table

    def cell(point: dict, figures: dict, metric: str) -> str:
        if metric == "mqar_accuracy":  # of several seeds: the mean and their range
            return recall_text(point.get("probe") or {})
        return value_text(metric, figures.get(metric)).replace(" tok/s", "")

    points, s = doc["points"], doc["sweep"]
    figures = [point_metrics(p) for p in points]
    T = s["seq"][0]
    cols = ["params", f"train_flops@{T}", f"cache_bytes_per_seq@{T}"]
    cols += [f"decode_bytes_per_token@{T}", f"bw_bound_decode_tok_s@{T}"]
    found = dict.fromkeys(k for f in figures for k in f)
    cols += [k for k in found if k.startswith(("measured_", "mqar")) and k not in cols]
    head = ["#", "point", *(short_name(k) for k in cols)]
    rows = [
        [p["point"], p["label"], *(cell(p, f, k) for k in cols)]
        for p, f in zip(points, figures, strict=True)
    ]
    lines = [
        f"sweep {s['name']}: {len(points)} points of {s['base']}; cost model (specs as "
        f"written, batch {s['batch']}) at T = {', '.join(seq_text(x) for x in s['seq'])}, "
        f"table at T = {seq_text(T)}; bw-bound tok/s = {doc['settings']['bandwidth_GBps']:g} "
        "GB/s / decode B/tok (analytic, not measured)",
        f"cost of {len(points)} points x {len(s['seq'])} lengths: {doc['timing']['cost_s']:.2f} s",
        table(head, rows, right=set(range(2, len(head)))),
        "",
        "Pareto fronts (points no other point beats on both figures; in increasing x):",
    ]
    for f in doc["fronts"]:
        lines.append(
            f"  {metric_name(f['y'])} vs {metric_name(f['x'])} [{f['basis']}]: "
            + ", ".join(f"#{i}" for i in f["front"])
        )
    lines += [f"note: {n}" for n in doc["notes"]]
    for p in points:
        if (p.get("probe") or {}).get("status") == "error":
            lines.append(f"note: probe of #{p['point']} failed: {p['probe']['error']}")
    return "\n".join(lines)
