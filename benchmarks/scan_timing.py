"""Timing shared by the scan benchmarks (`rnn_scan.py`, `selective_scan.py`): a median in
milliseconds (triton's `do_bench` on a GPU, wall-clock calls elsewhere) and one variant's
forward and forward + backward times, a failure (an OOM, a compile error) being its result;
and the table of those times, each variant's ratio to the Triton kernel."""

from __future__ import annotations

import statistics
import time
import traceback
from collections.abc import Callable

import torch


def median_ms(fn: Callable[[], object], cuda: bool, reps: int) -> float:
    """do_bench's median on a GPU; else the median wall-clock time of `reps` calls."""
    if cuda:
        from triton.testing import do_bench

        return do_bench(fn, warmup=25, rep=100, return_mode="median")
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_forward_and_train(
    forward: Callable[[], torch.Tensor], train: Callable[[], None], cuda: bool, reps: int
) -> dict:
    """{forward_ms, train_ms, train_peak_GB (CUDA), y: forward's output} of one variant
    (`forward` runs under no_grad; `train` runs forward + backward), or {error}."""
    out: dict = {}
    try:
        with torch.no_grad():
            y = forward()
            out["forward_ms"] = median_ms(forward, cuda, reps)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        out["train_ms"] = median_ms(train, cuda, reps)
        if cuda:
            out["train_peak_GB"] = torch.cuda.max_memory_allocated() / 1e9
        out["y"] = y
    except Exception as e:  # OOM or a compile failure is a result, not a crash
        out = {"error": f"{type(e).__name__}: {e}"[:2000]}
        print(traceback.format_exc()[-3000:], flush=True)
    if cuda:
        torch.cuda.empty_cache()
    return out


def print_variant_rows(rows: list[dict], variants: list[str], modes: tuple[str, ...]) -> None:
    """One line per row and mode: each variant's median ms and its ratio to `triton`'s,
    then the variants that failed. A row is {B, T, variants: {name: {<mode>_ms | error}}}."""
    print(f"{'B x T':>12} {'mode':>8} " + " ".join(f"{v:>10} {'ratio':>6}" for v in variants))
    for row in rows:
        for mode in modes:
            base = row["variants"].get("triton", {}).get(f"{mode}_ms")
            cells = []
            for v in variants:
                ms = row["variants"].get(v, {}).get(f"{mode}_ms")
                ratio = f"{ms / base:6.2f}" if ms is not None and base else f"{'-':>6}"
                cells.append(f"{f'{ms:10.3f}' if ms is not None else 'error':>10} {ratio}")
            print(f"{row['B']:>5}x{row['T']:<6} {mode:>8} " + " ".join(cells))
        for v, res in row["variants"].items():
            if "error" in res:
                print(f"{'':>12} {v} failed: {res['error'][:300]}")
