"""How peers.py times one side of a row (archlab's layer or its peer) in one mode:
the first call apart (a peer that fails there takes its next variant), then the median
of timed repetitions (CUDA events, perf_counter on the CPU), an optional profiler trace,
OOM and failures as statuses; `compare` checks two outputs against each other."""

from __future__ import annotations

import gc
import os
import statistics
import time
from collections.abc import Callable

import torch
from peer_layers.common import PeerUnavailable
from peer_layers.run_setup import Setup

from archlab.measure.profile import graph_of, synchronize


def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "cudaerrormemory" in text)


def free_memory(collect: bool = False) -> None:
    """Return cached CUDA blocks; `collect` also runs the garbage collector (slow with
    torch imported: after failures and between kinds only)."""
    if collect:
        gc.collect()
    if torch.cuda.is_available():
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except RuntimeError:
            pass


def short_error(e: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line[:240]}"


def _call_ms(fn: Callable[[], object], events: tuple | None) -> float:
    """Milliseconds of one call of `fn`: between two CUDA `events`, or by perf_counter."""
    if events is None:
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    start, end = events
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def time_reps(fn: Callable[[], object], device, budget_s: float, max_reps: int) -> list[float]:
    """Milliseconds of each repetition after one warm-up run (that also sizes the count)."""
    events = None
    if device.type == "cuda":
        events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    est = _call_ms(fn, events)
    reps = max(3, min(max_reps, int(budget_s * 1e3 / max(est, 1e-3))))
    return [_call_ms(fn, events) for _ in range(reps)]


def write_trace(fn: Callable[[], object], device, path: str, reps: int = 3) -> None:
    """`reps` calls of `fn` under torch.profiler: the kernels by total device time, and the
    device time summed over kernels against the wall time (what is left is the device
    idling, waiting for the host), written to `path`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    synchronize(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(reps):
            fn()
        synchronize(device)
    wall_ms = (time.perf_counter() - t0) * 1e3 / reps
    events = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in events) / reps
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(f"per call: wall {wall_ms:.3f} ms, kernels {device_us / 1e3:.3f} ms\n")
        f.write(events.table(sort_by=sort, row_limit=30, max_name_column_width=90))


def run_side(side, mode: str, x: torch.Tensor, T: int, setup: Setup, label: str = "") -> dict:
    """Time one side (archlab's layer or a peer) in one mode on input x. Returns a dict
    with status, ms, first_call_s, reps, cuda_graph, note, and `sample` (a slice of the
    output of the first call, for the check). With `setup.trace_dir`, a profile of a few
    calls is written there as `label`.txt."""
    device = setup.device
    r: dict = {"status": "ok", "ms": None, "first_call_s": None, "reps": 0, "note": ""}
    cache = fn = None
    try:
        if mode == "train":
            xg = x.detach().clone().requires_grad_()
            grad = torch.randn_like(x)
            params = [p for p in side.parameters() if p.requires_grad]

            def fn():
                out = side.forward(xg)
                out.backward(grad)
                for p in params:
                    p.grad = None
                xg.grad = None
                return out.detach()

        elif mode == "prefill":
            cache = side.allocate_cache(x.shape[0], T)

            def fn():
                with torch.no_grad():
                    return side.prefill(x, cache)

        else:
            cache = side.allocate_cache(x.shape[0], T + 1)

            def fn():
                return side.step(x, cache, T)

        out, r["first_call_s"] = _first_call(side, fn, device)
        r["sample"] = _sample(out, mode)
        del out
        if mode == "decode" and device.type == "cuda":
            fn, why = graph_of(fn, device)
            r["cuda_graph"] = not why
            if why:
                r["note"] = f"no CUDA graph: {why}; timed eagerly"
        samples = time_reps(fn, device, setup.row_budget_s, setup.max_reps)
        r["ms"], r["reps"] = statistics.median(samples), len(samples)
        r["spread"] = (max(samples) - min(samples)) / r["ms"] if r["ms"] else None
        if setup.trace_dir and label:
            write_trace(fn, device, os.path.join(setup.trace_dir, f"{label}.txt"))
    except PeerUnavailable as e:
        r.update(status="n/a", note=str(e), ms=None)
        r.pop("sample", None)
    except Exception as e:  # noqa: BLE001 - OOM and failures are rows
        r["status"] = "oom" if is_oom(e) else "error"
        r["error"] = short_error(e)
        r["ms"] = None
        r.pop("sample", None)
        for p in side.parameters():  # a backward cut short leaves gradients
            p.grad = None
    finally:
        cache = fn = None  # noqa: F841 - drops the cache, the graph and its pool
        free_memory(collect=r["status"] != "ok")
    return r


def _first_call(side, fn, device):
    """The first call (compilation, autotuning), timed apart; a peer whose compiled
    variant fails takes its next variant (noted on the row by the caller)."""
    while True:
        synchronize(device)
        t0 = time.perf_counter()
        try:
            out = fn()
            synchronize(device)
            return out, time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001
            if is_oom(e) or isinstance(e, PeerUnavailable):
                raise
            nxt = getattr(side, "next_variant", None)
            failed = getattr(side, "impl", "")
            if nxt is None or not nxt():
                raise
            side.fallbacks = [*getattr(side, "fallbacks", []), f"{failed}: {short_error(e)}"]
            free_memory(collect=True)


def _sample(out: torch.Tensor, mode: str) -> torch.Tensor:
    """What the check compares: the first sequence's last 4096 positions (train, prefill)
    or the first 64 sequences (decode)."""
    out = out.detach()
    s = out[:64] if mode == "decode" else out[:1, -4096:]
    return s.clone()


def compare(a: torch.Tensor, p: torch.Tensor, dtype: torch.dtype) -> dict:
    """Relative Frobenius error and max abs difference of two outputs."""
    a, p = a.float(), p.float()
    rel = ((a - p).norm() / a.norm().clamp_min(1e-30)).item()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    return {"rel_err": rel, "max_abs": (a - p).abs().max().item(), "match": rel <= tol, "tol": tol}
