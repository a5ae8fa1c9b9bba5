"""Measured speed and memory of a spec: train, prefill and decode (throughput: throughput.py).

A *target* is what is timed: a whole model (`ModelTarget`) or one mixer block of a spec
with its projections (`LayerTarget`, the RAT paper's efficiency setup). `measure` runs one
case (target x mode x batch x T) and returns a `Result`; an out-of-memory error becomes a
result with status "oom" (memory freed), any other failure a result with status "error".

Timing (`time_fn`): warm-up runs, then `repeats` runs, more while their spread is above
`Settings.stable_spread` (a case that never settles is flagged `unstable`), within the
case's time budget `max_time_s`, each synchronised; on CUDA each run is timed with CUDA
events, on the CPU with `perf_counter`. Decode on CUDA replays a CUDA graph of the step
when the step can be captured, and says so (`cuda_graph`). Achieved TFLOP/s use the cost
model's matmul FLOPs, achieved GB/s its decode bytes (weights + cache read); fractions are
of the peaks that `archlab.measure.throughput.device_peaks` measured once on this device.
See docs/profile.md.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from archlab.blocks.registry import kind as block_kind
from archlab.cost.analytic import mixer_figures, param_count, spec_cost
from archlab.lang.plan import Plan, PlannedBlock
from archlab.measure.result import (  # noqa: F401 (re-exported)
    SCHEMA,
    Result,
    Settings,
    Timing,
    judge_timing,
)
from archlab.model import build_model

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


# ---- targets -------------------------------------------------------------------------


def _cuda_peak(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


class _Target:
    """What the timing loops drive: `self.module` (a model or one block) and its cache."""

    module: torch.nn.Module

    def allocate_cache(self, batch: int, max_len: int, device=None):
        return self.module.allocate_cache(batch, max_len, device=device)

    def prefill(self, x: torch.Tensor, cache) -> torch.Tensor:
        return self.module.prefill(x, cache)

    def step(self, x: torch.Tensor, cache) -> torch.Tensor:
        return self.module.step(x, cache)

    def backend_notes(self) -> list[str]:
        """The caveats the blocks' selected backends give (`backend_note`), each once."""
        notes = (getattr(m, "backend_note", None) for m in self.module.modules())
        return [f"backend: {n}" for n in dict.fromkeys(n for n in notes if n)]


class ModelTarget(_Target):
    """A whole model built from a Plan (whose `model.dtype` is the dtype it runs in)."""

    def __init__(self, plan: Plan, device: torch.device, scaled: str | None = None):
        self.plan, self.device, self.scaled = plan, device, scaled
        self.label = "model"
        self.module = build_model(plan, device=device)
        self.vocab = plan.model.vocab_size

    def backends(self) -> dict[str, str]:
        by_kind: dict[str, set[str]] = {}
        for block, backend in zip(self.plan.order(), self.module.backends().values(), strict=False):
            if backend is not None:
                by_kind.setdefault(block.kind, set()).add(str(backend))
        return {k: "/".join(sorted(v)) for k, v in by_kind.items()}

    def analytic(self, batch: int, seq_len: int) -> dict[str, int]:
        c = spec_cost(self.plan, batch=batch, seq_len=seq_len)
        return {
            "fwd_flops": c.fwd_flops,
            "train_flops": c.train_flops,
            "cache_bytes": c.cache_bytes,
            "decode_flops": c.decode_flops,
            "decode_bytes": c.decode_bytes,
        }

    def inputs(self, batch: int, seq_len: int) -> torch.Tensor:
        return torch.randint(0, self.vocab, (batch, seq_len), device=self.device)

    def train_fn(self, batch: int, seq_len: int, optimizer: bool) -> Callable[[], None]:
        ids, targets = self.inputs(batch, seq_len), self.inputs(batch, seq_len)
        model = self.module
        opt = _adamw(model, self.device) if optimizer else None

        def run() -> None:
            logits = model(ids)
            loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
            (loss + model.aux_loss()).backward()
            if opt is not None:
                opt.step()
            model.zero_grad(set_to_none=True)

        return run

    @staticmethod
    def layers(cache) -> list:
        return cache.layers


class LayerTarget(_Target):
    """One mixer block of a spec, alone (input and output projections included, no norm,
    no residual), on random activations [B, T, d_model]."""

    def __init__(
        self, plan: Plan, block: PlannedBlock, device: torch.device, scaled: str | None = None
    ):
        self.plan, self.block, self.device, self.scaled = plan, block, device, scaled
        params = block.summary()  # what differs from the defaults, a backend asked for included
        self.label = f"layer {block.kind}" + (
            "(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else ""
        )
        m = plan.model
        with torch.device(device):
            module = block_kind(block.kind).build(block.params, m)
        self.module = module.to(dtype=m.torch_dtype)
        self.module.select_backend(device)

    def backends(self) -> dict[str, str]:
        backend = getattr(self.module, "backend", None)
        return {self.block.kind: str(backend)} if backend is not None else {}

    def analytic(self, batch: int, seq_len: int) -> dict[str, int]:
        return mixer_figures(self.block, self.plan.model, batch, seq_len)

    def inputs(self, batch: int, seq_len: int) -> torch.Tensor:
        m = self.plan.model
        return torch.randn(batch, seq_len, m.d_model, device=self.device, dtype=m.torch_dtype)

    def train_fn(self, batch: int, seq_len: int, optimizer: bool) -> Callable[[], None]:
        x = self.inputs(batch, seq_len).requires_grad_()
        grad = torch.randn_like(x)
        block = self.module
        opt = _adamw(block, self.device) if optimizer else None

        def run() -> None:
            block(x).backward(grad)
            if opt is not None:
                opt.step()
            block.zero_grad(set_to_none=True)
            x.grad = None

        return run

    @staticmethod
    def layers(cache) -> list:
        return [cache]


Target = ModelTarget | LayerTarget


def _adamw(module: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(module.parameters(), lr=1e-4, fused=device.type == "cuda")


def set_length(target: Target, cache, length: int) -> None:
    """Mark every layer's cache as holding `length` tokens (the contents stay as they are:
    no block's work depends on the values in its cache)."""
    for layer in target.layers(cache):
        layer.set_length(length)  # a parallel block's branches keep counts of their own


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


def _run_mode(target: Target, r: Result, settings: Settings, peaks: dict | None) -> None:
    B, T, device = r.batch, r.seq_len, target.device
    r.notes += target.backend_notes()
    if r.mode == "train":
        target.module.train()
        fn = target.train_fn(B, T, settings.optimizer)
        r.timing = time_fn(fn, device, settings)
        _figures(r, target.analytic(B, T)["train_flops"], None, B * T, peaks)
        if settings.optimizer:
            r.notes.append("includes an AdamW step")
        return
    target.module.eval()
    with torch.no_grad():
        if r.mode == "prefill":
            x, cache = target.inputs(B, T), target.allocate_cache(B, T)

            def fn() -> None:
                set_length(target, cache, 0)
                target.prefill(x, cache)

            r.timing = time_fn(fn, device, settings)
            _figures(r, target.analytic(B, T)["fwd_flops"], None, B * T, peaks)
        else:  # decode: one token at position T, the cache holding T tokens
            x, cache = target.inputs(B, 1), target.allocate_cache(B, T + 1)

            def fn() -> None:
                set_length(target, cache, T)
                target.step(x, cache)

            if device.type == "cuda" and settings.cuda_graphs:
                fn2, why = graph_of(fn, device)
                r.cuda_graph = not why
                if why:
                    r.notes.append(f"no CUDA graph: {why}; timed eagerly")
                fn = fn2
            r.timing = time_fn(fn, device, settings)
            a = target.analytic(B, T)
            _figures(r, a["decode_flops"], a["decode_bytes"], B, peaks)
        r.cache_bytes_measured = cache.nbytes()
        r.cache_bytes_analytic = target.analytic(B, T + (r.mode == "decode"))["cache_bytes"]


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
    try:
        _run_mode(target, r, settings, peaks)
    except Exception as e:  # noqa: BLE001 - every failure is a result, the sweep goes on
        r.status, r.error = ("oom" if is_oom(e) else "error"), _short(e)
        r.timing = None
    judge_timing(r, settings)
    if r.status != "ok":
        target.module.zero_grad(set_to_none=True)  # a backward cut short leaves gradients
    r.peak_memory_bytes = _cuda_peak(device) if r.status == "ok" else None
    free_memory(device)
    return r


def _short(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line[:200]}"


def weights_bytes(plan: Plan) -> int:
    """Bytes of the model's weights in its dtype."""
    return param_count(plan) * plan.model.dtype_bytes
