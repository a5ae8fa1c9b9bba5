"""Sharded training measurements with torch.distributed and FSDP2 (docs/distributed.md):
the sharded model, its training step, the timing every rank follows and one case's row.

`archlab.measure.dist_worker.worker(job)` is what every rank runs, one process per rank
(one GPU each on CUDA, backend nccl; gloo on the CPU), started by torch's elastic launcher
(`elastic_launch` for `archlab profile --nproc N`, or torchrun). Nothing here starts
processes, builds process groups by hand or shards anything itself:
`torch.distributed.fsdp.fully_shard` shards the built model, one unit per residual block plus
the embedding and the head (the root unit keeps the final norm), with a
`MixedPrecisionPolicy` (compute in the spec's dtype, fp32 sharded master weights and fp32
reductions when that dtype is not float32), optionally activation checkpointing of every
residual block (`checkpoint_wrapper`), and AdamW over the sharded parameters.

Every rank must run the same steps (each one is a collective), so rank 0's clock decides,
by the rules of `profile.time_fn`, when warm-up and timing end, and broadcasts it. With more
than one rank, the same case then runs on rank 0 alone (FSDP2 over a 1-rank mesh: the same
recipe) for the scaling efficiency (`dist_worker`).
"""

from __future__ import annotations

import dataclasses
import time
import types
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F

from archlab.cost.analytic import spec_cost
from archlab.cost.memory import train_memory
from archlab.lang.plan import Plan
from archlab.measure.profile import _adamw, free_memory, synchronize
from archlab.measure.result import Result, Settings, Timing, judge_timing
from archlab.model import ArchModel, build_model


@dataclass
class DistJob:
    """What every rank needs: the plans as they run (scaled on the CPU, in the run dtype),
    the cases, how to time them, and the limits."""

    plans: list[Plan]
    scaled: list[str | None]
    seqs: list[int]
    batch: int | None
    tokens: int | None
    settings: Settings
    checkpoint: bool
    device_type: str  # "cuda" (one GPU per rank, nccl) or "cpu" (gloo)
    timeout_s: float  # the whole run
    pg_timeout_s: float  # one collective
    run_dir: str  # rank status files and rank 0's partial results
    baseline: bool = True  # with more than one rank, also the same case on one process
    threads: int | None = None  # CPU threads per rank (default: the cores / ranks)
    refresh_peaks: bool = False

    def batch_for(self, seq_len: int) -> int:
        return self.batch or (max(1, self.tokens // seq_len) if self.tokens else 1)

    def cases(self) -> list[tuple[int, int, int]]:
        """(plan index, batch per rank, T) of every case, in the order they run."""
        return [(i, self.batch_for(T), T) for i in range(len(self.plans)) for T in self.seqs]


# ---- the model, sharded ------------------------------------------------------------------


def precision(plan: Plan):
    """(dtype the weights are built and sharded in, FSDP2 MixedPrecisionPolicy): the
    spec's dtype for compute with fp32 master weights and fp32 reductions; a float32 spec
    runs in float32 throughout."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    compute = plan.model.torch_dtype
    if compute == torch.float32:
        return torch.float32, MixedPrecisionPolicy()
    # No casting of a unit's inputs: the stream is already in the compute dtype (the
    # embedding's output), and casting would copy the dict through which blocks share caches.
    return torch.float32, MixedPrecisionPolicy(
        param_dtype=compute, reduce_dtype=torch.float32, cast_forward_inputs=False
    )


class SharedKV:
    """What blocks hand their keys and values on through (`share_cache`), in place of the
    plain dict of `ArchModel.forward`: FSDP2 rebuilds every dict, list or tuple among a
    unit's inputs that holds a tensor needing a gradient, and a block must write into the
    very object that later blocks read. FSDP2 does not look inside this one."""

    def __init__(self):
        self._kv: dict = {}

    def __getitem__(self, key):
        return self._kv[key]

    def __setitem__(self, key, kv) -> None:
        self._kv[key] = kv


def _forward_sharing(self: ArchModel, input_ids: torch.Tensor) -> torch.Tensor:
    """`ArchModel.forward`, with the blocks' shared dict a `SharedKV`."""
    x, shared = self.embedding(input_ids), SharedKV()
    for block in self.blocks:
        x = block(x, shared)
    return self.head(x)


def shard_model(model: ArchModel, mesh, mp_policy, checkpoint: bool) -> ArchModel:
    """FSDP2 units: every residual block (checkpoint-wrapped first with `checkpoint`), the
    embedding and the LM head (one unit with the root when they are tied), then the root.
    A model whose blocks share caches runs `_forward_sharing` (see `SharedKV`), and a block
    whose cache later blocks read keeps its parameters gathered from its forward to its
    backward: what it hands on can hold one of them (RAT's gate bias), which a reshard
    would free under the readers."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
    from torch.distributed.fsdp import fully_shard

    for i, block in enumerate(model.blocks):
        exports = block.exports
        if checkpoint:
            block = model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)
        fully_shard(block, mesh=mesh, mp_policy=mp_policy, reshard_after_forward=not exports)
    if not model.plan.model.tie_embeddings:
        fully_shard(model.embedding, mesh=mesh, mp_policy=mp_policy)
        fully_shard(model.lm_head, mesh=mesh, mp_policy=mp_policy)
    fully_shard(model, mesh=mesh, mp_policy=mp_policy)
    if any(b.cache_reads() for b in model.plan.blocks):
        model.forward = types.MethodType(_forward_sharing, model)
    return model


def build_sharded(plan: Plan, device: torch.device, mesh, checkpoint: bool, seed: int = 0):
    """The plan's model, identical on every rank (same seed), sharded over `mesh`; returns
    (model, its backends by kind)."""
    weights, mp = precision(plan)
    torch.manual_seed(seed)
    model = build_model(plan, device=device, dtype=weights)
    by_kind: dict[str, set[str]] = {}
    for block, backend in zip(plan.order(), model.backends().values(), strict=False):
        if backend is not None:
            by_kind.setdefault(block.kind, set()).add(str(backend))
    return shard_model(model, mesh, mp, checkpoint), {
        k: "/".join(sorted(v)) for k, v in by_kind.items()
    }


def train_step(model, ids: torch.Tensor, targets: torch.Tensor, opt) -> torch.Tensor:
    """Forward, cross-entropy (plus the blocks' auxiliary losses, as `profile` adds them),
    backward (gradients reduce-scattered by FSDP2) and, with an optimizer, its step; returns
    the language-model loss (this rank's tokens)."""
    logits = model(ids)
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    aux = [
        m.aux_loss
        for m in model.modules()
        if isinstance(getattr(m, "aux_loss", None), torch.Tensor)
    ]
    (loss + sum(aux) if aux else loss).backward()
    if opt is not None:
        opt.step()
    model.zero_grad(set_to_none=True)
    return loss.detach()


# ---- timing that every rank follows --------------------------------------------------------


def timed_runs(
    fn: Callable[[], object], device: torch.device, settings: Settings, agree: Callable
) -> Timing:
    """`profile.time_fn`'s rules (warm-up within the budget, `repeats` runs, more while they
    spread, the time budget), where `agree(flag)` returns rank 0's decision to every rank."""
    budget, case = settings.max_time_s, time.perf_counter()
    for _ in range(settings.warmup):
        fn()
        synchronize(device)
        if agree(time.perf_counter() - case > budget):
            break
    samples: list[float] = []
    began, repeats = time.perf_counter(), max(1, settings.repeats)
    while True:
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t0)
        n = len(samples)
        least = min(3, repeats) if samples[0] <= budget else 1
        stop = (n >= least and time.perf_counter() - began >= budget) or (
            n >= repeats
            and (
                n < 3
                or n >= settings.max_runs
                or Timing.of(samples).spread <= settings.stable_spread
            )
        )
        if agree(stop):
            return Timing.of(samples)


def _agree_with_rank0(group) -> Callable[[bool], bool]:
    def agree(flag: bool) -> bool:
        t = torch.tensor([int(flag)])
        dist.broadcast(t, src=0, group=group)
        return bool(t.item())

    return agree


# ---- one case ----------------------------------------------------------------------------------


def run_case(plan: Plan, batch: int, seq_len: int, mesh, device: torch.device, job, group):
    """One sharded train case on every rank of `mesh`; returns this rank's figures
    {"timing", "peak_memory_bytes", "backends", "loss"}. `group`: the gloo group through
    which rank 0 decides the timing (None on a 1-rank mesh)."""
    free_memory(device)
    model, backends = build_sharded(plan, device, mesh, job.checkpoint)
    if device.type == "cuda":  # from here: the sharded model, not the full copy it came from
        torch.cuda.reset_peak_memory_stats(device)
    model.train()
    g = torch.Generator(device="cpu").manual_seed(1 + dist.get_rank())  # each rank its own data
    vocab = plan.model.vocab_size
    ids, targets = (torch.randint(0, vocab, (batch, seq_len), generator=g).to(device) for _ in "ab")
    opt = _adamw(model, device) if job.settings.optimizer else None
    losses = []

    def step() -> None:
        losses.append(train_step(model, ids, targets, opt))

    agree = _agree_with_rank0(group) if group is not None else (lambda flag: flag)
    timing = timed_runs(step, device, job.settings, agree)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    loss = float(losses[-1]) if losses else None
    return {"timing": timing, "peak_memory_bytes": peak, "backends": backends, "loss": loss}


def prediction(plan: Plan, batch: int, seq_len: int, nproc: int, job):
    """The cost model's per-GPU training memory of the case (`train_memory` sharded over
    `nproc`), without AdamW state when the step takes no optimizer step."""
    mem = train_memory(plan, batch, seq_len, shards=nproc, checkpoint=job.checkpoint)
    if job.settings.optimizer:
        return mem
    more = [*mem.assumptions, "no optimizer step: no AdamW state"]
    return dataclasses.replace(mem, optimizer=0, assumptions=more)


def failed_extra(plan: Plan, batch: int, seq_len: int, nproc: int, job) -> dict:
    """The `extra` of a case that failed: what it was, and the memory it was predicted to
    need (an OOM beside its prediction)."""
    mem = prediction(plan, batch, seq_len, nproc, job)
    return {
        "nproc": nproc,
        "checkpoint": job.checkpoint,
        "predicted_memory_bytes": mem.total,
        "prediction": mem.to_dict(),
        "scaling_efficiency": None,
    }


def case_result(plan: Plan, scaled, batch: int, seq_len: int, ranks: list[dict], job, peaks):
    """The row of a case from every rank's figures: time of the slowest rank, tokens/s in
    total and per GPU, TFLOP/s per GPU against the measured peak, per-rank peak memory and
    the cost model's prediction beside it."""
    n, backend = len(ranks), "nccl" if job.device_type == "cuda" else "gloo"
    slowest = max(ranks, key=lambda f: f["timing"].median_s)
    t = slowest["timing"].median_s
    flops = spec_cost(plan, batch, seq_len).train_flops  # one rank's step
    mem = prediction(plan, batch, seq_len, n, job)
    r = Result(
        plan.name,
        plan.file,
        f"model, {n} process{'es' if n > 1 else ''}",
        "train",
        batch,
        seq_len,
        plan.model.dtype,
        job.device_type,
        timing=slowest["timing"],
        scaled=scaled,
        backends=ranks[0]["backends"],
    )
    r.tokens_per_s, r.flops, r.tflops = n * batch * seq_len / t, flops, flops / t / 1e12
    if peaks and peaks.get("matmul_tflops"):
        r.flops_frac = r.tflops / peaks["matmul_tflops"]
    rank_peaks = [f["peak_memory_bytes"] for f in ranks]
    r.peak_memory_bytes = max(rank_peaks) if None not in rank_peaks else None
    r.extra = {
        "nproc": n,
        "backend": backend,
        "tokens_per_s_per_gpu": batch * seq_len / t,
        "tokens_per_s_total": n * batch * seq_len / t,
        "rank_median_s": [f["timing"].median_s for f in ranks],
        "rank_peak_memory_bytes": rank_peaks,
        "rank_loss": [f["loss"] for f in ranks],
        "predicted_memory_bytes": mem.total,
        "prediction": mem.to_dict(),
        "measured_over_predicted": (
            r.peak_memory_bytes / mem.total if r.peak_memory_bytes is not None else None
        ),
        "checkpoint": job.checkpoint,
        "scaling_efficiency": None,
    }
    _, mp = precision(plan)
    r.notes.append(
        f"FSDP2 over {n} rank{'s' if n > 1 else ''} ({backend}); compute in {plan.model.dtype}"
        + ("" if mp.param_dtype is None else ", fp32 master weights and reductions")
    )
    if job.checkpoint:
        r.notes.append("activation checkpointing of every residual block (recompute not in FLOPs)")
    if job.settings.optimizer:
        r.notes.append("includes an AdamW step")
    judge_timing(r, job.settings)
    return r
