"""An estimate of training memory: weights, gradients, optimizer state and activations.

This is an estimate, not a measurement (docs/cost.md, "Training memory"). Assumptions:
- weights and gradients in the model dtype; fp32 master weights when that dtype is not
  float32 (mixed precision as Megatron-LM / DeepSpeed do it); AdamW's two moments in fp32;
- activation checkpointing off: every tensor that backward needs is kept, in the model
  dtype, except the float32 tensors named below;
- fused attention (flash-attention style): per head only a float32 log-sum-exp per token
  is kept, never the T x T (or T x chunks) score matrix;
- the loss keeps the logits in the model dtype and their float32 softmax;
- no allocator fragmentation, workspaces, communication buffers or CUDA context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from archlab.blocks.base import ModelConfig
from archlab.blocks.registry import kind as block_kind
from archlab.cost.analytic import param_count
from archlab.lang.plan import Plan

FP32 = 4
ADAMW_STATES = 2  # exp_avg and exp_avg_sq


@dataclass
class TrainMemory:
    """Estimated bytes for one training step at batch x seq_len (see the module docstring)."""

    batch: int
    seq_len: int
    weights: int
    gradients: int
    master_weights: int
    optimizer: int
    activations: int
    assumptions: list[str]

    @property
    def total(self) -> int:
        return (
            self.weights + self.gradients + self.master_weights + self.optimizer + self.activations
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "estimate": True}


def activation_bytes(plan: Plan, batch: int, seq_len: int) -> int:
    """Estimated activation bytes kept for backward (checkpointing off)."""
    m: ModelConfig = plan.model
    d, T, V, dbytes = m.d_model, seq_len, m.vocab_size, m.dtype_bytes
    per_seq = 0
    for b in plan.blocks:
        elems, fp32 = block_kind(b.kind).activations(b.params, d, T)
        per_seq += (elems + 2 * T * d) * dbytes + fp32  # + the norm's input and output
    per_seq += (2 * T * d + T * V) * dbytes + FP32 * T * V  # final norm, logits, softmax
    return batch * per_seq


def train_memory(
    plan: Plan, batch: int = 1, seq_len: int | None = None, master_weights: bool | None = None
) -> TrainMemory:
    """Estimate training memory at batch x seq_len (seq_len defaults to max_seq_len).
    `master_weights` (default: dtype is not float32) adds an fp32 copy of the weights."""
    m = plan.model
    T = m.max_seq_len if seq_len is None else seq_len
    if batch < 1 or T < 1:
        raise ValueError(f"batch and seq_len must be >= 1 (got {batch}, {T})")
    n, dbytes = param_count(plan), m.dtype_bytes
    master = (m.dtype != "float32") if master_weights is None else master_weights
    assumptions = [
        "estimate, not a measurement",
        f"weights and gradients in {m.dtype}",
        "fp32 master weights" if master else "no fp32 master weights",
        "AdamW moments in fp32",
        "activation checkpointing off; fused attention (no T x T scores kept)",
        "logits kept in the model dtype plus their fp32 softmax",
        "no fragmentation, workspaces or CUDA context",
    ]
    return TrainMemory(
        batch,
        T,
        n * dbytes,
        n * dbytes,
        n * FP32 if master else 0,
        ADAMW_STATES * FP32 * n,
        activation_bytes(plan, batch, T),
        assumptions,
    )
