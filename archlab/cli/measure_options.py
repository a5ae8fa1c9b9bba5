"""Options and helpers shared by `archlab profile` and `archlab compare`: sizes, timing,
throughput and output options; their device-dependent defaults. On CUDA the specs run as
written; on the CPU each spec is replaced by a clearly labelled scaled-down copy (`Scale`:
d_model 256, its head size kept, vocabulary 4096, the first units of the stack's repeating
unit with at least 4 blocks and every patched unit, float32), by one rule for every spec,
at small T and batch, so that
`archlab compare --measure` finishes in a minute or two anywhere. Torch is imported only
when a command runs."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from archlab.cli.common import check_layer, check_modes, did_you_mean, existing, parse_lengths
from archlab.lang.errors import UsageError
from archlab.lang.plan import Plan
from archlab.measure import MODES

CPU_DEFAULTS = {
    "seq": "256",
    "compare_seq": "128,256,512",
    "batch": 1,
    "tokens": None,
    "decode_batch": 4,
    "repeats": 3,
    "warmup": 1,
    "max_time": 5.0,
    "prompt": 64,
    "generate": 16,
    "max_batch": 4096,
    "batch_step": 1,
    "memory_limit": 1 / 32,
    "gen_sample": 0,
}
GPU_DEFAULTS = {
    "seq": None,
    "compare_seq": "1k,4k,16k",
    "batch": None,
    "tokens": 16384,
    "decode_batch": 64,
    "repeats": 10,
    "warmup": 3,
    "max_time": 3.0,
    "prompt": 3072,
    "generate": 1024,
    "max_batch": 8192,
    "batch_step": 16,
    "memory_limit": None,
    "gen_sample": 0,
}


def add_size_options(p: argparse.ArgumentParser, what: str, trace: bool = False) -> None:
    """Options shared by profile and compare (defaults depend on the device); `trace`
    adds `--trace DIR` (profile's)."""
    g = p.add_argument_group("sizes (defaults: small on the CPU, real on CUDA)")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda[:N]")
    g.add_argument(
        "--dtype",
        choices=["bfloat16", "float16", "float32"],
        default=None,
        help="default: the spec's on CUDA, float32 on the CPU",
    )
    g.add_argument("--seq", default=None, help=f"sequence lengths, e.g. 4k,32k ({what})")
    g.add_argument("--batch", type=int, default=None, help="sequences per train/prefill run")
    g.add_argument(
        "--tokens",
        type=int,
        default=None,
        help="tokens per train/prefill run: batch = tokens // T (CUDA: 16384)",
    )
    g.add_argument("--decode-batch", type=int, default=None, help="CPU 4, CUDA 64")
    g.add_argument("--full-size", action="store_true", help="on the CPU too: no scaling")
    g.add_argument("--scale", action="store_true", help="on CUDA too: the scaled-down copy")
    g.add_argument("--d-model", type=int, default=256, help="d_model of the scaled copy")
    g.add_argument("--vocab", type=int, default=4096, help="vocabulary of the scaled copy")
    g.add_argument(
        "--blocks",
        type=int,
        default=4,
        help="the scaled copy keeps the fewest whole units of the stack's repeating unit with "
        "at least this many blocks, and every patched unit (0: every block)",
    )
    t = p.add_argument_group("timing")
    t.add_argument("--repeats", type=int, default=None, help="timed runs (CPU 3, CUDA 10)")
    t.add_argument("--warmup", type=int, default=None, help="runs before timing (CPU 1, CUDA 3)")
    t.add_argument(
        "--max-time",
        type=float,
        default=None,
        help="time budget of a case's timed runs, in seconds: no run starts after it once 3 "
        "are in (1 if one run outlasts it); within it, runs go on until their spread is "
        "under 20%% (CPU 5, CUDA 3)",
    )
    t.add_argument("--no-graphs", action="store_true", help="decode eagerly on CUDA")
    t.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="run train, prefill and decode under torch.compile (static shapes, one compile "
        "per case, timed apart as compile_s; a failed compile is timed eagerly, with a note); "
        "default: on for CUDA, off on the CPU",
    )
    t.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (torch.set_num_threads); 1 is steadiest on a busy machine",
    )
    t.add_argument("--optimizer", action="store_true", help="train: include an AdamW step")
    t.add_argument("--refresh-peaks", action="store_true", help="measure the device again")
    h = p.add_argument_group("throughput (Table 1 of the RAT paper)")
    h.add_argument("--prompt", type=int, default=None, help="context tokens (CPU 64, CUDA 3072)")
    h.add_argument("--generate", type=int, default=None, help="tokens (CPU 16, CUDA 1024)")
    h.add_argument("--gen-batch", type=int, default=None, help="skip the search: this batch")
    h.add_argument("--max-batch", type=int, default=None, help="search limit (CPU 4096, CUDA 8192)")
    h.add_argument("--batch-step", type=int, default=None, help="search granularity (CUDA 16)")
    h.add_argument(
        "--memory-limit",
        type=float,
        default=None,
        help="GiB for cache + weights in the search (default: CPU 1/32 GiB for the cache "
        "alone; CUDA no limit)",
    )
    h.add_argument(
        "--gen-sample",
        type=int,
        default=None,
        help="time N decode positions and estimate the G steps (0: run all G)",
    )
    o = p.add_argument_group("output")
    o.add_argument("--json", action="store_true", help="JSON on stdout")
    o.add_argument("--csv", metavar="FILE", default=None, help="CSV to FILE ('-': stdout)")
    o.add_argument("--out", metavar="DIR", default=None, help="write results (and plots) here")
    if trace:
        o.add_argument(
            "--trace",
            metavar="DIR",
            default=None,
            help="after each case's timing (never inside it), run the timed call 3 more times "
            "under torch.profiler and write its kernel table (by CUDA time on CUDA, CPU time "
            "on the CPU) to DIR/<case>.txt; each result's extra.trace holds the path",
        )


def parse_modes(text: str) -> list[str]:
    """'train,decode' or 'all' -> the modes; UsageError for an unknown one."""
    check_modes(text, MODES)  # unknown values, with a did-you-mean
    modes = list(MODES) if text == "all" else [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise UsageError(
            f"unknown mode {bad[0] if bad else text!r} (choose from {', '.join(MODES)} or all)"
        )
    return modes


def parse_layer(text: str) -> tuple[str, dict]:
    """'rat:chunk_size=64,qk_groups=1' -> ('rat', {'chunk_size': 64, 'qk_groups': 1})."""
    check_layer(text)  # an unknown kind or param, with a did-you-mean
    kind, _, rest = text.partition(":")
    overrides: dict = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"--layer {text}: expected key=value, got {item!r}")
        low = value.lower()
        overrides[key] = (
            True
            if low == "true"
            else False
            if low == "false"
            else int(value)
            if value.lstrip("-").isdigit()
            else float(value)
            if _is_float(value)
            else value
        )
    return kind, overrides


def _is_float(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def compile_default(flag: bool | None, device_type: str) -> bool:
    """Whether to torch.compile the timed cases: `--compile` / `--no-compile` when given,
    else on for CUDA and off elsewhere (compiling on the CPU takes longer than the runs)."""
    return device_type == "cuda" if flag is None else flag


def resolve_sizes(args, compare: bool = False):
    """The sweep's `Sizes`: device-dependent defaults filled in from `args`; UsageError for
    bad values. Imports torch."""
    import torch

    from archlab.measure.cases import Sizes
    from archlab.measure.profile import Settings
    from archlab.measure.scale import Scale

    err = UsageError
    name = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    name = "cpu" if name == "auto" else name
    try:
        device = torch.device(name)
    except RuntimeError:
        hint = did_you_mean(args.device, ("cpu", "cuda"))
        raise err(f"--device {args.device}: not a device (use cpu, cuda or cuda:N){hint}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise err(f"--device {args.device}: no CUDA device is available here")
    if device.type not in ("cpu", "cuda"):
        raise err(f"--device {args.device}: only cpu and cuda are supported")
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # CUDA events and graphs use the current device's stream
    d = GPU_DEFAULTS if device.type == "cuda" else CPU_DEFAULTS
    if args.threads is not None:
        if args.threads < 1:
            raise err(f"--threads must be >= 1 (got {args.threads})")
        torch.set_num_threads(args.threads)

    def pick(key: str):
        value = getattr(args, key, None)
        return d[key] if value is None else value

    for key in (
        "batch",
        "tokens",
        "decode_batch",
        "repeats",
        "prompt",
        "generate",
        "gen_batch",
        "max_batch",
        "batch_step",
    ):
        value = getattr(args, key, None)
        if value is not None and value < 1:
            raise err(f"--{key.replace('_', '-')} must be >= 1 (got {value})")
    for key in ("warmup", "gen_sample", "blocks"):
        if (getattr(args, key, None) or 0) < 0:
            raise err(f"--{key.replace('_', '-')} must be >= 0")
    if args.d_model < 1 or args.vocab < 1:
        raise err("--d-model and --vocab must be >= 1")
    scaled = (device.type == "cpu" and not args.full_size) or args.scale
    seq_text = args.seq or d["compare_seq" if compare else "seq"]
    seqs = parse_lengths(seq_text) if seq_text else []
    limit = pick("memory_limit")
    settings = Settings(
        pick("warmup"),
        pick("repeats"),
        pick("max_time"),
        cuda_graphs=not args.no_graphs,
        optimizer=args.optimizer,
        compile=compile_default(getattr(args, "compile", None), device.type),
        trace_dir=getattr(args, "trace", None),
    )
    return Sizes(
        device,
        args.dtype or ("float32" if device.type == "cpu" else None),  # --full-size too
        Scale(args.d_model, args.vocab, args.blocks) if scaled else None,
        seqs,
        args.batch,
        None if args.batch else pick("tokens"),
        pick("decode_batch"),
        settings,
        pick("prompt"),
        pick("generate"),
        args.gen_batch,
        pick("max_batch"),
        pick("batch_step"),
        None if limit is None else int(limit * 2**30),
        args.memory_limit is not None,
        pick("gen_sample"),
        args.refresh_peaks,
    )


# ---- the commands ----------------------------------------------------------------------


def settings_dict(sizes) -> dict:
    """The sweep's settings as JSON-ready values."""
    d = dataclasses.asdict(sizes)
    d["device"] = str(sizes.device)
    return d


def unique_plans(specs: list[str]) -> list[Plan]:
    """The compiled specs, with unique names: results, tables and plots are keyed by name,
    so a name that two specs share gets the file (and, if need be, the position) added."""
    from archlab import compile

    plans = [compile(existing(s)) for s in specs]
    names = [p.name for p in plans]
    qualified = [f"{p.name} ({Path(s).name})" for p, s in zip(plans, specs, strict=True)]
    out = []
    for i, plan in enumerate(plans):
        name = plan.name
        if names.count(name) > 1:
            name = qualified[i] + (f" #{i + 1}" if qualified.count(qualified[i]) > 1 else "")
        out.append(dataclasses.replace(plan, name=name))
    return out


def default_seqs(sizes, plans: list[Plan]) -> None:
    """Each spec's max_seq_len when no --seq was given."""
    if not sizes.seqs:
        sizes.seqs = sorted({p.model.max_seq_len for p in plans})


def partial_note(results: list) -> str:
    """The note of a results document written while its sweep is still running."""
    return f"partial: {len(results)} cases so far (the run has not ended)"


def profile_argv(args, sizes, modes: list[str]) -> list[str]:
    """The options that make `archlab profile SPEC` measure what this command's sweep would
    (its resolved sizes, timing and scaling), for the processes of `compare --parallel`;
    each sees one GPU, hence `--device cuda` there."""
    s, t = sizes, sizes.settings
    argv = ["--mode", ",".join(modes), "--seq", ",".join(map(str, s.seqs))]
    argv += ["--device", "cuda" if s.device.type == "cuda" else "cpu"]
    argv += (
        ["--batch", str(s.batch)] if s.batch else ["--tokens", str(s.tokens)] if s.tokens else []
    )
    values = {
        "--decode-batch": s.decode_batch,
        "--repeats": t.repeats,
        "--warmup": t.warmup,
        "--max-time": t.max_time_s,
        "--prompt": s.prompt,
        "--generate": s.generate,
        "--gen-batch": s.gen_batch,
        "--max-batch": s.max_batch,
        "--batch-step": s.batch_step,
        "--gen-sample": s.gen_sample,
        "--dtype": s.dtype,
        "--memory-limit": args.memory_limit,
        "--threads": args.threads or (1 if s.device.type == "cpu" else None),
    }
    argv += [x for k, v in values.items() if v is not None for x in (k, str(v))]
    if s.scale is not None:
        argv += ["--d-model", str(s.scale.d_model), "--vocab", str(s.scale.vocab_size)]
        argv += ["--blocks", str(s.scale.min_blocks)]
        argv += ["--scale"] if s.device.type == "cuda" else []
    elif s.device.type == "cpu":
        argv.append("--full-size")
    flags = {"--no-graphs": not t.cuda_graphs, "--optimizer": t.optimizer}
    flags |= {"--compile": t.compile, "--no-compile": not t.compile}
    argv += [k for k, on in flags.items() if on] + (["--refresh-peaks"] if s.refresh_peaks else [])
    for d in getattr(args, "extends_root", None) or []:
        argv += ["--extends-root", d]
    return argv


def emit(text: str, args) -> None:
    """A status line: on stderr when stdout carries JSON or CSV."""
    print(text, file=sys.stderr if args.json or args.csv == "-" else sys.stdout)
