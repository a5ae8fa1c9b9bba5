"""The recall probe's results in words and a plot: its recall with the spread over seeds,
how many runs it stands for, its learning rates and seeds, the cells of a sweep report's
probe table, and the training curves (`archlab probe`, `archlab sweep --probe`). The plot
needs matplotlib (`pip install "archlab[plot]"`)."""

from __future__ import annotations

from pathlib import Path

from archlab.report.plots import _pyplot, _save


def probe_cells(r: dict) -> list[str]:
    """A probe result's cells in sweep.md's table: copy, recall, best lr, runs, seconds."""
    if r.get("status") == "error":
        return ["-", f"error: {r.get('error')}", "-", "-", "-"]
    best = r.get("best_lr")
    return [r.get("model", "-"), recall_text(r), "-" if best is None else f"{best:g}",
            runs_text(r), f"{r.get('seconds', 0):.0f}"]  # fmt: skip


GRID_TEXT = (
    "Recall is the best learning rate's mean accuracy over the seeds (as Zoology reports "
    "the best learning rate), with the lowest and highest seed's in brackets; runs: how "
    "many trained (ended / in all where some failed); seconds: their training added up."
)


def recall_text(r: dict) -> str:
    """A probe result's recall: '99.1%'; with several seeds at the best learning rate
    their mean and range, '99.1% (97.0-99.9)'; '-' without one."""
    if r.get("accuracy") is None:
        return "-"
    text = f"{100 * r['accuracy']:.1f}%"
    if (r.get("best_lr_runs") or 1) > 1:
        text += f" ({100 * r['accuracy_min']:.1f}-{100 * r['accuracy_max']:.1f})"
    return text


def runs_text(r: dict) -> str:
    """How many runs a probe result stands for: '6', or '5/6' where one failed."""
    count = r.get("run_count") or 1
    failed = r.get("runs_failed") or 0
    return f"{count - failed}/{count}" if failed else str(count)


def grid_text(settings: dict) -> str:
    """The probe's learning rates, batch and seeds from its settings (`lrs`, `seeds`):
    'lr 0.001, batch 64, seed 0' or 'lrs 0.001, 0.003, batch 64, seeds 0, 1, 2'; with
    `init` torch, also 'Linear weights drawn by PyTorch's default rule'."""
    lrs, seeds = settings["lrs"], settings["seeds"]
    text = (
        f"lr{'s' if len(lrs) > 1 else ''} {', '.join(f'{v:g}' for v in lrs)}, batch "
        f"{settings['batch']}, seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(str(v) for v in seeds)}"
    )
    if settings.get("init") == "torch":
        text += ", Linear weights drawn by PyTorch's default rule (init torch)"
    return text


def probe_plot(curves: list[tuple[str, dict]], out: Path, stem: str = "probe") -> str | None:
    """The probe's training curves: training loss (a 20-step moving average) and held-out
    accuracy against the step, one line per spec or point (of several runs, the best
    one's), chance dashed. The PNG's name, or None without matplotlib."""
    plt = _pyplot()
    if plt is None or not curves:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    for k, (name, r) in enumerate(curves):
        loss, color = r["loss"], f"C{k % 10}"
        if (r.get("run_count") or 1) > 1:  # the curves are the best run's
            name = f"{name} (lr {r['best_lr']:g}, seed {r['best_seed']})"
        avg = [sum(loss[max(0, i - 19) : i + 1]) / min(i + 1, 20) for i in range(len(loss))]
        left.plot(range(1, len(avg) + 1), avg, color=color, lw=1.2, label=name)
        steps, acc = [e["step"] for e in r["eval"]], [e["accuracy"] for e in r["eval"]]
        right.plot(steps, acc, "o-", color=color, ms=3, lw=1.2, label=name)
    chance = curves[0][1]["chance"]
    right.axhline(chance, color="0.4", ls="--", lw=0.8)
    right.text(0, chance, " chance (1 / pairs)", fontsize=7, va="bottom", color="0.3")
    t = curves[0][1]["mqar"]
    left.set(xlabel="step", ylabel="training loss (query positions)", yscale="log")
    task = f"V={t['vocab']}, {t['pairs']} pairs, T={t['seq']}"
    left.set_title(f"MQAR training loss (20-step average); {task}", fontsize=9)
    right.set(xlabel="step", ylabel="held-out recall accuracy", ylim=(0, 1.02))
    right.set_title("held-out accuracy on the query positions", fontsize=9)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    right.legend(fontsize=7, loc="lower right")
    _save(fig, out, stem, plt)
    return f"{stem}.png"
