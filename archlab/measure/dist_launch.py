"""Starting a sharded measurement and reading what came of it (docs/distributed.md).

`launch(job, nproc)` (`archlab profile --nproc N`) starts N ranks through torch's elastic
launcher, `torch.distributed.launcher.api.elastic_launch` (a c10d rendezvous on a free
local port, no restarts, spawned processes running `dist_worker.worker`), and returns rank
0's rows. The launcher's failure handling stops every rank as soon as one fails; the run's
time limit is kept by each rank's watchdog and, as a backstop here, by an alarm that stops
the launcher (which then stops its ranks). Whatever went wrong becomes one result row:
status `oom` or `error` with the failing rank and its message (`timeout: ...` for the time
limit), after the rows of the cases done before it, and a note lists the cases not run.
`run_here(job)` is the same for a process that torchrun started (`torchrun
--nproc-per-node N -m archlab.cli profile ...`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path

from archlab.measure.cases import result_from_dict
from archlab.measure.dist_worker import TIMEOUT_EXIT, worker
from archlab.measure.distributed import DistJob, failed_extra
from archlab.measure.result import Result

GRACE_S = 60.0  # the launcher's own alarm waits this much longer than the ranks' watchdogs
QUIET_LOGGERS = ("torch.distributed.elastic", "torch.multiprocessing", "torch.distributed")


class RunTimeout(BaseException):  # not an Exception: no handler inside the launcher eats it
    """The whole run passed its time limit (the backstop alarm of `launch`)."""


def launched_by_torchrun() -> bool:
    """True in a process that torchrun (or another elastic agent) started as a rank."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "WORLD_SIZE" in os.environ


def new_run_dir() -> str:
    """A folder for the ranks' status files; under torchrun, the same one on every rank."""
    if launched_by_torchrun():
        run = f"{os.environ['TORCHELASTIC_RUN_ID']}-{os.environ.get('MASTER_PORT', '')}"
        path = Path(tempfile.gettempdir()) / f"archlab-dist-{run}"
        path.mkdir(parents=True, exist_ok=True)
        return str(path)
    return tempfile.mkdtemp(prefix="archlab-dist-")


@contextmanager
def _quiet_launcher():
    """The launcher's own log lines (a traceback per failed rank, its teardown) stay out of
    the output unless ARCHLAB_DEBUG is set: the failure is reported as a result row."""
    if os.environ.get("ARCHLAB_DEBUG"):
        yield
        return
    loggers = [logging.getLogger(n) for n in QUIET_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextmanager
def _alarm(seconds: float):
    """Raise RunTimeout in the main thread after `seconds` (nothing off the main thread)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGALRM"):
        yield
        return

    def expire(signum, frame):
        raise RunTimeout(f"the run passed {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def launch(job: DistJob, nproc: int) -> tuple[list[Result], dict | None, list[str]]:
    """Run `job` on `nproc` ranks through the elastic launcher; (results, peaks, notes)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=nproc,
        run_id=f"archlab-{uuid.uuid4().hex[:12]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",  # a free port
        rdzv_configs={"timeout": int(min(job.timeout_s, 900))},
        max_restarts=0,
        monitor_interval=0.2,
        start_method="spawn",
    )
    try:
        with _quiet_launcher(), _alarm(job.timeout_s + GRACE_S):
            out = elastic_launch(config, worker)(job)
        doc = out.get(0) or {}
        return [result_from_dict(d) for d in doc["results"]], doc.get("peaks"), []
    except ChildFailedError as e:
        causes = {
            rank: (f.exitcode, _message(f.message), f.timestamp) for rank, f in e.failures.items()
        }
        return failed(job, nproc, causes)
    except RunTimeout as e:
        return failed(job, nproc, {}, f"timeout: {e} (--timeout {job.timeout_s:g} s)")
    finally:
        shutil.rmtree(job.run_dir, ignore_errors=True)


def run_here(job: DistJob) -> tuple[list[Result], dict | None, list[str]] | None:
    """Run `job` as this rank of a torchrun launch: rank 0 gets (results, peaks, notes),
    the other ranks None. A failure raises (torchrun then stops every rank)."""
    doc = worker(job)  # on a failure the ranks' status files stay in job.run_dir
    if doc is None:
        return None
    shutil.rmtree(job.run_dir, ignore_errors=True)
    return [result_from_dict(d) for d in doc["results"]], doc.get("peaks"), []


def _message(message) -> str:
    """The text of an elastic error file's message (a dict with 'message', or a string)."""
    if isinstance(message, dict):
        message = message.get("message", "")
    return str(message).strip().splitlines()[0][:300] if message else ""


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def failed(
    job: DistJob, nproc: int, causes: dict, why: str | None = None
) -> tuple[list[Result], dict | None, list[str]]:
    """The results of a run that did not end well: rank 0's rows of the cases done, then
    one row for the case that failed (its first failing rank's status and message), and
    notes on the other ranks and on the cases not run."""
    run_dir = Path(job.run_dir)
    partial = _read(run_dir / "partial.json") or {}
    results = [result_from_dict(d) for d in partial.get("results", [])]
    ranks = [s for s in (_read(p) for p in sorted(run_dir.glob("rank*.json"))) if s]
    failing = sorted((s for s in ranks if s.get("status") in ("oom", "error")), key=_when)
    if why is None and failing:
        root = failing[0]
        status, why = root["status"], f"rank {root['rank']}: {root.get('error', '')}"
    elif why is None and causes:
        rank, (code, message, _) = min(causes.items(), key=lambda kv: kv[1][2])
        status = "error"
        why = f"rank {rank}: " + (
            f"timeout: the run passed --timeout {job.timeout_s:g} s"
            if code == TIMEOUT_EXIT
            else message or f"exit status {code}"
        )
    else:
        status, why = "error", why or "the launcher failed before any rank reported"
    case = next((s["case"] for s in (failing or ranks) if s.get("case")), None)
    done = {(r.spec, r.seq_len) for r in results}
    todo = [(i, b, T) for i, b, T in job.cases() if (job.plans[i].name, T) not in done]
    if case is None and todo:
        i, b, T = todo[0]
        case = {"plan": i, "batch": b, "seq_len": T, "nproc": nproc}
    notes = [f"the sharded run stopped at a failure: {why}"]
    if case is not None:
        plan = job.plans[case["plan"]]
        n = case.get("nproc", nproc)
        r = Result(
            plan.name,
            plan.file,
            f"model, {n} process{'es' if n > 1 else ''}",
            "train",
            case["batch"],
            case["seq_len"],
            plan.model.dtype,
            job.device_type,
            status=status,
            error=why,
            timing=None,
            scaled=job.scaled[case["plan"]],
        )
        r.extra = failed_extra(plan, case["batch"], case["seq_len"], n, job)
        results.append(r)
        key = (case["plan"], case["seq_len"])
        todo = [c for c in todo if (c[0], c[2]) != key]
    others = [s for s in failing[1:]]
    if others:
        notes.append(
            "then: " + "; ".join(f"rank {s['rank']}: {s.get('error', '')}" for s in others)
        )
    if todo:
        notes.append(
            "not run: " + ", ".join(f"{job.plans[i].name} B={b} T={T}" for i, b, T in todo)
        )
    return results, partial.get("peaks"), notes


def _when(status: dict) -> float:
    return float(status.get("time", 0.0))
