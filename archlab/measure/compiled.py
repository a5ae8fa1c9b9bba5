"""`torch.compile` for the measured cases of `archlab profile --compile` (docs/profile.md).

Each compiled case gets its own compiled callable with static shapes (`compile_fn`:
`dynamic=False`), after Dynamo's caches are cleared (`fresh`), so that no case reuses
another's graphs nor counts against Dynamo's recompile limit: the compile time of a case
is its own. `first_calls` makes the calls that compile, before any warm-up or timed run,
and reports their wall time, the graphs compiled and the graph breaks met. Exceptions
are the caller's to handle (a failed compile times the case eagerly, with a note).
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

BACKEND: str | Callable = "inductor"  # what torch.compile lowers with (tests swap it)


def compile_fn(fn: Callable) -> Callable:
    """`fn` under torch.compile, static shapes (one graph per shape: a case has one)."""
    return torch.compile(fn, backend=BACKEND, dynamic=False)


def fresh() -> None:
    """Forget every compiled graph (Dynamo's caches; inductor's on-disk cache stays)."""
    torch._dynamo.reset()


@dataclass
class FirstCalls:
    """The calls that compiled a case: their wall time, how many, the graphs Dynamo
    compiled, the graph breaks it met and the most frequent break's reason."""

    seconds: float
    calls: int
    graphs: int
    breaks: int
    reason: str | None


def _counts() -> tuple[int, dict[str, int]]:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"], dict(counters["graph_break"])


def first_calls(fn: Callable[[], object], device: torch.device, max_calls: int = 3) -> FirstCalls:
    """Call `fn` (synchronised) until a call compiles no new graph, `max_calls` at most
    (a second call can recompile: a guard that the first call's side effects changed);
    Dynamo's warnings are silenced here, the graph breaks counted instead."""
    graphs0, breaks0 = _counts()
    seconds, calls = 0.0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        while calls < max_calls:
            before = _counts()[0]
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds += time.perf_counter() - t0
            calls += 1
            if calls > 1 and _counts()[0] == before:
                break
    graphs, breaks = _counts()
    new = {k: v - breaks0.get(k, 0) for k, v in breaks.items() if v > breaks0.get(k, 0)}
    reason = max(new, key=new.get) if new else None
    return FirstCalls(seconds, calls, graphs - graphs0, sum(new.values()), _first_line(reason))


def _first_line(text: str | None) -> str | None:
    if not text:
        return None
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    head = lines[0] if lines else ""
    detail = next((ln for ln in lines[1:] if ln.startswith("Explanation:")), "")
    detail = detail.removeprefix("Explanation:").strip()
    return (f"{head}: {detail}" if detail else head)[:160]


def break_note(calls: FirstCalls) -> str | None:
    """The note of a case whose compile met graph breaks (None without any)."""
    if not calls.breaks:
        return None
    s = "s" if calls.breaks > 1 else ""
    return (
        f"compiled with {calls.breaks} graph break{s} ({calls.graphs} graphs), e.g. "
        f"{calls.reason}; the code between graphs runs eagerly"
    )


def failure_reason(e: BaseException) -> str:
    """A short reason for the note of a compile that failed: the exception's type and
    the first line of its message, with the next line when the first ends in a colon
    (Dynamo's "backend='inductor' raised:" is followed by the backend's own error)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    line = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else "".join(lines[:1])
    return f"{type(e).__name__}: {line[:200]}" if line else type(e).__name__
