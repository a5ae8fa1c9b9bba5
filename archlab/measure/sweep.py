"""The measuring sweep behind `archlab profile` and `archlab compare`: every (spec or
layer) x mode x sequence length case, with progress, out-of-memory and build failures as
results, and the plan each case runs (scaled down on the CPU, or in the run dtype)."""

from __future__ import annotations

import dataclasses
import sys
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
    free_memory,
    is_oom,
    measure,
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
    """A one-line progress bar on a terminal's stderr; one line per case elsewhere."""

    def __init__(self, total: int, quiet: bool = False):
        self.total, self.done, self.quiet = total, 0, quiet
        self.tty = sys.stderr.isatty()

    def start(self, label: str) -> None:
        if self.quiet:
            return
        n = self.done
        if self.tty:
            bar = "#" * (20 * n // max(1, self.total))
            sys.stderr.write(f"\r[{bar:<20}] {n}/{self.total} {label[:60]:<60}")
        else:
            sys.stderr.write(f"[{n + 1}/{self.total}] {label}\n")
        sys.stderr.flush()

    def advance(self) -> None:
        self.done += 1
        if self.tty and not self.quiet and self.done == self.total:
            sys.stderr.write("\r" + " " * 100 + "\r")


def _unbuilt_results(plan: Plan, label: str, modes: list[str], sizes: Sizes, e: Exception):
    """One failed Result per case of a target that could not be built (OOM or error)."""
    status = "oom" if is_oom(e) else "error"
    error = f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0][:200]}"
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


def sweep(
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
                results.append(
                    measure_throughput(
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
                )
                progress.advance()
                if on_result:
                    on_result(results, peaks)
                continue
            for T in sizes.seqs:
                B = sizes.decode_batch if mode == "decode" else sizes.batch_for(T)
                progress.start(f"{target.plan.name} {target.label} {mode} B={B} T={T}")
                results.append(measure(target, mode, B, T, sizes.settings, job_peaks))
                progress.advance()
                if on_result:
                    on_result(results, peaks)
        del target
    if sizes.scale is not None:
        desc = prepared[0][1]
        notes.append(
            f"{sizes.device.type.upper()}: measured on a scaled-down model ({desc}; "
            "per spec in 'scaled'); use --full-size for the specs as written"
        )
    timed = [r.timing for r in results if r.timing is not None and r.timing.runs >= 3]
    if sizes.device.type == "cpu" and sum(t.spread > 0.5 for t in timed) > len(timed) / 4:
        notes.append("timings are noisy (is the machine busy?); --threads 1 steadies them")
    return results, peaks, notes
