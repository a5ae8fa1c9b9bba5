"""What each rank runs in test_fsdp.py (a module of its own, so that the spawned ranks can
import it): one training step of a tiny hybrid sharded with FSDP2 over gloo, and on rank 0
the same step of the unsharded model on all ranks' data together."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

import torch
import torch.distributed as dist

WATCHDOG_S = 90.0


def forward_backward(model, ids, targets) -> torch.Tensor:
    """`train_step` up to its optimizer step: the loss, the gradients left in place."""
    import torch.nn.functional as F

    loss = F.cross_entropy(model(ids).flatten(0, 1), targets.flatten())
    loss.backward()
    return loss.detach()


def largest(xs, ys) -> float:
    """The largest absolute difference between two lists of tensors."""
    return max(float((x - y).abs().max()) for x, y in zip(xs, ys, strict=True))


def compare_with_unsharded(spec: str, lr: float, sharing: str) -> dict | None:
    """For a float32 run, a checkpointed float32 run and a bfloat16 mixed-precision run of
    `spec`, and float32 runs (with and without checkpointing) of `sharing`, a spec whose
    blocks share caches: the sharded loss (mean over ranks) and parameters after one AdamW
    step, beside the unsharded model's (rank 0 returns them; the other ranks None)."""
    import archlab
    from archlab.measure.distributed import build_sharded
    from archlab.measure.scale import with_dtype
    from archlab.model import build_model

    timer = threading.Timer(WATCHDOG_S, lambda: os._exit(124))  # never a hung test
    timer.daemon = True
    timer.start()
    torch.set_num_threads(1)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", timeout=timedelta(seconds=60))
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    plan, shared = archlab.compile(spec), archlab.compile(sharing)
    g = torch.Generator().manual_seed(123)
    vocab = min(plan.model.vocab_size, shared.model.vocab_size)
    ids, targets = (torch.randint(0, vocab, (2 * world, 16), generator=g) for _ in "ab")
    mine = slice(2 * rank, 2 * rank + 2)  # each rank its own two sequences
    out = {}
    for label, run_plan, checkpoint in (
        ("float32", plan, False),
        ("float32, checkpoint", plan, True),
        ("bfloat16", with_dtype(plan, "bfloat16"), False),
        ("sharing", shared, False),
        ("sharing, checkpoint", shared, True),
    ):
        model, _ = build_sharded(run_plan, torch.device("cpu"), mesh, checkpoint)
        opt = torch.optim.AdamW(model.parameters(), lr=lr)
        loss = forward_backward(model, ids[mine], targets[mine])
        grads = [p.grad.full_tensor() for p in model.parameters()]  # reduce-scattered, averaged
        opt.step()
        dist.all_reduce(loss)
        params = list(model.parameters())
        sharded = any(p.to_local().numel() < p.numel() for p in params)
        full = [p.detach().full_tensor() for p in params]  # a collective: every rank
        if rank == 0:
            torch.manual_seed(0)
            ref = build_model(run_plan, device="cpu", dtype=torch.float32)
            before = [p.detach().clone() for p in ref.parameters()]
            ref_opt = torch.optim.AdamW(ref.parameters(), lr=lr)
            ref_loss = forward_backward(ref, ids, targets)
            ref_grads = [p.grad.clone() for p in ref.parameters()]
            ref_opt.step()
            after = [p.detach() for p in ref.parameters()]
            out[label] = {
                "loss": float(loss) / world,
                "ref_loss": float(ref_loss),
                "grad_diff": largest(grads, ref_grads),
                "grad_scale": max(float(g.abs().max()) for g in ref_grads),
                "max_diff": largest(full, after),
                "max_update": largest(after, before),
                "sharded": sharded,
                "dtypes": sorted({str(p.dtype) for p in full}),
                "count": (len(full), len(after)),
            }
    dist.destroy_process_group()
    timer.cancel()
    return out if rank == 0 else None
