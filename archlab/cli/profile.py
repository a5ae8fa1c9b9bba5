"""`archlab profile`: measured speed and memory of whole specs or single layers; with
`--nproc N` (or under torchrun), sharded training with FSDP2 over N processes
(docs/distributed.md)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from archlab.cli.common import add_extends_root
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
        default=None,
        help=f"comma-separated, from {', '.join(MODES)}, or all (default train,prefill,decode; "
        "with --nproc train)",
    )
    p.add_argument(
        "--layer",
        action="append",
        default=[],
        metavar="KIND[:k=v,...]",
        help="time one block of that kind alone (repeatable), e.g. rat:chunk_size=64",
    )
    add_size_options(p, "CPU 256; CUDA each spec's max_seq_len", trace=True)
    add_sharded_options(p)
    add_extends_root(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """`archlab profile`: measure the cases, print a table (or JSON / CSV)."""
    from archlab.measure.cases import run_cases
    from archlab.measure.trace import trace_note
    from archlab.report.results import results_document, results_table, write_csv

    sharded = args.nproc is not None or launched_by_torchrun()
    modes = parse_modes(args.mode or ("train" if sharded else "train,prefill,decode"))
    layers = [parse_layer(t) for t in args.layer]  # usage errors before the specs are read
    if sharded:
        return run_sharded(args, modes, layers)
    if args.checkpoint:
        raise UsageError("--checkpoint is for sharded training: add --nproc N")
    plans = unique_plans(args.specs)
    if layers and "throughput" in modes:
        raise UsageError("--mode throughput times whole models; it does not take --layer")
    sizes = resolve_sizes(args)
    default_seqs(sizes, plans)
    out = Path(args.out) if args.out else None
    if args.trace:
        try:
            os.makedirs(args.trace, exist_ok=True)
        except OSError as e:
            raise UsageError(f"--trace {args.trace}: cannot make the directory ({e})") from None

    def save(results, peaks, notes) -> None:
        doc = results_document(results, peaks, notes, settings_dict(sizes))
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(json.dumps(doc, indent=2, default=str))
        write_csv(results, str(out / "profile.csv"))

    def save_partial(results, peaks) -> None:  # a run cut short keeps what it measured
        save(results, peaks, [partial_note(results)])

    results, peaks, notes = run_cases(
        plans, modes, sizes, layers, on_result=save_partial if out else None
    )
    notes += trace_note(results, args.trace)
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
                if any(w in n for w in ("graph", "compile", "OOM", "estimated"))
                or n.startswith("backend:")
            }
        )
        for n in extra:
            print(f"note: {n}")
    if args.out:
        emit(f"wrote {Path(args.out) / 'profile.json'} and profile.csv", args)
    return 0


# ---- sharded training: --nproc N, or a rank that torchrun started ---------------------------


def add_sharded_options(p) -> None:
    """The options of sharded training measurements."""
    g = p.add_argument_group("sharded training (torch.distributed FSDP2; docs/distributed.md)")
    g.add_argument(
        "--nproc",
        type=int,
        default=None,
        metavar="N",
        help="train on N processes (one GPU each; gloo on the CPU) started by torch's elastic "
        "launcher, the model sharded with FSDP2; also the 1-process case, for the scaling",
    )
    g.add_argument(
        "--checkpoint", action="store_true", help="activation checkpointing of every block"
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=1200.0,
        metavar="S",
        help="seconds for the whole sharded run: then every rank is stopped (default 1200)",
    )
    g.add_argument(
        "--no-baseline", action="store_true", help="skip the 1-process case (no scaling figure)"
    )


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or another elastic agent) started as a rank."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "WORLD_SIZE" in os.environ


def run_sharded(args, modes: list[str], layers: list) -> int:
    """`profile --nproc N` (or a torchrun rank): sharded train cases; the launching
    process (or rank 0) prints and writes."""
    import torch

    from archlab.measure.cases import prepare, scaling_notes
    from archlab.measure.dist_launch import launch, new_run_dir, run_here
    from archlab.measure.distributed import DistJob
    from archlab.measure.profile import short_error
    from archlab.report.results import results_document, write_csv

    here = launched_by_torchrun()
    world = int(os.environ["WORLD_SIZE"]) if here else args.nproc
    if here and args.nproc not in (None, world):
        raise UsageError(f"--nproc {args.nproc}: torchrun started {world} processes")
    if world < 1:
        raise UsageError(f"--nproc must be >= 1 (got {world})")
    if modes != ["train"]:
        raise UsageError("--nproc measures sharded training: --mode train")
    if layers:
        raise UsageError("--nproc trains whole models; it does not take --layer")
    if args.compile:
        raise UsageError("--nproc: sharded training runs eagerly; it does not take --compile")
    if args.trace:
        raise UsageError("--nproc: sharded training is not traced; it does not take --trace")
    if args.timeout <= 0:
        raise UsageError(f"--timeout must be > 0 (got {args.timeout:g})")
    plans = unique_plans(args.specs)
    sizes = resolve_sizes(args)
    sizes.settings.compile = False  # FSDP2 runs eagerly here (the default on CUDA too)
    if sizes.device.index is not None:
        raise UsageError("--nproc: rank k runs on cuda:k; give --device cuda, not an index")
    if sizes.device.type == "cuda" and not here and world > torch.cuda.device_count():
        raise UsageError(f"--nproc {world}: only {torch.cuda.device_count()} GPU(s) here")
    default_seqs(sizes, plans)
    prepared = [prepare(p, sizes) for p in plans]
    job = DistJob(
        [p for p, _ in prepared],
        [text for _, text in prepared],
        sizes.seqs,
        sizes.batch,
        sizes.tokens,
        sizes.settings,
        args.checkpoint,
        sizes.device.type,
        args.timeout,
        min(300.0, args.timeout),
        new_run_dir(),
        baseline=not args.no_baseline,
        threads=args.threads,
        refresh_peaks=args.refresh_peaks,
    )
    if here:
        try:
            got = run_here(job)
        except Exception as e:  # torchrun stops the other ranks and reports the exit status
            rank = os.environ.get("RANK")
            print(
                f"archlab: rank {rank}: {short_error(e)} (every rank's status: {job.run_dir})",
                file=sys.stderr,
            )
            return 1
        if got is None:
            return 0  # not rank 0: rank 0 prints and writes
        results, peaks, notes = got
    else:
        results, peaks, notes = launch(job, world)
    described = [(p.name, t) for p, (_, t) in zip(plans, prepared, strict=True)]
    notes = scaling_notes(sizes, described) + sharded_notes(job, world) + notes
    settings = {**settings_dict(sizes), "nproc": world, "checkpoint": args.checkpoint}
    doc = results_document(results, peaks, notes, settings)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(json.dumps(doc, indent=2, default=str))
        write_csv(results, str(out / "profile.csv"))
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
    if args.csv:
        write_csv(results, args.csv)
    if not args.json and args.csv != "-":
        if peaks:
            print(
                f"device: {peaks['device']} x {world}, torch {peaks['torch']}; measured peak "
                f"{peaks['matmul_tflops']:.3g} TFLOP/s ({peaks['dtype']} matmul) per device"
            )
        for n in notes:
            print(n)
        print(sharded_table(results))
    if args.out:
        emit(f"wrote {Path(args.out) / 'profile.json'} and profile.csv", args)
    return 0


def sharded_notes(job, world: int) -> list[str]:
    """What a sharded run did, in words (the notes of its table and document)."""
    cuda = job.device_type == "cuda"
    notes = [
        f"sharded training: FSDP2 over {world} process{'es' if world > 1 else ''} ("
        + (
            "nccl, one GPU each"
            if cuda
            else "gloo on the CPU, which they share: the times say nothing of GPUs"
        )
        + "), one unit per residual block plus the embedding and the head; compute in the "
        "spec's dtype with fp32 master weights and fp32 reductions (a float32 spec: float32 "
        "throughout)" + ("; activation checkpointing of every block" if job.checkpoint else ""),
        f"predicted: `archlab cost --train-memory --shards {world}"
        + (" --checkpoint" if job.checkpoint else "")
        + "` of the model as run, at the batch per GPU (an estimate)",
    ]
    if world == 1 or not job.baseline:
        notes.append("scaling efficiency: missing, no 1-process case in this run")
    if not cuda:
        notes.append(
            "peak memory is measured on CUDA only; on the CPU the table shows the prediction alone"
        )
    return notes


def sharded_table(results) -> str:
    """One row per case: time per step, tokens/s per GPU and in all, TFLOP/s per GPU and
    the fraction of the measured peak, every rank's peak memory beside the prediction, and
    the scaling efficiency against the same batch per GPU on one process."""
    from archlab.report.results import pct, peak_pct, seconds_text, spread_text
    from archlab.report.tables import human, table

    def gib(n) -> str:
        return "-" if n is None else human(n, "B", 1024)

    rows = []
    for r in results:
        x, ok = r.extra, r.status == "ok"
        ranks = x.get("rank_peak_memory_bytes") or []
        rows.append(
            [
                r.spec,
                x.get("nproc", "?"),
                r.batch,
                r.seq_len,
                f"{seconds_text(r.timing.median_s)} {spread_text(r)}" if ok else r.status.upper(),
                human(x["tokens_per_s_per_gpu"]) if ok else "-",
                human(r.tokens_per_s) if ok else "-",
                f"{r.tflops:.3g}" if ok else "-",
                peak_pct(r, r.flops_frac) if ok else "-",  # never above 100%: 'peak?'
                " / ".join(gib(b) for b in ranks) if ranks and None not in ranks else "-",
                gib(x.get("predicted_memory_bytes")),
                pct(x.get("scaling_efficiency")),
                r.error or ("unstable" if r.unstable else ""),
            ]
        )
    headers = ["spec", "procs", "B/GPU", "T", "step (p10-p90)", "tok/s/GPU", "tok/s total"]
    headers += ["TFLOP/s/GPU", "%peak", "peak mem per rank", "predicted/GPU", "scaling", "notes"]
    return table(headers, rows, right=set(range(1, 12)))
