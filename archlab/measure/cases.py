"""The measured cases behind `archlab profile`, `archlab compare` and `archlab sweep
--measure` (`run_cases`): every (spec or layer) x mode x sequence length case, with
progress, out-of-memory and build failures as results, and the plan each case runs (scaled
down on the CPU, or in the run dtype)."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from dataclasses import dataclass

import torch

from archlab.blocks.registry import kind as block_kind
from archlab.lang.errors import UsageError
from archlab.lang.plan import Plan
from archlab.measure.profile import (
    LayerTarget,
    ModelTarget,
    Result,
    Settings,
    Timing,
    free_memory,
    is_oom,
    measure,
    reporting,
    short_error,
)
from archlab.measure.scale import Scale, scale_plan, with_dtype
from archlab.measure.throughput import device_peaks, measure_throughput


@dataclass
class Sizes:
    """Everything a sweep needs to know besides the specs and modes."""

    device: torch.device
    dtype: str | None
    scale: Scale | None
    seqs: list[int]
    batch: int | None
    tokens: int | None
    decode_batch: int
    settings: Settings
    prompt: int
    generate: int
    gen_batch: int | None
    max_batch: int
    batch_step: int
    memory_limit: int | None
    limit_counts_weights: bool  # a --memory-limit given counts weights; the CPU default not
    gen_sample: int
    refresh_peaks: bool

    def batch_for(self, seq_len: int) -> int:
        return self.batch or (max(1, self.tokens // seq_len) if self.tokens else 1)


def prepare(plan: Plan, sizes: Sizes) -> tuple[Plan, str | None]:
    """The plan as it will run: scaled down (with its description) or in the run dtype."""
    if sizes.scale is not None:
        try:
            return scale_plan(plan, sizes.scale, sizes.dtype or plan.model.dtype)
        except ValueError as e:
            raise UsageError(f"{e} (use --full-size or another --d-model)") from None
    return with_dtype(plan, sizes.dtype or plan.model.dtype), None


def result_from_dict(d: dict) -> Result:
    """A Result from its JSON form (`Result.to_dict`), e.g. another process's results: a
    rank of a sharded run, or one spec of `compare --parallel`."""
    d = dict(d)
    timing = d.pop("timing", None)
    return Result(**d, timing=Timing(**timing) if timing else None)


def layer_block(plan: Plan, kind: str, overrides: dict):
    """The first block of `kind` in `plan` with `overrides` applied (None if it has none)."""
    block = next((b for b in plan.order() if b.kind == kind), None)
    if block is None:
        return None
    try:
        params = type(block.params).model_validate({**block.params.model_dump(), **overrides})
    except ValueError as e:
        errors = getattr(e, "errors", lambda: [])()
        why = "; ".join(f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in errors) or str(e)
        raise UsageError(f"--layer {kind}: {why}") from None
    problems = block_kind(kind).check(params, plan.model.d_model)
    if problems:
        raise UsageError(f"--layer {kind}: {problems[0][0]}: {problems[0][1]}")
    return dataclasses.replace(block, params=params)


class Progress:
    """A one-line progress bar on a terminal's stderr; one line per case elsewhere. Inside
    a case (`run`, fed by `profile.reporting`): the runs done and the time per run, on the
    bar at once, elsewhere a line whenever `every_s` seconds have passed without one."""

    def __init__(self, total: int, quiet: bool = False, every_s: float = 5.0):
        self.total, self.done, self.quiet, self.every_s = total, 0, quiet, every_s
        self.tty = sys.stderr.isatty()
        self.label, self.last_line = "", time.perf_counter()

    def _bar(self, text: str) -> None:
        bar = "#" * (20 * self.done // max(1, self.total))
        sys.stderr.write(f"\r[{bar:<20}] {self.done}/{self.total} {text[:76]:<76}")
        sys.stderr.flush()

    def start(self, label: str) -> None:
        self.label, self.last_line = label, time.perf_counter()
        if self.quiet:
            return
        if self.tty:
            self._bar(label)
        else:
            sys.stderr.write(f"[{self.done + 1}/{self.total}] {label}\n")
            sys.stderr.flush()

    def run(self, stage: str, n: int, run_s: float, case_s: float) -> None:
        """One run of the current case is done (see `profile.reporting`)."""
        if self.quiet:
            return
        text = f"{stage} {n}: {seconds_text(run_s)}/run, {seconds_text(case_s)} in the case"
        if self.tty:
            self._bar(f"{self.label} | {text}")
        elif time.perf_counter() - self.last_line >= self.every_s:
            sys.stderr.write(f"    {text}\n")
            sys.stderr.flush()
            self.last_line = time.perf_counter()

    def advance(self) -> None:
        self.done += 1
        if self.tty and not self.quiet and self.done == self.total:
            sys.stderr.write("\r" + " " * 120 + "\r")


def seconds_text(t: float) -> str:
    """0.0123 -> '12.3 ms'."""
    return f"{t:.3g} s" if t >= 1 else f"{t * 1e3:.3g} ms" if t >= 1e-3 else f"{t * 1e6:.3g} us"


def _unbuilt_results(plan: Plan, label: str, modes: list[str], sizes: Sizes, e: Exception):
    """One failed Result per case of a target that could not be built (OOM or error)."""
    status = "oom" if is_oom(e) else "error"
    error = short_error(e)
    cases = [
        (m, sizes.prompt if m == "throughput" else T)
        for m in modes
        for T in ([0] if m == "throughput" else sizes.seqs)
    ]
    return [
        Result(
            plan.name,
            plan.file,
            label,
            mode,
            0,
            T,
            sizes.dtype or plan.model.dtype,
            str(sizes.device),
            status=status,
            error=error,
            timing=None,
        )
        for mode, T in cases
    ]


def run_cases(
    plans: list[Plan],
    modes: list[str],
    sizes: Sizes,
    layers: list[tuple[str, dict]],
    quiet: bool = False,
    on_result=None,
) -> tuple[list[Result], dict | None, list[str]]:
    """Measure every (spec or layer) x mode x T case; returns results, peaks and notes.
    `on_result(results, peaks)`, when given, is called after every case."""
    notes: list[str] = []
    busy = busy_cpu_note(sizes.device)  # the load before this sweep adds to it
    dtype = sizes.dtype
    prepared = [prepare(p, sizes) for p in plans]
    jobs = []  # (make target, [(mode, batch, T)])
    for plan, scaled in prepared:
        if layers:
            for kind, overrides in layers:
                block = layer_block(plan, kind, overrides)
                if block is not None:
                    jobs.append(
                        (
                            lambda p=plan, b=block, s=scaled: LayerTarget(p, b, sizes.device, s),
                            [m for m in modes],
                            plan,
                            f"layer {kind}",
                        )
                    )
        else:
            jobs.append(
                (lambda p=plan, s=scaled: ModelTarget(p, sizes.device, s), modes, plan, "model")
            )
    if layers and not jobs:
        raise UsageError("no spec has a block of the --layer kind(s) given")
    cases = sum(
        len(sizes.seqs) * len([m for m in ms if m != "throughput"]) + ("throughput" in ms)
        for _, ms, *_ in jobs
    )
    run_dtype = dtype or plans[0].model.dtype
    peaks = device_peaks(sizes.device, getattr(torch, run_dtype), sizes.refresh_peaks)
    by_dtype = {run_dtype: peaks}  # each case's rates are against the peak of its own dtype
    progress, results = Progress(cases, quiet), []
    for make, job_modes, plan, label in jobs:
        job_dtype = dtype or plan.model.dtype
        if job_dtype not in by_dtype:
            by_dtype[job_dtype] = device_peaks(sizes.device, getattr(torch, job_dtype))
        job_peaks = by_dtype[job_dtype]
        try:
            target = make()
        except Exception as e:  # noqa: BLE001 - a target that cannot be built is a result
            failed = _unbuilt_results(plan, label, job_modes, sizes, e)
            results.extend(failed)
            for _ in failed:
                progress.advance()
            free_memory(sizes.device)
            continue
        for mode in job_modes:
            if mode == "throughput":
                progress.start(f"{target.plan.name} {target.label} throughput (batch search)")
                with reporting(progress.run):
                    r = measure_throughput(
                        target,
                        sizes.prompt,
                        sizes.generate,
                        sizes.settings,
                        job_peaks,
                        max_batch=sizes.max_batch,
                        step=sizes.batch_step,
                        memory_limit=sizes.memory_limit,
                        limit_counts_weights=sizes.limit_counts_weights,
                        batch=sizes.gen_batch,
                        sample=sizes.gen_sample,
                    )
                results.append(r)
                progress.advance()
                if on_result:
                    on_result(results, peaks)
                continue
            for T in sizes.seqs:
                B = sizes.decode_batch if mode == "decode" else sizes.batch_for(T)
                progress.start(f"{target.plan.name} {target.label} {mode} B={B} T={T}")
                with reporting(progress.run):
                    results.append(measure(target, mode, B, T, sizes.settings, job_peaks))
                progress.advance()
                if on_result:
                    on_result(results, peaks)
        del target
    notes += scaling_notes(
        sizes, [(p.name, text) for p, (_, text) in zip(plans, prepared, strict=True)]
    )
    notes += check_peaks(results, by_dtype, sizes) + busy + compile_notes(results, sizes.settings)
    peaks = by_dtype[run_dtype]
    unstable = sum(r.unstable for r in results)
    if unstable:
        hint = (
            "; on a busy machine --threads 1 steadies them"
            if sizes.device.type == "cpu" and torch.get_num_threads() > 1
            else "; is the machine busy?"
        )
        notes.append(
            f"{unstable} of {len(results)} cases marked unstable: their runs spread more than "
            f"{100 * sizes.settings.stable_spread:.0f}% of the median (p10-p90) until the "
            f"time budget (--max-time) ran out; do not trust their times{hint}"
        )
    return results, peaks, notes


def compile_notes(results: list[Result], settings: Settings) -> list[str]:
    """What `--compile` did in a sweep: how many cases ran compiled, the compile time in
    all (never inside a timing), the cases that failed to compile and ran eagerly."""
    if not settings.compile:
        return []
    cases = [r for r in results if r.mode != "throughput"]
    compiled = [r for r in cases if r.compiled]
    failed = [r for r in cases if any(n.startswith("compile failed") for n in r.notes)]
    spent = sum(r.compile_s or 0.0 for r in compiled)
    text = (
        f"torch.compile: {len(compiled)} of {len(cases)} train/prefill/decode cases ran "
        "compiled (static shapes, one compile per case"
        + (f"; {seconds_text(spent)} of compiling in all" if compiled else "")
        + ", apart from every timing: compile_s)"
    )
    if failed:
        text += f"; {len(failed)} failed to compile and ran eagerly (their notes say why)"
    if len(cases) < len(results):
        text += "; throughput generation runs eagerly"
    return [text]


def busy_cpu_note(device: torch.device) -> list[str]:
    """A warning when other processes keep the CPU's cores busy and torch runs several
    threads: its threads then wait on each other, and times come out 10-100x slow yet
    steady, which no spread can flag (seen: decode 196 ms on 2 threads, 1.8 ms on 1)."""
    threads, cores = torch.get_num_threads(), os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return []
    if device.type != "cpu" or threads < 2 or cores - load >= threads - 0.5:
        return []
    return [
        f"the CPU is busy (load {load:.1f} on {cores} cores) and torch runs {threads} threads: "
        "times may be many times too slow and yet steady; --threads 1 measures reliably"
    ]


def scaling_notes(sizes: Sizes, described: list[tuple[str, str | None]]) -> list[str]:
    """The notes saying how every spec was scaled (one rule for all): a headline, then one
    line per spec, 'scaled NAME: d_model 256, ...'."""
    if sizes.scale is None:
        return []
    s = sizes.scale
    rule = f"d_model {s.d_model}, vocab {s.vocab_size}, " + (
        f"depth: whole repeating units, at least {s.min_blocks} blocks, every patched unit"
        if s.min_blocks
        else "every block"
    )
    head = (
        f"{sizes.device.type.upper()}: measured on scaled-down copies, one rule for every spec "
        f"({rule}); use --full-size for the specs as written"
    )
    return [head] + [f"scaled {name}: {text}" for name, text in described]


def _fractions(r: Result, peaks: dict) -> None:
    """The result's fractions of the device's peaks (from its achieved rates)."""
    if r.status != "ok":
        return
    if r.tflops is not None and peaks.get("matmul_tflops"):
        r.flops_frac = r.tflops / peaks["matmul_tflops"]
    if r.gbps is not None and peaks.get("copy_gbps"):
        r.bw_frac = r.gbps / peaks["copy_gbps"]


def _above(r: Result) -> bool:
    return any(f is not None and f > 1 for f in (r.flops_frac, r.bw_frac))


def check_peaks(results: list[Result], by_dtype: dict[str, dict], sizes: Sizes) -> list[str]:
    """A result faster than the device's measured peak means the peak is wrong: measure it
    again (once per dtype) and recompute the fractions; a fraction still above 1 is left
    out (None) and the result says 'peak?' in its notes. Returns the sweep's notes."""
    notes = []
    for dtype, peaks in list(by_dtype.items()):
        mine = [r for r in results if r.dtype == dtype and r.status == "ok"]
        if not any(_above(r) for r in mine):
            continue
        peaks = by_dtype[dtype] = device_peaks(sizes.device, getattr(torch, dtype), refresh=True)
        still = 0
        for r in mine:
            _fractions(r, peaks)
            for field, rate, peak, unit in (
                ("flops_frac", r.tflops, peaks.get("matmul_tflops"), "TFLOP/s"),
                ("bw_frac", r.gbps, peaks.get("copy_gbps"), "GB/s"),
            ):
                if (getattr(r, field) or 0) > 1:
                    setattr(r, field, None)
                    r.notes.append(
                        f"peak?: {rate:.3g} {unit} achieved, above the measured {dtype} peak "
                        f"of {peak:.3g} {unit} (measured twice)"
                    )
                    still += 1
        notes.append(
            f"the {dtype} peaks were measured again: a case ran faster than them"
            + (f"; {still} fraction(s) still above the peak show 'peak?'" if still else "")
        )
    return notes
