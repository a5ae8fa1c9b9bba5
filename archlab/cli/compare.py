"""`archlab compare`: specs side by side, analytic and (with --measure) measured, with
plots and a Markdown report."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from archlab.cli.common import add_extends_root
from archlab.cli.measure_options import (
    add_size_options,
    default_seqs,
    parse_modes,
    partial_note,
    profile_argv,
    resolve_sizes,
    settings_dict,
    unique_plans,
)
from archlab.lang.errors import UsageError


def register(subparsers) -> None:
    """Add `compare` to the `archlab` parser."""
    p = subparsers.add_parser(
        "compare", help="specs side by side: parameters, FLOPs, cache (--measure: speed)"
    )
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument(
        "--measure",
        action="store_true",
        help="also time train, prefill, decode and throughput (on the CPU: scaled-down copies)",
    )
    p.add_argument("--mode", default="all", help="modes measured with --measure")
    p.add_argument(
        "--parallel",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="--measure each spec in its own process at once, one per GPU (default: on when "
        "more than one GPU is visible; off on the CPU, where --parallel runs two at a time)",
    )
    add_size_options(p, "CPU 128,256,512; CUDA 1k,4k,16k")
    add_extends_root(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """`archlab compare`: analytic (and with --measure, measured) side by side."""
    from archlab.measure.cases import prepare, run_cases
    from archlab.report.compare import compare_outputs
    from archlab.report.results import results_document, write_csv

    modes = parse_modes(args.mode) if args.measure else []  # usage errors first
    plans = unique_plans(args.specs)
    sizes = resolve_sizes(args, compare=True)
    if sizes.device.type == "cuda" and args.gen_sample is None:
        sizes.gen_sample = 16  # keeps the GPU comparison to minutes: estimated, and labelled
    default_seqs(sizes, plans)
    results, peaks, notes, measured, note = None, None, [], None, ""
    out = Path(args.out) if args.out else None
    partial = out / "measured.partial.json" if out else None

    def save_partial(results, peaks) -> None:  # a run cut short keeps what it measured
        doc = results_document(results, peaks, [partial_note(results)], settings_dict(sizes))
        out.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(doc, indent=2, default=str))

    slots = parallel_slots(args, sizes, len(plans)) if args.measure else []
    if args.measure and slots:
        from archlab.measure.parallel import run_parallel

        argv = profile_argv(args, sizes, modes)
        results, peaks, notes = run_parallel(
            plans, args.specs, argv, slots, modes, sizes, save_partial if out else None
        )
    elif args.measure:
        results, peaks, notes = run_cases(
            plans, modes, sizes, [], on_result=save_partial if out else None
        )
        prepared = [prepare(p, sizes) for p in plans]
        measured = [p for p, _ in prepared]
        note = (
            f"{sizes.device.type.upper()}, scaled down: {prepared[0][1]}"
            if sizes.scale
            else f"{peaks['device']}, specs as written"
        )
    text, doc = compare_outputs(
        plans,
        sizes.seqs,
        results,
        measured,
        notes,
        peaks,
        out,
        note,
        settings_dict(sizes),
    )
    if partial is not None:
        partial.unlink(missing_ok=True)  # compare.json now holds the whole sweep
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    if args.csv and results:
        write_csv(results, args.csv)
    if not args.json and args.csv != "-":
        print(text)
        if not args.out:
            print("(--out DIR writes the plots and a Markdown report)")
    return 0


def parallel_slots(args, sizes, specs: int) -> list[dict[str, str]]:
    """The environments of `--parallel`'s processes, one per GPU (two on the CPU), or []
    to measure in this process (the default with one GPU, on the CPU, or for one spec)."""
    import torch

    from archlab.measure.parallel import gpu_slots

    cuda = sizes.device.type == "cuda"
    gpus = torch.cuda.device_count() if cuda else 0
    wanted = args.parallel if args.parallel is not None else (gpus > 1 and specs > 1)
    if not wanted:
        return []
    if cuda and sizes.device.index is not None:
        raise UsageError("--parallel puts one spec on each GPU: give --device cuda, not an index")
    return gpu_slots(gpus) if cuda else [{}, {}]
