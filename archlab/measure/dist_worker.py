"""The life of one rank of a sharded measurement (`worker`), under torch's elastic launcher
(`elastic_launch` for `archlab profile --nproc N`, or torchrun): the process group from the
launcher's env:// variables (nccl on CUDA, one GPU per rank; gloo on the CPU), a gloo side
group through which rank 0 decides the timing and gathers every rank's figures, every case
sharded over all ranks and then (with more than one) on rank 0 alone, for the scaling.

Never a hang: a watchdog thread ends a rank that passes the whole run's time limit (exit
status 124), the process group has its own timeout for one collective, and a rank that fails
writes why into `run_dir/rank<k>.json` and raises, so that the launcher stops every rank;
`dist_launch` makes one result row of it.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from archlab.lang.plan import Plan
from archlab.measure.distributed import DistJob, case_result, failed_extra, run_case
from archlab.measure.profile import free_memory, is_oom, short_error
from archlab.measure.result import Result

TIMEOUT_EXIT = 124  # a rank's exit status when the watchdog ends it


class Watchdog:
    """Ends this rank (exit status 124) once the whole run has taken `seconds`, after
    writing why into its status file: a hung collective never outlives the run's limit."""

    def __init__(self, seconds: float, status: Callable[[dict], None]):
        self.seconds, self.status = seconds, status
        self.timer = threading.Timer(seconds, self._expire)
        self.timer.daemon = True

    def _expire(self) -> None:
        why = f"timeout: the run passed {self.seconds:g} s"
        self.status({"status": "error", "error": why})
        # under torchrun no launcher of ours reads the status file: say it here too
        rank = os.environ.get("RANK", "?")
        print(f"archlab: rank {rank}: {why} (--timeout); this rank stops", file=sys.stderr)
        sys.stderr.flush()
        os._exit(TIMEOUT_EXIT)


def _status_writer(run_dir: str, rank: int, current: dict) -> Callable[[dict], None]:
    def write(fields: dict) -> None:
        path = Path(run_dir) / f"rank{rank}.json"
        try:
            path.write_text(json.dumps({"rank": rank, "time": time.time(), **current, **fields}))
        except OSError:
            pass

    return write


def worker(job: DistJob) -> dict | None:
    """One rank: measure every case of `job`. Rank 0 returns {"results": [...], "peaks":
    ...} (and writes them into `run_dir/partial.json` after each case); the others None."""
    from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

    from archlab.measure.throughput import device_peaks

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    current: dict = {"case": None}
    status = _status_writer(job.run_dir, rank, current)
    watchdog = Watchdog(job.timeout_s, status)
    watchdog.timer.start()
    cuda = job.device_type == "cuda"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else None
    if cuda:
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
        torch.set_num_threads(job.threads or max(1, (os.cpu_count() or 1) // world))
    try:
        dist.init_process_group(
            "nccl" if cuda else "gloo",
            timeout=timedelta(seconds=job.pg_timeout_s),
            device_id=device if cuda else None,
        )
        side = dist.new_group(backend="gloo", timeout=timedelta(seconds=job.timeout_s))
        solo = dist.new_group([0]) if world > 1 and job.baseline else None
        mesh = init_device_mesh(device.type, (world,))
        dtype = job.plans[0].model.torch_dtype
        peaks = device_peaks(device, dtype, job.refresh_peaks) if rank == 0 else None
        results: list[Result] = []
        for i, batch, T in job.cases():
            plan, scaled = job.plans[i], job.scaled[i]
            current["case"] = {"plan": i, "batch": batch, "seq_len": T, "nproc": world}
            status({"status": "running"})
            mine = run_case(plan, batch, T, mesh, device, job, side if world > 1 else None)
            ranks: list = [None] * world if rank == 0 else None
            dist.gather_object(mine, ranks, dst=0, group=side)
            if rank == 0:
                results.append(case_result(plan, scaled, batch, T, ranks, job, peaks))
            if solo is not None:  # the same case on rank 0 alone, for the scaling
                current["case"] = {**current["case"], "nproc": 1}
                if rank == 0:
                    one = DeviceMesh.from_group(solo, device.type)
                    results.append(baseline(plan, scaled, batch, T, one, device, job, peaks))
                    link(results[-2], results[-1])
                dist.barrier(group=side)
            if rank == 0:
                write_partial(job.run_dir, results, peaks)
        status({"status": "done"})
        out = {"results": [r.to_dict() for r in results], "peaks": peaks} if rank == 0 else None
    except BaseException as e:
        status({"status": "oom" if is_oom(e) else "error", "error": short_error(e)})
        raise  # the launcher stops every rank; no collective is waited for any more
    finally:
        watchdog.timer.cancel()
    dist.destroy_process_group()
    return out


def baseline(plan: Plan, scaled, batch: int, seq_len: int, mesh, device, job, peaks) -> Result:
    """The same case on one process (rank 0, a 1-rank mesh); a failure (a model that
    does not fit one GPU) is the row's status, not the run's end."""
    try:
        mine = run_case(plan, batch, seq_len, mesh, device, job, None)
        return case_result(plan, scaled, batch, seq_len, [mine], job, peaks)
    except Exception as e:  # noqa: BLE001 - a failed case is a result
        free_memory(device)
        r = Result(
            plan.name,
            plan.file,
            "model, 1 process",
            "train",
            batch,
            seq_len,
            plan.model.dtype,
            job.device_type,
            status="oom" if is_oom(e) else "error",
            error=short_error(e),
            scaled=scaled,
        )
        r.extra = failed_extra(plan, batch, seq_len, 1, job)
        return r


def link(sharded: Result, single: Result) -> None:
    """The scaling efficiency of `sharded` against `single` (the same per-GPU batch on one
    process): total tokens/s over N x the one process's."""
    n = sharded.extra["nproc"]
    if sharded.status == "ok" and single.status == "ok":
        sharded.extra["scaling_efficiency"] = sharded.tokens_per_s / (n * single.tokens_per_s)
        sharded.extra["baseline_tokens_per_s"] = single.tokens_per_s
    else:
        sharded.notes.append(f"no scaling efficiency: the 1-process case {single.status}")


def write_partial(run_dir: str, results: list[Result], peaks) -> None:
    """Rank 0's results so far (what `dist_launch` reports when a later case fails)."""
    doc = {"results": [r.to_dict() for r in results], "peaks": peaks}
    try:
        (Path(run_dir) / "partial.json").write_text(json.dumps(doc, default=str))
    except OSError:
        pass
