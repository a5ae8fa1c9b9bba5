"""`archlab probe mqar SPEC...`: how well each spec's architecture recalls. A small copy
of each spec (the probe's d_model and vocabulary) is trained on multi-query associative
recall (Zoology's MQAR) for a fixed number of AdamW steps and its accuracy measured on
held-out sequences (archlab/measure/probe.py). Also the progress bar with ETA and the
probe options that `archlab sweep --probe mqar` shares."""

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
    "lr": (float, "peak learning rate after a linear warm-up over 10%% of the steps (1e-3)"),
    "eval": (int, "held-out sequences (CPU 512, CUDA 2048)"),
    "seed": (int, "seed of the initialisation and of both data streams (0)"),
    "blocks": (int, "the copy keeps the fewest whole units of the stack with at least this "
               "many blocks, and every patched unit (4; 0: every block)"),
    "dtype": (str, "float32, or bfloat16 (autocast, CUDA only)"),
    "init": (str, "blocks: each block's own initialisation (default); torch: every Linear "
             "weight re-drawn with PyTorch's default rule, the same for every kind"),
}  # fmt: skip


def add_probe_options(p, prefix: str = "") -> None:
    """The probe's options, `--d-model` ... (with `prefix`: `--probe-d-model` ...)."""
    g = p.add_argument_group("recall probe (MQAR)")
    for name, (kind, text) in PROBE_OPTIONS.items():
        dest = "probe_" + name.replace("-", "_")
        g.add_argument(
            f"--{prefix}{name}", dest=dest, type=kind, metavar=name.upper().replace("-", "_"),
            help=text,
        )  # fmt: skip


def probe_settings(args, device):
    """The probe's settings: the device's defaults, with the options given."""
    import dataclasses

    from archlab.measure.probe import CPU_PROBE, CUDA_PROBE

    base = CUDA_PROBE if str(device).startswith("cuda") else CPU_PROBE

    def pick(name: str, default):
        value = getattr(args, "probe_" + name, None)
        return default if value is None else value

    task = dataclasses.replace(
        base.task, vocab=pick("vocab", base.task.vocab), pairs=pick("pairs", base.task.pairs),
        seq=pick("seq", base.task.seq),
    )  # fmt: skip
    settings = dataclasses.replace(
        base,
        task=task,
        **{f: pick(f, getattr(base, f)) for f in ("d_model", "steps", "batch", "lr", "seed")},
        blocks=pick("blocks", base.blocks),
        eval_sequences=pick("eval", base.eval_sequences),
        dtype=pick("dtype", base.dtype),
        init=pick("init", base.init),
    )
    problems = settings.problems()
    if problems:
        raise UsageError("probe: " + "; ".join(problems))
    return settings


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
    """`archlab probe mqar`: train each spec's copy, print its held-out recall."""
    from archlab.cli.measure_options import unique_plans
    from archlab.measure.probe import run_probe
    from archlab.report.tables import table

    plans = unique_plans(args.specs)
    device = pick_device(args.device, args.threads)
    settings = probe_settings(args, device)
    bar = Bar(len(plans) * settings.steps, every_s=10.0)
    results = []
    for k, plan in enumerate(plans):

        def step(done, total, loss, k=k, name=plan.name):
            seen = f", loss {loss:.3g}" if loss is not None else ""
            bar.update(k * total + done, f"{name}: step {done}/{total}{seen}")

        try:
            results.append((plan.name, run_probe(plan, settings, device, on_step=step)))
        except ValueError as e:  # a spec that cannot be scaled to the probe's width
            raise UsageError(f"probe of {plan.name}: {e} (try another --d-model)") from None
    bar.close()
    doc = {
        "schema": "archlab.probe/1",
        "task": args.task,
        "device": str(device),
        "settings": settings.to_dict(),
        "results": [{"spec": name, **r} for name, r in results],
    }
    files = []
    if args.out:
        from archlab.report.pareto import probe_plot

        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.json").write_text(json.dumps(doc, indent=2, default=str))
        files = ["probe.json"] + [f for f in [probe_plot(results, out)] if f]
        doc["files"] = files
    if args.json:
        print(json.dumps(doc, indent=2, default=str))
        return 0
    t, s = settings.task, settings
    print(
        f"MQAR: vocabulary {t.vocab}, {t.pairs} pairs in {t.seq} tokens; {s.steps} AdamW steps "
        f"(lr {s.lr:g}, batch {s.batch}, seed {s.seed}) on {device}; accuracy on "
        f"{s.eval_sequences} held-out sequences; chance (1 / pairs) {100 * t.chance:.0f}%"
    )
    rows = [
        [name, r["model"], f"{r['params']:,}", f"{100 * r['accuracy']:.1f}%",
         f"{r['held_out_loss']:.3g}", f"{r['seconds']:.1f} s",
         ",".join(f"{k}:{v}" for k, v in r["backends"].items() if k != "mlp")]
        for name, r in results
    ]  # fmt: skip
    print(table(["spec", "trained copy", "params", "recall", "loss", "time", "backend"], rows))
    if files:
        print(f"wrote {', '.join(str(Path(args.out) / f) for f in files)}")
        if len(files) == 1:
            print("(no plot: matplotlib is not installed; pip install 'archlab[plot]')")
    return 0
