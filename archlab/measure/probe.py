"""The recall probe: how well a spec's architecture recalls, by training a small copy of
it on multi-query associative recall (MQAR, `archlab.measure.mqar`) and measuring its
accuracy on held-out sequences.

The copy is the spec scaled to the probe's width (`scale.scale_plan` with a `Scale` of
the probe's d_model and vocabulary: head sizes kept, the first units of the stack's
repeating unit and every patched unit, chunk sizes and windows unchanged), with the
probe's vocabulary and sequence length. It is trained from a seeded initialisation for a
fixed number of AdamW steps (betas 0.9/0.98, weight decay, gradients clipped at norm 1,
a linear warm-up over the first `warmup` of the steps, then a constant rate) on fresh
sequences every step, drawn on the probe's device from a generator seeded with `2 seed`;
the held-out sequences come from a generator seeded with `2 seed + 1`, so that they are
never the training stream. The loss is cross-entropy on the query positions only. Every block
runs the backend it picks for the device (the fast kernels on CUDA).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from archlab.cost.analytic import param_count
from archlab.lang.plan import Plan
from archlab.measure.mqar import IGNORE, MQAR, generator, make_batch
from archlab.measure.scale import Scale, scale_plan
from archlab.model import build_model

SCHEMA = "archlab.probe/1"


INITS = ("blocks", "torch")


@dataclass(frozen=True)
class ProbeSettings:
    """The task, the copy's width and depth (`blocks`: Scale.min_blocks) and training."""

    task: MQAR = field(default_factory=MQAR)
    d_model: int = 64
    blocks: int = 4
    steps: int = 600
    batch: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: float = 0.1  # share of the steps with a linear warm-up
    eval_sequences: int = 512
    eval_every: int = 0  # held-out accuracy every N steps (0: 10 times in the run)
    seed: int = 0
    dtype: str = "float32"  # "bfloat16": autocast on CUDA, float32 weights
    init: str = "blocks"  # "blocks": as built; "torch": every Linear weight re-drawn alike

    def problems(self) -> list[str]:
        """Why these settings cannot run (empty when they can)."""
        out = list(self.task.problems())
        for name in ("d_model", "steps", "batch", "eval_sequences"):
            if getattr(self, name) < 1:
                out.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        if self.blocks < 0 or self.eval_every < 0:
            out.append("blocks and eval_every must be >= 0")
        if not (self.lr > 0 and self.weight_decay >= 0 and 0 <= self.warmup < 1):
            out.append("lr must be > 0, weight_decay >= 0 and 0 <= warmup < 1")
        if self.dtype not in ("float32", "bfloat16"):
            out.append(f"dtype is float32 or bfloat16 (got {self.dtype!r})")
        if self.init not in INITS:
            out.append(f"init is one of {', '.join(INITS)} (got {self.init!r})")
        return out

    def to_dict(self) -> dict:
        return asdict(self)


# Small enough for a CPU in about a minute per spec; the attention spec learns these.
CPU_PROBE = ProbeSettings(MQAR(vocab=64, pairs=4, seq=32), d_model=64, steps=600, batch=64)
# Zoology's default vocabulary, 16 pairs in 256 tokens (its Figure 2 spans 64-512 tokens
# and 4-64 pairs); not yet run.
CUDA_PROBE = ProbeSettings(
    MQAR(vocab=8192, pairs=16, seq=256),
    d_model=128,
    steps=4000,
    batch=128,
    eval_sequences=2048,
)


def probe_plan(plan: Plan, settings: ProbeSettings) -> tuple[Plan, str]:
    """The copy the probe trains: `plan` scaled to the probe's d_model (head sizes kept),
    with the probe's vocabulary and sequence length, in float32; and its description."""
    task = settings.task
    scaled, text = scale_plan(plan, Scale(settings.d_model, task.vocab, settings.blocks), "float32")
    model = scaled.model.model_copy(update={"vocab_size": task.vocab, "max_seq_len": task.seq})
    text = re.sub(r"vocab [0-9]+", f"vocab {task.vocab}", text)
    return dataclasses.replace(scaled, model=model), text


def reinit_linear_weights(model: torch.nn.Module) -> int:
    """Re-draw the weight of every nn.Linear in `model` with PyTorch's default rule
    (Kaiming-uniform, a = sqrt(5): std 1 / sqrt(3 fan_in)), the same for every block kind;
    biases, gate biases, decays, convolutions, norms and embeddings stay as built (the
    probe's `init: torch`). The blocks' own initialisations differ (attention, mlp, mla,
    gla, gated_deltanet: N(0, 0.02), the scale of a model thousands wide; rat, rnn:
    PyTorch's default), and at the probe's width the fixed 0.02 makes attention's logits
    at the start 6-14x smaller than PyTorch's default would. Measured on the CPU (one
    seed each), it cuts both ways: at d_model 64, 16 pairs in 128 tokens, vocabulary 512,
    attention's copy reached 5.3% after 2000 steps as built and 89.2% after 1500 steps
    with this rule, RAT at chunk 1 99.6% after 2000 steps as built and 6.7% after 1500
    with it; at the CPU defaults (4 pairs in 32 tokens, vocabulary 64, 600 steps) the tiny
    attention spec reached 97% as built and 27% with it. Returns how many weights were
    re-drawn."""
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            count += 1
    return count


def _rate(step: int, settings: ProbeSettings) -> float:
    """The learning-rate factor at `step`: linear warm-up, then constant."""
    warm = math.ceil(settings.warmup * settings.steps)
    return min(1.0, (step + 1) / warm) if warm else 1.0


def query_logits(model, x_BT, labels_BT, pairs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 logits [B, pairs, V], labels [B, pairs]) at the query positions only: each
    sequence has `pairs` of them (the labels that are not IGNORE). The LM head and the
    loss then cost pairs / T of what they cost over every position, the same loss."""
    where_BP = (labels_BT != IGNORE).float().topk(pairs, dim=1).indices
    hidden_BTD = model.hidden(x_BT)
    picked_BPD = hidden_BTD.gather(1, where_BP[..., None].expand(-1, -1, hidden_BTD.shape[-1]))
    return model.head(picked_BPD).float(), labels_BT.gather(1, where_BP)


@torch.no_grad()
def evaluate(
    model, inputs, labels, pairs: int, batch: int, device, autocast
) -> tuple[float, float]:
    """(recall accuracy, mean loss) on the query positions of held-out sequences."""
    was = model.training
    model.eval()
    right = total = 0
    loss_sum = 0.0
    for i in range(0, inputs.shape[0], batch):
        x = inputs[i : i + batch].to(device)
        y = labels[i : i + batch].to(device)
        with autocast():
            logits, y = query_logits(model, x, y, pairs)
        right += (logits.argmax(-1) == y).sum().item()
        total += y.numel()
        loss_sum += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
    model.train(was)
    return right / max(1, total), loss_sum / max(1, total)


def run_probe(
    plan: Plan,
    settings: ProbeSettings,
    device: str | torch.device = "cpu",
    on_step: Callable[[int, int, float | None], None] | None = None,
) -> dict:
    """Train the probe's copy of `plan` and measure its recall. `on_step(done, total,
    loss or None)` is called after every step (the loss only where it was read, at each
    held-out evaluation). Returns the probe's result (schema `archlab.probe/1`):
    `accuracy` (held-out, on the query positions), `chance` (1 / pairs: guessing among
    the sequence's values), `loss` (training loss of every step), `eval` (held-out
    accuracy and loss during training), the copy (`model`, `params`), timing."""
    problems = settings.problems()
    if problems:
        raise ValueError("; ".join(problems))
    device = torch.device(device)
    task = settings.task
    small, text = probe_plan(plan, settings)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        model = build_model(small, device=device, dtype="float32")
        if settings.init == "torch":
            reinit_linear_weights(model)
    use_amp = settings.dtype == "bfloat16" and device.type == "cuda"

    def autocast():
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=settings.lr, betas=(0.9, 0.98), weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _rate(s, settings))
    train_gen = generator(2 * settings.seed, device)
    eval_gen = generator(2 * settings.seed + 1, device)
    held_x, held_y = make_batch(task, settings.eval_sequences, eval_gen)
    every = settings.eval_every or max(1, settings.steps // 10)
    losses: list[torch.Tensor] = []
    history = []
    start = time.perf_counter()
    model.train()
    for step in range(settings.steps):
        x, y = make_batch(task, settings.batch, train_gen)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            logits, y = query_logits(model, x, y, task.pairs)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        schedule.step()
        # a copy: keeping `loss.detach()` grew the process by about 13 MB a step on the CPU
        # (torch 2.13, d_model 64, 64 x 128 tokens, vocabulary 512), the copy does not
        losses.append(loss.detach().clone())
        shown = None
        if (step + 1) % every == 0 or step + 1 == settings.steps:
            accuracy, held_loss = evaluate(
                model, held_x, held_y, task.pairs, settings.batch, device, autocast
            )
            shown = losses[-1].item()
            history.append({"step": step + 1, "accuracy": accuracy, "loss": held_loss})
        if on_step is not None:
            on_step(step + 1, settings.steps, shown)
    seconds = time.perf_counter() - start
    final = history[-1]
    return {
        "schema": SCHEMA,
        "task": "mqar",
        "mqar": asdict(task),
        "settings": settings.to_dict(),
        "model": text,
        "params": param_count(small),
        "device": str(device),
        "backends": {
            b.kind: getattr(m.mixer, "backend", None) or "-"
            for b, m in zip(small.order(), model.blocks, strict=True)
        },
        "accuracy": final["accuracy"],
        "held_out_loss": final["loss"],
        "chance": task.chance,
        "vocab_chance": task.vocab_chance,
        "steps": settings.steps,
        "seconds": seconds,
        "loss": [float(v) for v in torch.stack(losses).cpu().tolist()],
        "eval": history,
    }
