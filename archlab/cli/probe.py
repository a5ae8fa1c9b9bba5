"""`archlab probe mqar SPEC...`: how well each spec's architecture recalls. A small copy
of each spec (the probe's d_model and vocabulary) is trained on multi-query associative
recall (Zoology's MQAR) for a fixed number of AdamW steps and its accuracy measured on
held-out sequences (archlab/measure/probe.py), at every learning rate of `--lr` with every
seed of `--seed`, `--jobs` runs at once (archlab/measure/probe_runs.py: recall is the
best learning rate's mean over the seeds). Also the progress bar with ETA and the probe
options that `archlab sweep --probe mqar` shares."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from archlab.cli.common import add_extends_root, did_you_mean
from archlab.lang.errors import UsageError

TASKS = ("mqar",)
# option -> (type, help); dest is probe_<option>; defaults depend on the device
PROBE_OPTIONS = {
    "d-model": (int, "width of the trained copy (CPU 64, CUDA 128)"),
    "vocab": (int, "MQAR vocabulary: keys [1, V/2), values [V/2, V) (CPU 64, CUDA 8192)"),
    "pairs": (int, "key-value pairs per sequence (CPU 4, CUDA 16)"),
    "seq": (int, "tokens per sequence, even, >= 4 x pairs (CPU 32, CUDA 256)"),
    "steps": (int, "AdamW steps (CPU 600, CUDA 4000)"),
    "batch": (int, "sequences per step (CPU 64, CUDA 128)"),
    "lr": (str, "peak learning rate after a linear warm-up over 10%% of the steps (1e-3); "
           "a comma list (1e-3,3e-3) trains at each and reports the best"),
    "eval": (int, "held-out sequences (CPU 512, CUDA 2048)"),
    "seed": (str, "seed of the initialisation and of both data streams (0); a comma list or "
             "a range (0,1,2 or 0-2) trains each: recall is the best lr's mean over them"),
    "blocks": (int, "the copy keeps the fewest whole units of the stack with at least this "
               "many blocks, and every patched unit (4; 0: every block)"),
    "dtype": (str, "float32, or bfloat16 (autocast, CUDA only)"),
    "init": (str, "blocks: each block's own initialisation (default); torch: every Linear "
             "weight re-drawn with PyTorch's default rule, the same for every kind"),
    "jobs": (int, "trainings at once, in worker processes (1); on CUDA they share the GPU, "
             "on the CPU each gets its share of --threads"),
}  # fmt: skip
# the data generators take 2 seed and 2 seed + 1, which must fit in 64 bits
MAX_SEED = 2**62
MAX_RANGE = 1000  # seeds in one range


def add_probe_options(p, prefix: str = "") -> None:
    """The probe's options, `--d-model` ... (with `prefix`: `--probe-d-model` ...)."""
    p.set_defaults(probe_prefix=prefix)  # for the options' names in messages
    g = p.add_argument_group("recall probe (MQAR)")
    for name, (kind, text) in PROBE_OPTIONS.items():
        dest = "probe_" + name.replace("-", "_")
        g.add_argument(
            f"--{prefix}{name}", dest=dest, type=kind, metavar=name.upper().replace("-", "_"),
            help=text,
        )  # fmt: skip


def probe_grid(args, device):
    """The probe's runs (archlab.measure.probe_runs.ProbeGrid): the device's default
    settings with the options given, every learning rate of `--lr` with every seed of
    `--seed`."""
    import dataclasses

    from archlab.measure.probe import CPU_PROBE, CUDA_PROBE
    from archlab.measure.probe_runs import ProbeGrid

    base = CUDA_PROBE if str(device).startswith("cuda") else CPU_PROBE
    prefix = getattr(args, "probe_prefix", "")

    def pick(name: str, default):
        value = getattr(args, "probe_" + name, None)
        return default if value is None else value

    lrs = parse_lrs(pick("lr", None), f"--{prefix}lr") or (base.lr,)
    seeds = parse_seeds(pick("seed", None), f"--{prefix}seed") or (base.seed,)
    task = dataclasses.replace(
        base.task, vocab=pick("vocab", base.task.vocab), pairs=pick("pairs", base.task.pairs),
        seq=pick("seq", base.task.seq),
    )  # fmt: skip
    settings = dataclasses.replace(
        base,
        task=task,
        **{f: pick(f, getattr(base, f)) for f in ("d_model", "steps", "batch")},
        lr=lrs[0],
        seed=seeds[0],
        blocks=pick("blocks", base.blocks),
        eval_sequences=pick("eval", base.eval_sequences),
        dtype=pick("dtype", base.dtype),
        init=pick("init", base.init),
    )
    grid = ProbeGrid(settings, lrs, seeds)
    problems = grid.problems()
    if problems:
        raise UsageError("probe: " + "; ".join(problems))
    return grid


def probe_jobs(args) -> int:
    """`--jobs` (`--probe-jobs`): how many trainings run at once (1 when not given)."""
    jobs = getattr(args, "probe_jobs", None)
    if jobs is not None and jobs < 1:
        raise UsageError(f"--{getattr(args, 'probe_prefix', '')}jobs must be >= 1 (got {jobs})")
    return jobs or 1


def parse_list(text: str | None, option: str, read, example: str) -> tuple:
    """The values of a comma list option (`read`: one item -> its values, or ValueError
    with the reason); () when the option was not given. UsageError names the item."""
    if text is None:
        return ()
    values: list = []
    for item in text.split(","):
        try:
            values += read(item.strip())
        except ValueError as e:
            raise UsageError(f"{option} {text}: {e} (use e.g. {example})") from None
    return tuple(values)  # a value given twice: ProbeGrid.problems says so


def read_lr(item: str) -> list[float]:
    """'3e-3' -> [0.003]; a learning rate is a finite number > 0."""
    import math

    try:
        lr = float(item)
    except ValueError:
        raise ValueError(f"{item!r} is not a number") from None
    if not (math.isfinite(lr) and lr > 0):
        raise ValueError(f"a learning rate is a finite number > 0 (got {item!r})")
    return [lr]


def read_seeds(item: str) -> list[int]:
    """'3' -> [3]; '0-4' -> [0, 1, 2, 3, 4] (a range, both ends in)."""
    import re

    match = re.fullmatch(r"([0-9]+)(?:-([0-9]+))?", item, re.ASCII)
    if not match:
        raise ValueError(f"{item!r} is not a seed (a whole number >= 0) or a range A-B")
    low = int(match[1])
    high = int(match[2]) if match[2] else low
    if high < low:
        raise ValueError(f"{item!r} is a range downwards")
    if high >= MAX_SEED:
        raise ValueError(f"{item!r}: seeds must be below 2**62")
    if high - low >= MAX_RANGE:
        raise ValueError(f"{item!r}: a range may hold at most {MAX_RANGE} seeds")
    return list(range(low, high + 1))


def parse_lrs(text: str | None, option: str = "--lr") -> tuple[float, ...]:
    """'1e-3,3e-3' -> (0.001, 0.003); () for None."""
    return parse_list(text, option, read_lr, "1e-3 or 1e-3,3e-3")


def parse_seeds(text: str | None, option: str = "--seed") -> tuple[int, ...]:
    """'0,1,2' or '0-2' -> (0, 1, 2); () for None."""
    return parse_list(text, option, read_seeds, "0, 0,1,2 or 0-4")


def pick_device(name: str, threads: int | None = None):
    """`auto` (CUDA when there is one), `cpu` or `cuda[:N]` as a torch.device."""
    import torch

    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be >= 1 (got {threads})")
        torch.set_num_threads(threads)
    name = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    try:
        device = torch.device(name)
    except RuntimeError:
        hint = did_you_mean(name, ("cpu", "cuda"))
        raise UsageError(f"--device {name}: not a device (use cpu, cuda or cuda:N){hint}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: no CUDA device is available here")
    return device


class Bar:
    """Progress with an ETA on stderr: one redrawn line on a terminal, elsewhere a line
    every `every_s` seconds. Work is counted in units (`total`); `skip` counts units done
    without time (resumed work), so the ETA follows the rate of the work done now. Shown
    only once `after_s` seconds have passed (quick work stays quiet)."""

    def __init__(self, total: float, every_s: float = 10.0, after_s: float = 0.0):
        self.total, self.every_s, self.after_s = total, every_s, after_s
        self.start = self.last = time.perf_counter()
        self.done = self.skipped = 0.0
        self.tty, self.shown = sys.stderr.isatty(), False

    def skip(self, units: float) -> None:
        self.done += units
        self.skipped += units

    def update(self, done: float, text: str = "") -> None:
        self.done = done
        now = time.perf_counter()
        elapsed = now - self.start
        if elapsed < self.after_s or (not self.tty and now - self.last < self.every_s):
            return
        self.last, self.shown = now, True
        rate = (done - self.skipped) / elapsed if elapsed > 0 else 0
        eta = f"ETA {_clock((self.total - done) / rate)}" if rate > 0 else "ETA ?"
        bar = "#" * int(20 * done / max(self.total, 1e-9))
        line = f"[{bar:<20}] {100 * done / max(self.total, 1e-9):3.0f}% {_clock(elapsed)} {eta}"
        if self.tty:
            sys.stderr.write(f"\r{line} {text[:70]:<70}")
        else:
            sys.stderr.write(f"{line} {text}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty and self.shown:
            sys.stderr.write("\r" + " " * 130 + "\r")
            sys.stderr.flush()


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def register(subparsers) -> None:
    """Add `probe` to the `archlab` parser."""
    p = subparsers.add_parser(
        "probe", help="recall probe: train a small copy of each spec on MQAR, held-out accuracy"
    )
    p.add_argument("task", choices=TASKS, help="the probe: mqar (multi-query associative recall)")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    add_probe_options(p)
    p.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch)")
    p.add_argument("--json", action="store_true", help="JSON on stdout")
    p.add_argument("--out", metavar="DIR", help="write probe.json and the training curves here")
    add_extends_root(p)
    p.set_defaults(func=run)


def run(args) -> int:
    """`archlab probe mqar`: train each spec's copy (at every lr and seed given), print
    its held-out recall."""
    from archlab.cli.measure_options import unique_plans
    from archlab.measure.probe_runs import check_plan, probe_many
    from archlab.report.probe_report import grid_text, recall_text, runs_text
    from archlab.report.tables import table

    plans = unique_plans(args.specs)
    device = pick_device(args.device, args.threads)
    grid, jobs = probe_grid(args, device), probe_jobs(args)
    for plan in plans:
        try:
            check_plan(plan, grid)
        except ValueError as e:  # a spec that cannot be scaled to the probe's width
            raise UsageError(f"probe of {plan.name}: {e} (try another --d-model)") from None
    bar = Bar(len(plans) * grid.steps(), every_s=10.0)
    start = time.perf_counter()
    got = probe_many(
        plans, grid, device, jobs=jobs, on_progress=lambda done, _, text: bar.update(done, text)
    )
    seconds = time.perf_counter() - start
    bar.close()
    for r in got:
        if isinstance(r, Exception):  # every run of a spec failed
            raise r
    results = [(plan.name, r) for plan, r in zip(plans, got, strict=True)]
    doc = {
        "schema": "archlab.probe/1",
        "task": args.task,
        "device": str(device),
        "settings": grid.to_dict(),
        "jobs": jobs,
        "seconds": seconds,
        "results": [{"spec": name, **r} for name, r in results],
    }
    files = []
    if args.out:
        from archlab.report.probe_report import probe_plot

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.json").write_text(json.dumps(doc, indent=2, default=str))
        files = ["probe.json"] + [f for f in [probe_plot(results, out)] if f]
        doc["files"] = files
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    t, s, several = grid.base.task, grid.base, len(grid.runs()) > 1
    print(
        f"MQAR: vocabulary {t.vocab}, {t.pairs} pairs in {t.seq} tokens; {s.steps} AdamW steps "
        f"({grid_text(doc['settings'])}) on {device}; accuracy on {s.eval_sequences} "
        f"held-out sequences; chance (1 / pairs) {100 * t.chance:.0f}%"
    )
    head = ["spec", "trained copy", "params", "recall", "loss", "time", "backend"]
    rows = [
        [name, r["model"], f"{r['params']:,}", recall_text(r), f"{r['held_out_loss']:.3g}",
         f"{r['seconds']:.1f} s", ",".join(f"{k}:{v}" for k, v in r["backends"].items()
                                           if k != "mlp")]
        for name, r in results
    ]  # fmt: skip
    if several:
        head[4:4] = ["best lr", "runs"]
        for row, (_, r) in zip(rows, results, strict=True):
            row[4:4] = [f"{r['best_lr']:g}", runs_text(r)]
    print(table(head, rows))
    if several:
        print(
            f"recall: the best learning rate's mean over the seeds (lowest-highest); loss: "
            f"its best seed's; time: the runs' training added up ({len(grid.runs())} runs a "
            f"spec, {jobs} at once: {seconds:.1f} s in all)"
        )
    if files:
        print(f"wrote {', '.join(str(Path(args.out) / f) for f in files)}")
        if len(files) == 1:
            print("(no plot: matplotlib is not installed; pip install 'archlab[plot]')")
    return 0
