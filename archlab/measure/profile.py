"""Measured speed and memory of a spec: train, prefill and decode (throughput: throughput.py).

A *target* is what is timed (archlab.measure.targets): a whole model (`ModelTarget`) or
one mixer block of a spec with its projections (`LayerTarget`, the RAT paper's efficiency
setup). With `Settings.compile`, train, prefill and decode run under torch.compile
(archlab.measure.compiled), compiled before any timed run and the compile's wall time
reported apart (`compile_s`); a failed compile is timed eagerly, with a note. `measure` runs one
case (target x mode x batch x T) and returns a `Result`; an out-of-memory error becomes a
result with status "oom" (memory freed), any other failure a result with status "error".

Timing (`time_fn`): warm-up runs, then `repeats` runs, more while their spread is above
`Settings.stable_spread` (a case that never settles is flagged `unstable`), within the
case's time budget `max_time_s`, each synchronised; on CUDA each run is timed with CUDA
events, on the CPU with `perf_counter`. Decode on CUDA replays a CUDA graph of the step
when the step can be captured, and says so (`cuda_graph`). Achieved TFLOP/s use the cost
model's matmul FLOPs, achieved GB/s its decode bytes (weights + cache read); fractions are
of the peaks that `archlab.measure.throughput.device_peaks` measured once on this device.
With `Settings.trace_dir`, the timed callable is profiled after the timing into a kernel
table (archlab.measure.trace). See docs/profile.md.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

from archlab.cost.analytic import param_count
from archlab.lang.plan import Plan
from archlab.measure.compiled import break_note, compile_fn, failure_reason, first_calls, fresh
from archlab.measure.result import (  # noqa: F401 (re-exported)
    SCHEMA,
    Result,
    Settings,
    Timing,
    judge_timing,
    short_error,
)
from archlab.measure.targets import (  # noqa: F401 (re-exported)
    LayerTarget,
    ModelTarget,
    Target,
    _adamw,
    set_length,
)
from archlab.measure.trace import trace_case

OOM_TYPES: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)
OOM_TEXT = ("out of memory", "can't allocate memory", "not enough memory")


def is_oom(exc: BaseException) -> bool:
    """True for CUDA out-of-memory errors and the CPU allocator's failures."""
    if isinstance(exc, OOM_TYPES):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in OOM_TEXT)


def free_memory(device: torch.device) -> None:
    """Collect garbage and return cached CUDA blocks (after an OOM or between cases)."""
    gc.collect()
    if device.type == "cuda":
        try:
            torch.cuda.synchronize(device)
            torch.cuda.empty_cache()
        except RuntimeError:  # a broken context: the next case reports the error
            pass


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_clock = time.perf_counter  # the wall clock of time_fn (tests replace it)
_reporter: Callable[[str, int, float, float], None] | None = None


@contextmanager
def reporting(callback: Callable[[str, int, float, float], None] | None):
    """Within the block, `time_fn` calls `callback(stage, n, run_s, case_s)` after each
    run: stage "warm-up" or "run", the runs of that stage so far, the seconds of this run
    and of the case so far (the sweep's progress inside a case)."""
    global _reporter
    previous, _reporter = _reporter, callback
    try:
        yield
    finally:
        _reporter = previous


def time_fn(fn: Callable[[], object], device: torch.device, settings: Settings) -> Timing:
    """Warm up, then time `fn` run by run (CUDA events on CUDA, perf_counter elsewhere).

    Warm-up stops early once it has taken `max_time_s`. Then `repeats` runs; while their
    spread (p90 - p10) / median is above `stable_spread` (3 runs or more), more runs, up to
    `max_runs`. No run starts once `max_time_s` of timed runs have passed and at least
    min(3, repeats) runs are in, or 1 when that one run alone took longer than the budget."""
    budget, report = settings.max_time_s, _reporter
    case = _clock()
    for i in range(settings.warmup):
        t0 = _clock()
        fn()
        synchronize(device)
        now = _clock()
        if report:
            report("warm-up", i + 1, now - t0, now - case)
        if now - case > budget:
            break
    samples: list[float] = []
    began = _clock()
    repeats = max(1, settings.repeats)
    while True:
        t0 = _clock()
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            fn()
            samples.append(_clock() - t0)
        now, n = _clock(), len(samples)
        if report:
            report("run", n, samples[-1], now - case)
        least = min(3, repeats) if samples[0] <= budget else 1
        if n >= least and now - began >= budget:
            break
        if n >= repeats and (
            n < 3 or n >= settings.max_runs or Timing.of(samples).spread <= settings.stable_spread
        ):
            break
    return Timing.of(samples)


def graph_of(fn: Callable[[], object], device: torch.device) -> tuple[Callable[[], object], str]:
    """A CUDA-graph replay of `fn` (fn must touch only tensors that outlive the graph), or
    `fn` itself and the reason it could not be captured. The step is first run under
    `torch.cuda.set_sync_debug_mode("error")`: a step that synchronises with the host
    (e.g. builds a tensor from a Python value) cannot be captured and is not tried."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    except RuntimeError as e:
        if is_oom(e):
            raise
        return fn, f"the step synchronises with the host ({str(e).splitlines()[0][:120]})"
    finally:
        torch.cuda.set_sync_debug_mode(previous)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream(device).wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            fn()
    except RuntimeError as e:
        if is_oom(e):
            raise
        free_memory(device)
        return fn, f"capture failed ({str(e).splitlines()[0][:120]})"
    return graph.replay, ""


# ---- targets: archlab.measure.targets ------------------------------------------------


def _cuda_peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


# ---- one case --------------------------------------------------------------------------


def _figures(r: Result, flops: int, nbytes: int | None, tokens: int, peaks: dict | None) -> None:
    t = r.timing.median_s
    r.tokens_per_s = tokens / t
    r.flops, r.tflops = flops, flops / t / 1e12
    if nbytes is not None:
        r.bytes, r.gbps = nbytes, nbytes / t / 1e9
    if peaks:
        r.flops_frac = r.tflops / peaks["matmul_tflops"] if peaks.get("matmul_tflops") else None
        if r.gbps is not None and peaks.get("copy_gbps"):
            r.bw_frac = r.gbps / peaks["copy_gbps"]


def _prepared(
    target: Target, r: Result, settings: Settings, make: Callable[[Callable | None], Callable]
) -> Callable[[], object]:
    """The function to time, `make(wrap)`. With `settings.compile`, `wrap` is
    `compiled.compile_fn` and the calls that compile are made here, before any warm-up,
    their wall time the result's `compile_s`; a compile that fails (anything but an OOM)
    leaves a note and the case is timed eagerly: `make(None)`."""
    if not settings.compile:
        return make(None)
    device = target.device
    fresh()  # this case's graphs only: no reuse, no recompile limit reached across cases
    try:
        fn = make(compile_fn)
        calls = first_calls(fn, device)
        if not calls.graphs:
            raise RuntimeError("Dynamo compiled no graph (are its errors suppressed?)")
    except Exception as e:
        if is_oom(e):
            raise
        target.module.zero_grad(set_to_none=True)
        fn = None
        fresh()
        free_memory(device)
        r.notes.append(f"compile failed: {failure_reason(e)}; timed eagerly")
        return make(None)
    r.compiled, r.compile_s = True, calls.seconds
    r.extra.update(graphs=calls.graphs, graph_breaks=calls.breaks)
    r.notes += [n for n in [break_note(calls)] if n]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # the compiler's own memory is not the case's
    return fn


def _run_mode(target: Target, r: Result, settings: Settings, peaks: dict | None) -> Callable:
    """Time the case into `r`; returns the callable timed (for `trace.trace_case`)."""
    B, T, device = r.batch, r.seq_len, target.device
    r.notes += target.backend_notes()
    if r.mode == "train":
        target.module.train()
        fn = _prepared(
            target, r, settings, lambda wrap: target.train_fn(B, T, settings.optimizer, wrap=wrap)
        )
        r.timing = time_fn(fn, device, settings)
        _figures(r, target.analytic(B, T)["train_flops"], None, B * T, peaks)
        if settings.optimizer:
            r.notes.append("includes an AdamW step")
        return fn
    target.module.eval()
    with torch.no_grad():
        if r.mode == "prefill":
            x, cache = target.inputs(B, T), target.allocate_cache(B, T)

            def make(wrap: Callable | None) -> Callable[[], None]:
                prefill = wrap(target.prefill) if wrap else target.prefill

                def fn() -> None:
                    set_length(target, cache, 0)
                    prefill(x, cache)

                return fn

            fn = _prepared(target, r, settings, make)
            r.timing = time_fn(fn, device, settings)
            _figures(r, target.analytic(B, T)["fwd_flops"], None, B * T, peaks)
        else:  # decode: one token at position T, the cache holding T tokens
            x, cache = target.inputs(B, 1), target.allocate_cache(B, T + 1)

            def make(wrap: Callable | None) -> Callable[[], None]:
                step = wrap(target.step) if wrap else target.step

                def fn() -> None:
                    set_length(target, cache, T)
                    step(x, cache)

                return fn

            fn = _prepared(target, r, settings, make)
            if device.type == "cuda" and settings.cuda_graphs:
                fn2, why = graph_of(fn, device)
                r.cuda_graph = not why
                if why:
                    how = "compiled, without a graph" if r.compiled else "eagerly"
                    r.notes.append(f"no CUDA graph: {why}; timed {how}")
                fn = fn2
            r.timing = time_fn(fn, device, settings)
            a = target.analytic(B, T)
            _figures(r, a["decode_flops"], a["decode_bytes"], B, peaks)
        r.cache_bytes_measured = cache.nbytes()
        r.cache_bytes_analytic = target.analytic(B, T + (r.mode == "decode"))["cache_bytes"]
    return fn


def measure(
    target: Target,
    mode: str,
    batch: int,
    seq_len: int,
    settings: Settings,
    peaks: dict | None = None,
) -> Result:
    """Time one case (mode train, prefill or decode; throughput: archlab.measure.throughput).
    Never raises for an OOM or a failing block: the Result says what happened."""
    device = target.device
    r = Result(
        target.plan.name,
        target.plan.file,
        target.label,
        mode,
        batch,
        seq_len,
        target.plan.model.dtype,
        str(device),
        scaled=target.scaled,
        backends=target.backends(),
    )
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    fn = None
    try:
        fn = _run_mode(target, r, settings, peaks)
    except Exception as e:  # noqa: BLE001 - every failure is a result, the sweep goes on
        r.status, r.error = ("oom" if is_oom(e) else "error"), short_error(e)
        r.timing = None
    judge_timing(r, settings)
    if r.status != "ok":
        target.module.zero_grad(set_to_none=True)  # a backward cut short leaves gradients
    r.peak_memory_bytes = _cuda_peak(device) if r.status == "ok" else None
    if settings.trace_dir and r.status == "ok" and fn is not None:  # after timing, peak
        trace_case(fn, r, device, settings.trace_dir, grad=mode == "train")
        target.module.zero_grad(set_to_none=True)  # a trace cut short leaves gradients
    del fn  # its inputs and cache
    if settings.compile:
        fresh()  # the case's graphs hold its inputs and cache: let them go
    free_memory(device)
    return r


def weights_bytes(plan: Plan) -> int:
    """Bytes of the model's weights in its dtype."""
    return param_count(plan) * plan.model.dtype_bytes
