"""Several trainings of the recall probe (archlab/measure/probe.py): every spec trained
at every learning rate of a grid with every seed, as Zoology (Arora et al. 2023) sweeps
the learning rate and reports the best. One spec's runs are summed up in one result:
`accuracy` is the best learning rate's mean held-out accuracy over the seeds (ties: the
smaller rate), with its spread (`accuracy_min`, `accuracy_max`), every run (`runs`) and
every rate's figures (`by_lr`); the curves (`loss`, `eval`) are the best rate's seed with
the highest accuracy.

The runs go one after another in this process (`jobs` 1), or `jobs` at a time in worker
processes (the spawn context; each worker rebuilds the copy from the pickled plan and
settings, with its share of the CPU threads; a script that starts them must do so under
`if __name__ == "__main__":`, as the workers import it). A run that raises is recorded as
an error and the others go on; a spec whose every run failed gets that error as its
result. On Ctrl-C the workers are ended with the command."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from archlab.lang.plan import Plan
from archlab.measure import probe
from archlab.measure.probe import ProbeSettings, probe_plan
from archlab.measure.profile import short_error

# on_progress(steps done, steps in all, what the latest report was about)
OnProgress = Callable[[int, int, str], None]
# on_result(index of the plan, its result or the exception that stands for it)
OnResult = Callable[[int, "dict | Exception"], None]
RUN_FIGURES = ("accuracy", "held_out_loss", "seconds", "eval", "loss")
REPORT_EVERY_S = 0.25  # how often a worker reports its step (and at every evaluation)


class ProbeFailed(RuntimeError):
    """Every run of a spec's probe failed; the message says why the first one did."""


@dataclass(frozen=True)
class ProbeGrid:
    """One spec's runs: every learning rate with every seed; the other settings are
    `base`'s (its own lr and seed are not used)."""

    base: ProbeSettings
    lrs: tuple[float, ...]
    seeds: tuple[int, ...]

    @classmethod
    def single(cls, settings: ProbeSettings) -> ProbeGrid:
        """The grid of one run: `settings` as they are."""
        return cls(settings, (settings.lr,), (settings.seed,))

    def runs(self) -> list[ProbeSettings]:
        """The settings of every run, learning rate by learning rate, seeds within."""
        return [
            dataclasses.replace(self.base, lr=lr, seed=seed)
            for lr in self.lrs
            for seed in self.seeds
        ]

    def steps(self) -> int:
        """Training steps of one spec's runs together."""
        return len(self.lrs) * len(self.seeds) * self.base.steps

    def problems(self) -> list[str]:
        """Why this grid cannot run (empty when it can)."""
        out = []
        if not self.lrs or not self.seeds:
            out.append("at least one learning rate and one seed are needed")
        for name, values in (("learning rate", self.lrs), ("seed", self.seeds)):
            twice = sorted({v for v in values if values.count(v) > 1})
            if twice:
                out.append(f"{name} {', '.join(f'{v:g}' for v in twice)} given twice")
        if any(s < 0 for s in self.seeds):
            out.append("seeds must be >= 0")
        for settings in self.runs() or [self.base]:
            out += [p for p in settings.problems() if p not in out]
        return out

    def to_dict(self) -> dict:
        """The settings, with the lists `lrs` and `seeds` in place of `lr` and `seed`."""
        lists = {"lr": ("lrs", list(self.lrs)), "seed": ("seeds", list(self.seeds))}
        out = {}
        for key, value in self.base.to_dict().items():
            name, value = lists.get(key, (key, value))
            out[name] = value
        return out


def error_text(e: BaseException) -> str:
    """A one-line account of an error: 'RuntimeError: the first line of its message'."""
    if isinstance(e, ProbeFailed):
        return str(e)
    return short_error(e)


def check_plan(plan: Plan, grid: ProbeGrid) -> None:
    """ValueError when the grid's settings are wrong or `plan` cannot be scaled to the
    probe's width (the same for every run of the grid)."""
    problems = grid.problems()
    if problems:
        raise ValueError("; ".join(problems))
    probe_plan(plan, grid.base)


# ---- one run ---------------------------------------------------------------------------


def train_one(
    plan: Plan, settings: ProbeSettings, device: str, on_step
) -> tuple[dict, Exception | None]:
    """One training as a run record (`lr`, `seed`, `status`, the probe's result or its
    `error`), and the exception when it failed."""
    head = {"lr": settings.lr, "seed": settings.seed}
    try:
        result = probe.run_probe(plan, settings, device, on_step)
    except Exception as e:  # noqa: BLE001 - a run's failure is its record; the others go on
        return {**head, "status": "error", "error": error_text(e)}, e
    return {**head, "status": "ok", **result}, None


def run_entry(record: dict) -> dict:
    """What a spec's result keeps of one run: its lr, seed, status, and its figures and
    curves (or its error)."""
    keep = RUN_FIGURES if record["status"] == "ok" else ("error",)
    return {k: record[k] for k in ("lr", "seed", "status")} | {k: record.get(k) for k in keep}


# ---- one spec's result -----------------------------------------------------------------


def by_learning_rate(records: list[dict]) -> list[dict]:
    """Per learning rate (increasing): the mean, lowest and highest accuracy of its runs
    that ended, how many ended and how many failed."""
    out = []
    for lr in sorted({r["lr"] for r in records}):
        mine = [r for r in records if r["lr"] == lr]
        got = [r["accuracy"] for r in mine if r["status"] == "ok"]
        out.append(
            {
                "lr": lr,
                "accuracy": sum(got) / len(got) if got else None,
                "accuracy_min": min(got, default=None),
                "accuracy_max": max(got, default=None),
                "runs": len(got),
                "failed": len(mine) - len(got),
            }
        )
    return out


def summarize(records: list[dict]) -> dict:
    """One spec's probe result from its run records: the shown run's result (the best
    learning rate's seed with the highest accuracy: `loss`, `eval`, `held_out_loss`,
    `settings`, the copy), with `accuracy` the best rate's mean over its seeds, its
    `accuracy_min`/`accuracy_max`, `best_lr`, `best_seed` (the shown run), `best_lr_runs`,
    `by_lr`, `runs` (every run), `run_count`, `runs_failed` and `seconds` (the runs'
    training time added up). ProbeFailed when no run ended."""
    ended = [r for r in records if r["status"] == "ok"]
    if not ended:
        more = f" (and the other {len(records) - 1} runs failed)" if len(records) > 1 else ""
        raise ProbeFailed(records[0]["error"] + more)
    rates = by_learning_rate(records)
    best = None
    for rate in rates:  # increasing: a tie keeps the smaller rate
        if rate["runs"] and (best is None or rate["accuracy"] > best["accuracy"]):
            best = rate
    shown = max((r for r in ended if r["lr"] == best["lr"]), key=lambda r: r["accuracy"])
    out = {k: v for k, v in shown.items() if k not in ("lr", "seed", "status")}
    out.update(
        accuracy=best["accuracy"],
        accuracy_min=best["accuracy_min"],
        accuracy_max=best["accuracy_max"],
        best_lr=best["lr"],
        best_seed=shown["seed"],
        best_lr_runs=best["runs"],
        by_lr=rates,
        run_count=len(records),
        runs_failed=len(records) - len(ended),
        seconds=sum(r.get("seconds") or 0.0 for r in ended),
        runs=[run_entry(r) for r in records],
    )
    return out


# ---- many runs -------------------------------------------------------------------------


class Progress:
    """Steps done by every run, passed on as one count to `on_progress`."""

    def __init__(self, tasks: list[tuple[Plan, ProbeSettings]], on_progress: OnProgress | None):
        self.tasks, self.on_progress = tasks, on_progress
        self.done = [0] * len(tasks)
        self.total = sum(s.steps for _, s in tasks)

    def step(self, index: int, done: int, loss: float | None) -> None:
        """Run `index` has done `done` steps (`loss`: the training loss, where read)."""
        seen = f", loss {loss:.3g}" if loss is not None else ""
        self.tell(index, done, f"step {done}/{self.tasks[index][1].steps}{seen}")

    def end(self, index: int, status: str) -> None:
        """Run `index` has ended (`status` ok or error): all its steps count as done."""
        self.tell(index, self.tasks[index][1].steps, "ended" if status == "ok" else "failed")

    def tell(self, index: int, done: int, what: str) -> None:
        """Record run `index`'s steps and pass the count on."""
        self.done[index] = done
        if self.on_progress is not None:
            plan, s = self.tasks[index]
            self.on_progress(
                sum(self.done), self.total, f"{plan.name} lr {s.lr:g} seed {s.seed}: {what}"
            )

    def reporter(self, index: int):
        """An `on_step` for `run_probe` of run `index`."""
        return lambda done, total, loss: self.step(index, done, loss)


def probe_many(
    plans: Sequence[Plan],
    grid: ProbeGrid,
    device: str | torch.device = "cpu",
    *,
    jobs: int = 1,
    threads: int | None = None,
    on_progress: OnProgress | None = None,
    on_result: OnResult | None = None,
) -> list[dict | Exception]:
    """Every plan's probe over `grid`; all plans' runs share the `jobs` workers (1: one
    after another here). `threads`: the CPU threads shared out between the workers
    (default this process's torch threads; each worker at least 1). Returns per plan its
    result (`summarize`), or the exception that stands for it: ValueError when it cannot
    be probed, ProbeFailed (in this process: the first run's own exception) when every
    run failed. `on_result(i, ...)` is called as plan i's last run ends."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1 (got {jobs})")
    results: list[dict | Exception | None] = [None] * len(plans)
    tasks, owner = [], []
    for i, plan in enumerate(plans):
        try:
            check_plan(plan, grid)
        except ValueError as e:
            results[i] = e
            continue
        tasks += [(plan, s) for s in grid.runs()]
        owner += [i] * len(grid.runs())
    left = {i: owner.count(i) for i in set(owner)}
    records: dict[int, dict] = {}
    raised: dict[int, Exception] = {}
    progress = Progress(tasks, on_progress)

    def finished(index: int, record: dict, error: Exception | None) -> None:
        records[index] = record
        progress.end(index, record["status"])
        if error is not None:
            raised[index] = error
        i = owner[index]
        left[i] -= 1
        if left[i]:
            return
        mine = [k for k in range(len(tasks)) if owner[k] == i]
        try:
            results[i] = summarize([records[k] for k in mine])
        except ProbeFailed as e:
            results[i] = raised.get(mine[0], e)
        if on_result is not None:
            on_result(i, results[i])

    for i, result in enumerate(results):
        if result is not None and on_result is not None:
            on_result(i, result)
    if jobs == 1 or len(tasks) < 2:
        for index, (plan, settings) in enumerate(tasks):
            finished(index, *train_one(plan, settings, str(device), progress.reporter(index)))
    else:
        share = max(1, (threads or torch.get_num_threads()) // min(jobs, len(tasks)))
        in_workers(tasks, str(device), min(jobs, len(tasks)), share, progress, finished)
    return results


def run_probes(
    plan: Plan,
    grid: ProbeGrid,
    device: str | torch.device = "cpu",
    on_progress: OnProgress | None = None,
    jobs: int = 1,
    threads: int | None = None,
) -> dict:
    """One spec's probe over `grid` (see `probe_many`); raises what stands for a
    failure."""
    (result,) = probe_many(
        [plan], grid, device, jobs=jobs, threads=threads, on_progress=on_progress
    )
    if isinstance(result, Exception):
        raise result
    return result


# ---- worker processes -----------------------------------------------------------------


def in_workers(tasks, device: str, jobs: int, threads: int, progress: Progress, finished) -> None:
    """Train `tasks` in `jobs` spawned worker processes of `threads` torch threads each;
    `progress.step` as they report, `finished(index, record, None)` as each ends. A run
    whose worker died is recorded as an error. The workers are ended on the way out,
    Ctrl-C included."""
    ctx = multiprocessing.get_context("spawn")
    todo, updates = ctx.Queue(), ctx.Queue()
    plans = list({id(p): p for p, _ in tasks}.values())
    where = {id(p): k for k, p in enumerate(plans)}
    for index, (plan, settings) in enumerate(tasks):
        todo.put((index, where[id(plan)], settings))
    for _ in range(jobs):
        todo.put(None)
    workers = [
        ctx.Process(target=worker, args=(plans, device, threads, todo, updates), daemon=True)
        for _ in range(jobs)
    ]
    done: set[int] = set()
    try:
        for w in workers:
            w.start()
        while len(done) < len(tasks):
            ended = not any(w.is_alive() for w in workers)
            try:
                kind, index, payload = updates.get(timeout=0.5)
            except queue.Empty:
                if ended:  # and what they sent before they ended has been read
                    break
                continue
            if kind == "step":
                progress.step(index, *payload)
            else:
                done.add(index)
                finished(index, payload, None)
    finally:
        end_workers(workers)
        todo.cancel_join_thread()  # what no worker took stays unsent
        todo.close()
        updates.close()
    codes = ", ".join(str(w.exitcode) for w in workers)
    for index in sorted(set(range(len(tasks))) - done):
        plan, settings = tasks[index]
        error = f"its worker process ended without a result (exit codes {codes})"
        finished(index, {"lr": settings.lr, "seed": settings.seed, "status": "error",
                         "error": error}, None)  # fmt: skip


def end_workers(workers) -> None:
    """Terminate the workers still running and wait for every one."""
    for w in workers:
        if w.is_alive():
            w.terminate()
    for w in workers:
        if w.pid is not None:
            w.join(timeout=10)
            if w.is_alive():
                w.kill()
                w.join()


def worker(plans, device: str, threads: int, todo, updates) -> None:
    """A worker process: trains the runs it takes from `todo` until None, reporting
    ("step", index, (done, loss)) and ("done", index, record) on `updates`. Ignores
    Ctrl-C (the parent ends it) and stops when its parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    parent = os.getppid()
    while True:
        try:
            task = todo.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if task is None:
            return
        index, which, settings = task
        report = step_reporter(index, updates, parent)
        record, _ = train_one(plans[which], settings, device, report)
        updates.put(("done", index, record))


def step_reporter(index: int, updates, parent: int):
    """A worker's `on_step` for run `index`: reports at every evaluation, at the end and
    every REPORT_EVERY_S seconds; ends the worker when its parent is gone."""
    last = 0.0

    def report(done: int, total: int, loss: float | None) -> None:
        nonlocal last
        if os.getppid() != parent:
            os._exit(1)  # orphaned: nobody will read what it trains
        now = time.perf_counter()
        if loss is not None or done == total or now - last >= REPORT_EVERY_S:
            last = now
            updates.put(("step", index, (done, loss)))

    return report
