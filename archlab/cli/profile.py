"""`archlab profile`: measured speed and memory of whole specs or single layers."""

from __future__ import annotations

import json
from pathlib import Path

from archlab.cli.common import add_extends_root, check_layer, check_modes
from archlab.cli.measure_options import (
    add_size_options,
    default_seqs,
    emit,
    parse_layer,
    parse_modes,
    partial_note,
    resolve_sizes,
    settings_dict,
    unique_plans,
)
from archlab.lang.errors import UsageError
from archlab.measure import MODES


def register(subparsers) -> None:
    """Add `profile` to the `archlab` parser."""
    p = subparsers.add_parser(
        "profile", help="measured speed and memory: train, prefill, decode, throughput"
    )
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument(
        "--mode",
        default="train,prefill,decode",
        help=f"comma-separated, from {', '.join(MODES)}, or all",
    )
    p.add_argument(
        "--layer",
        action="append",
        default=[],
        metavar="KIND[:k=v,...]",
        help="time one block of that kind alone (repeatable), e.g. rat:chunk_size=64",
    )
    add_size_options(p, "CPU 256; CUDA each spec's max_seq_len")
    add_extends_root(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """`archlab profile`: measure the cases, print a table (or JSON / CSV)."""
    from archlab.measure.sweep import sweep
    from archlab.report.results import results_document, results_table, write_csv

    check_modes(args.mode, MODES)  # unknown values, with a did-you-mean
    for text in args.layer:
        check_layer(text)
    plans = unique_plans(args.specs)
    modes = parse_modes(args.mode)
    layers = [parse_layer(t) for t in args.layer]
    if layers and "throughput" in modes:
        raise UsageError("--mode throughput times whole models; it does not take --layer")
    sizes = resolve_sizes(args)
    default_seqs(sizes, plans)
    out = Path(args.out) if args.out else None

    def save(results, peaks, notes) -> None:
        doc = results_document(results, peaks, notes, settings_dict(sizes))
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(json.dumps(doc, indent=2, default=str))
        write_csv(results, str(out / "profile.csv"))

    def save_partial(results, peaks) -> None:  # a run cut short keeps what it measured
        save(results, peaks, [partial_note(results)])

    results, peaks, notes = sweep(
        plans, modes, sizes, layers, on_result=save_partial if out else None
    )
    doc = results_document(results, peaks, notes, settings_dict(sizes))
    if out:
        save(results, peaks, notes)
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    if args.csv:
        write_csv(results, args.csv)
    if not args.json and args.csv != "-":
        print(
            f"device: {peaks['device']}, torch {peaks['torch']}; measured peaks "
            f"{peaks['matmul_tflops']:.3g} TFLOP/s ({peaks['dtype']} matmul), "
            f"{peaks['copy_gbps']:.4g} GB/s (copy)"
        )
        for n in notes:
            print(n)
        print(results_table(results))
        extra = sorted(
            {
                f"{r.spec} {r.mode}: {n}"
                for r in results
                for n in r.notes
                if "graph" in n or "OOM" in n or "estimated" in n or n.startswith("backend:")
            }
        )
        for n in extra:
            print(f"note: {n}")
    if args.out:
        emit(f"wrote {Path(args.out) / 'profile.json'} and profile.csv", args)
    return 0
