"""Kernel tables of measured cases (`archlab profile --trace DIR`, `Settings.trace_dir`).

After a case's timing (and its peak memory) is taken, `trace_case` runs the timed callable
`REPS` more times under `torch.profiler.profile` (CPU activity, and CUDA activity on a
CUDA device) and writes `DIR/<case_label>.txt`: a one-line header naming the case, then
`key_averages().table(...)` sorted by CUDA time on CUDA, CPU time elsewhere, 40 rows.
The result's `extra["trace"]` holds the file's path. A trace never changes a timing (it
comes after) and never fails a case: an exception becomes the note `trace failed: ...`.
A case timed as a CUDA graph replay is traced replaying the graph: its kernels may show
as one graph launch. See docs/profile.md.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable

import torch

from archlab.measure.result import Result, short_error

REPS = 3  # calls of the timed callable under the profiler
ROWS = 40  # rows of the kernel table
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def case_label(r: Result) -> str:
    """A file name for the case: spec, target, mode, batch and T in letters, digits, `-`,
    `_` and `.` only, e.g. `rat-model-train-B1-T64`. A name that had other characters (a
    space, a layer's `(k=v)`) gets them replaced by `_` and a short hash of the original
    appended, so that two cases never share a label."""
    parts = [r.spec, r.target, r.mode, f"B{r.batch}", f"T{r.seq_len}"]
    raw = "-".join(parts)
    label = "-".join(_UNSAFE.sub("_", p).strip("._-") or "_" for p in parts)
    if label != raw or len(label) > 120:
        digest = hashlib.sha1(repr(parts).encode()).hexdigest()[:8]
        label = f"{label[:120]}-{digest}"
    return label


def header(r: Result, sort_by: str, what: str = "") -> str:
    """The first line of a trace file: the case and how it was traced."""
    backends = ",".join(f"{k}={v}" for k, v in sorted(r.backends.items())) or "-"
    text = (
        f"# archlab profile trace: spec={r.spec} target={r.target} mode={r.mode} "
        f"B={r.batch} T={r.seq_len} backend={backends} compiled={r.compiled} "
        f"cuda_graph={r.cuda_graph} device={r.device} dtype={r.dtype}; {REPS} calls "
        f"{what or 'of the timed callable'} under torch.profiler after the timing, "
        f"sorted by {sort_by}"
    )
    if r.cuda_graph:
        text += "; a CUDA graph replay: the kernels inside the graph may show as one graph launch"
    return text + "\n"


def trace_case(
    fn: Callable[[], object],
    r: Result,
    device: torch.device,
    trace_dir: str | None,
    grad: bool = False,
    what: str = "",
) -> None:
    """Profile `REPS` calls of `fn` (with autograd when `grad`) into `trace_dir`; the path
    goes to `r.extra["trace"]`. Nothing without `trace_dir`; never raises."""
    if not trace_dir:
        return
    try:
        from torch.profiler import ProfilerActivity, profile

        cuda = device.type == "cuda"
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        sort_by = "cuda_time_total" if cuda else "cpu_time_total"
        if cuda:
            torch.cuda.synchronize(device)
        with torch.set_grad_enabled(grad), profile(activities=activities) as prof:
            for _ in range(REPS):
                fn()
            if cuda:
                torch.cuda.synchronize(device)
        table = prof.key_averages().table(sort_by=sort_by, row_limit=ROWS)
        os.makedirs(trace_dir, exist_ok=True)
        path = os.path.abspath(os.path.join(trace_dir, case_label(r) + ".txt"))
        with open(path, "w") as f:
            f.write(header(r, sort_by, what) + table + "\n")
        r.extra["trace"] = path
    except Exception as e:  # noqa: BLE001 - a trace never fails the case
        r.notes.append(f"trace failed: {short_error(e)}")


def trace_note(results: list[Result], trace_dir: str | None) -> list[str]:
    """The run's note saying where the traces went (and how many failed)."""
    if not trace_dir:
        return []
    written = sum("trace" in r.extra for r in results)
    failed = sum(any(n.startswith("trace failed") for n in r.notes) for r in results)
    text = (
        f"traces: kernel tables of {written} case{'s' if written != 1 else ''} in "
        f"{os.path.abspath(trace_dir)} (torch.profiler, {REPS} calls per case after its "
        "timing; the path is each result's extra.trace)"
    )
    return [text + (f"; {failed} failed (their notes say why)" if failed else "")]
