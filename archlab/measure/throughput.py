"""Generation throughput (the RAT paper's Table 1 method) and the device's peak throughput.

`measure_throughput`: the largest batch whose cache for prompt + generated tokens fits is
found by `largest_batch` (doubling, then bisection, over a `fits(batch)` oracle: a real
allocation and decode step on CUDA, out-of-memory meaning "no"; a byte budget on the
CPU), then generating G tokens after a P-token context is timed, eagerly, with greedy
sampling: tokens/s = batch x G / time. The prompt itself is not run: the cache is marked
as holding P tokens (the work of a decode step does not depend on the values in the
cache); `profile --mode prefill` times prompts. With `sample` > 0 the G steps are not all
run: `sample` positions drawn one from each of `sample` equal parts of P .. P + G - 1
(fixed seed) are timed and the total estimated.
With `Settings.trace_dir`, one decode step (at the first sampled position, else at P) is
profiled after the timing (archlab.measure.trace).

`device_peaks`: matmul TFLOP/s and copy GB/s of the device, measured once and cached.
"""

from __future__ import annotations

import json
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from archlab.measure.profile import (
    ModelTarget,
    Result,
    Settings,
    Timing,
    free_memory,
    is_oom,
    set_length,
    short_error,
    synchronize,
    time_fn,
    weights_bytes,
)
from archlab.measure.trace import trace_case


@dataclass
class Search:
    """What `largest_batch` found: the best batch (0 if none fits), every probe in order
    as (batch, fits), and whether the search stopped at its limit rather than a failure."""

    best: int
    probes: list[tuple[int, bool]] = field(default_factory=list)
    capped: bool = False


def largest_batch(fits: Callable[[int], bool], limit: int, step: int = 1) -> Search:
    """The largest batch b <= limit with fits(b), assuming fits is monotone (if b fits,
    every smaller batch does). Batches tried are multiples of `step` (doubling from `step`
    until a failure or the limit, then bisection between the last success and the first
    failure); if `step` itself does not fit, the batches below it are searched one by one
    the same way. Each batch is probed at most once."""
    if limit < 1:
        raise ValueError(f"limit must be >= 1 (got {limit})")
    seen: dict[int, bool] = {}
    search = Search(0)

    def probe(b: int) -> bool:
        if b not in seen:
            seen[b] = bool(fits(b))
            search.probes.append((b, seen[b]))
        return seen[b]

    def units(unit: int, top: int) -> int:
        """The largest k <= top with fits(k * unit) (0 if none), doubling then bisecting."""
        lo, k = 0, 1
        while k <= top and probe(k * unit):
            lo = k
            if k == top:
                return k
            k = min(2 * k, top)
        hi = min(k, top + 1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if probe(mid * unit) else (lo, mid)
        return lo

    step = max(1, min(step, limit))
    k = units(step, limit // step)
    search.best = k * step if k or step == 1 else units(1, step - 1)
    search.capped = k > 0 and k == limit // step  # the limit fitted: the true best may be larger
    return search


def fits_oracle(
    target: ModelTarget, total_len: int, memory_limit: int | None, count_weights: bool = True
) -> Callable:
    """fits(batch): the cache for `total_len` tokens (plus the weights, if `count_weights`)
    within `memory_limit` bytes (when given; sizes from an allocation on the meta device),
    and, on CUDA, a real cache allocation and one decode step at the last position without
    running out."""
    device = target.device
    weights = weights_bytes(target.plan) if count_weights else 0

    def attempt(batch: int) -> bool:
        cache = target.allocate_cache(batch, total_len)
        set_length(target, cache, total_len - 1)
        ids = torch.zeros(batch, 1, dtype=torch.long, device=device)
        with torch.no_grad():
            target.step(ids, cache).argmax(-1)
        synchronize(device)
        return True

    def fits(batch: int) -> bool:
        if memory_limit is not None:
            need = target.allocate_cache(batch, total_len, device="meta").nbytes() + weights
            if need > memory_limit:
                return False
        if device.type != "cuda":
            return True
        ok = _unless_oom(attempt, batch)
        free_memory(device)  # after the failed attempt's frames are gone
        return ok

    return fits


def _unless_oom(fn: Callable[[int], bool], batch: int) -> bool:
    try:
        return fn(batch)
    except Exception as e:  # noqa: BLE001
        if not is_oom(e):
            raise
        return False


def _positions(prompt: int, generate: int, n: int) -> list[int]:
    """n positions in P .. P + G - 1, one drawn (fixed seed) from each of n equal strata.
    Not evenly spaced: those share their alignment (all multiples of 32 for 16 of 1024),
    and a kernel's speed may depend on the cache length's alignment."""
    n = max(1, min(n, generate))
    rng = random.Random(0)
    return sorted({prompt + int((i + rng.random()) * generate / n) for i in range(n)})


def _time_generation(
    target: ModelTarget,
    batch: int,
    prompt: int,
    generate: int,
    settings: Settings,
    sample: int,
    gen_repeats: int,
    r: Result,
) -> None:
    device = target.device
    cache = target.allocate_cache(batch, prompt + generate)
    first = torch.randint(0, target.vocab, (batch, 1), device=device)
    target.module.eval()
    with torch.no_grad():
        if sample:
            few = Settings(min(settings.warmup, 1), min(settings.repeats, 3), settings.max_time_s)
            medians = []
            for p in _positions(prompt, generate, sample):

                def one(p: int = p) -> None:
                    set_length(target, cache, p)
                    target.step(first, cache).argmax(-1)

                medians.append(time_fn(one, device, few).median_s)
            total = generate * sum(medians) / len(medians)
            r.timing = Timing(total, total, total, total, total, 1)
            r.notes.append(f"generation time estimated from {len(medians)} positions")
        else:

            def run() -> None:
                set_length(target, cache, prompt)
                tok = first
                for _ in range(generate):
                    tok = target.step(tok, cache)[:, -1].argmax(-1, keepdim=True)

            for _ in range(min(settings.warmup, 1)):
                set_length(target, cache, prompt)
                target.step(first, cache)
            r.timing = time_fn(run, device, Settings(0, max(1, gen_repeats), 0.0))
        if settings.trace_dir:  # one decode step, after the timing: not all G of them
            p = _positions(prompt, generate, sample)[0] if sample else prompt

            def traced() -> None:
                set_length(target, cache, p)
                target.step(first, cache).argmax(-1)

            what = f"of one decode step at position {p} (of the generation timed)"
            trace_case(traced, r, device, settings.trace_dir, what=what)
    r.cache_bytes_measured = cache.nbytes()


def measure_throughput(
    target: ModelTarget,
    prompt: int,
    generate: int,
    settings: Settings,
    peaks: dict | None = None,
    *,
    max_batch: int = 4096,
    step: int = 1,
    memory_limit: int | None = None,
    limit_counts_weights: bool = True,
    batch: int | None = None,
    sample: int = 0,
    gen_repeats: int = 1,
) -> Result:
    """Tokens/s generating `generate` tokens after a `prompt`-token context at the largest
    batch that fits (or at `batch`). Out of memory at batch 1 is a result ("oom")."""
    device = target.device
    r = Result(
        target.plan.name,
        target.plan.file,
        target.label,
        "throughput",
        0,
        prompt,
        target.plan.model.dtype,
        str(device),
        scaled=target.scaled,
        backends=target.backends(),
    )
    r.extra = {"prompt": prompt, "generate": generate, "sampled_positions": sample}
    total = prompt + generate
    try:
        if batch is None:
            search = largest_batch(
                fits_oracle(target, total, memory_limit, limit_counts_weights), max_batch, step
            )
            r.extra.update(search=search.probes, capped=search.capped)
            if search.capped:
                r.notes.append(f"batch search stopped at its limit ({max_batch})")
            batch = search.best
        if batch < 1:
            r.status, r.error = "oom", "batch 1 does not fit"
            return r
        for attempt in range(3):  # the timed run may need a little more than the probe
            r.batch = batch
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            oom = not _unless_oom(
                lambda b: (
                    _time_generation(target, b, prompt, generate, settings, sample, gen_repeats, r)
                    or True
                ),
                batch,
            )
            if not oom:
                break
            free_memory(device)
            if attempt == 2 or batch <= step:
                r.status, r.error = "oom", f"out of memory while timing at batch {batch}"
                return r
            batch = max(step, (batch * 9 // 10) // step * step)
            r.notes.append(f"OOM while timing; retried at batch {batch}")
        positions = range(prompt, total, max(1, generate // 64))
        costs = [target.analytic(batch, t) for t in positions]
        flops = generate * sum(c["decode_flops"] for c in costs) // len(costs)
        nbytes = generate * sum(c["decode_bytes"] for c in costs) // len(costs)
        t = r.timing.median_s
        r.tokens_per_s = batch * generate / t
        r.flops, r.tflops, r.bytes, r.gbps = flops, flops / t / 1e12, nbytes, nbytes / t / 1e9
        if peaks:
            r.flops_frac = r.tflops / peaks["matmul_tflops"]
            r.bw_frac = r.gbps / peaks["copy_gbps"]
        r.cache_bytes_analytic = target.analytic(batch, total)["cache_bytes"]
        r.peak_memory_bytes = (
            torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
        )
        r.extra["generation_s"] = t
        r.notes.append("eager decode, greedy sampling; prompt not run (cache marked filled)")
    except Exception as e:  # noqa: BLE001 - a result, never a crash
        r.status = "oom" if is_oom(e) else "error"
        r.error = short_error(e)
        r.timing = None
    finally:
        free_memory(device)
    return r


# ---- device peaks ----------------------------------------------------------------------


def device_name(device: torch.device) -> str:
    """'NVIDIA H200' for CUDA; the CPU model and thread count otherwise."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), name
            )
    except OSError:
        pass
    n = torch.get_num_threads()
    return f"{name} ({n} thread{'s' if n > 1 else ''})"


def peaks_path() -> str:
    """$XDG_CACHE_HOME/archlab/peaks.json (default ~/.cache/archlab/peaks.json)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "archlab", "peaks.json")


def measure_peaks(device: torch.device, dtype: torch.dtype) -> dict:
    """Matmul TFLOP/s (the best square matmul in `dtype`: 8192 on CUDA; 256, 512 and
    1024 on the CPU, whose best size depends on its caches) and copy GB/s (read + write)."""
    cuda = device.type == "cuda"
    sizes, copy_bytes = ((8192,), 1 << 30) if cuda else ((256, 512, 1024), 64 << 20)
    quick = Settings(warmup=2 if cuda else 1, repeats=20 if cuda else 3, max_time_s=2.0)
    tflops = max(2 * n**3 / _timed_matmul(n, device, dtype, quick).min_s / 1e12 for n in sizes)
    cp = _timed_copy(copy_bytes, device, quick)
    free_memory(device)
    return {
        "device": device_name(device),
        "dtype": str(dtype).removeprefix("torch."),
        "torch": torch.__version__,
        "matmul_tflops": tflops,
        "copy_gbps": 2 * copy_bytes / cp.min_s / 1e9,
        "measured_at": time.time(),
    }


def _timed_matmul(n: int, device: torch.device, dtype: torch.dtype, quick: Settings) -> Timing:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return time_fn(lambda: torch.mm(a, b), device, quick)


def _timed_copy(nbytes: int, device: torch.device, quick: Settings) -> Timing:
    src = torch.empty(nbytes, device=device, dtype=torch.uint8)
    dst = torch.empty_like(src)
    return time_fn(lambda: dst.copy_(src), device, quick)


def device_peaks(device: torch.device, dtype: torch.dtype, refresh: bool = False) -> dict:
    """The device's peaks, measured once per (device name, torch version, dtype) and
    cached in `peaks_path()`; `refresh` measures again. A cache that cannot be read or
    written is ignored."""
    key = f"{device_name(device)}|torch {torch.__version__}|{str(dtype).removeprefix('torch.')}"
    path = peaks_path()
    try:
        with open(path) as f:
            table = json.load(f)
    except (OSError, ValueError):
        table = {}
    if not isinstance(table, dict):
        table = {}
    if key in table and not refresh:
        return table[key]
    table[key] = measure_peaks(device, dtype)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "w") as f:
            json.dump(table, f, indent=2)
        os.replace(path + ".tmp", path)
    except OSError:
        pass
    return table[key]
