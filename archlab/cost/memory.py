"""An estimate of training memory: weights, gradients, optimizer state and activations,
for one process or per GPU when sharded with FSDP2.

This is an estimate, not a measurement (docs/cost.md, "Training memory"). Assumptions:
- weights and gradients in the model dtype; fp32 master weights when that dtype is not
  float32 (mixed precision as Megatron-LM / DeepSpeed do it); AdamW's two moments in fp32;
- activation checkpointing off: every tensor that backward needs is kept, in the model
  dtype, except the float32 tensors named below; with `checkpoint` (one checkpoint per
  residual block): every block's input, plus the full activations of one block (the
  largest) while it is recomputed;
- fused attention (flash-attention style): per head only a float32 log-sum-exp per token
  is kept, never the T x T (or T x chunks) score matrix;
- the loss keeps the logits in the model dtype and their float32 softmax;
- sharded over `shards` GPUs (FSDP2, one unit per residual block plus the embedding and
  the head): weights, gradients, master weights and AdamW states 1/shards each, plus the
  all-gathered parameters of the largest unit (model dtype) and its unsharded gradients
  before reduce-scatter (fp32 when the model dtype is not float32: reduced in fp32);
  `batch` is per GPU and activations are not sharded;
- no allocator fragmentation, workspaces, communication buffers or CUDA context.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from archlab.blocks.base import ModelConfig
from archlab.blocks.registry import kind as block_kind
from archlab.cost.analytic import norm_params, param_count
from archlab.lang.plan import Plan

FP32 = 4
ADAMW_STATES = 2  # exp_avg and exp_avg_sq


@dataclass
class TrainMemory:
    """Estimated bytes for one training step at batch x seq_len, per GPU when `shards` > 1
    (see the module docstring)."""

    batch: int
    seq_len: int
    weights: int
    gradients: int
    master_weights: int
    optimizer: int
    activations: int
    assumptions: list[str]
    shards: int = 1
    checkpoint: bool = False
    gathered: int = 0  # the largest FSDP unit's all-gathered parameters (shards > 1)
    gathered_gradients: int = 0  # its unsharded gradients before reduce-scatter

    @property
    def total(self) -> int:
        return (
            self.weights
            + self.gradients
            + self.master_weights
            + self.optimizer
            + self.activations
            + self.gathered
            + self.gathered_gradients
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "estimate": True}


def _block_activations(plan: Plan, block, T: int) -> int:
    """Bytes one residual block keeps for backward, per sequence (norm input and output
    included)."""
    m: ModelConfig = plan.model
    elems, fp32 = block_kind(block.kind).activations(block.params, m.d_model, T)
    return (elems + 2 * T * m.d_model) * m.dtype_bytes + fp32


def activation_bytes(plan: Plan, batch: int, seq_len: int, checkpoint: bool = False) -> int:
    """Estimated activation bytes kept for backward. Without checkpointing, every block's;
    with it (one checkpoint per residual block), every block's input [T, d_model] plus the
    largest block's activations, recomputed one block at a time."""
    m: ModelConfig = plan.model
    d, T, V, dbytes = m.d_model, seq_len, m.vocab_size, m.dtype_bytes
    blocks = [_block_activations(plan, b, T) for b in plan.blocks]
    if checkpoint:
        per_seq = len(blocks) * T * d * dbytes + max(blocks, default=0)
    else:
        per_seq = sum(blocks)
    per_seq += (2 * T * d + T * V) * dbytes + FP32 * T * V  # final norm, logits, softmax
    return batch * per_seq


def fsdp_units(plan: Plan) -> list[int]:
    """Parameters of each FSDP2 unit: every residual block (its norm included), the
    embedding, and the head with the final norm (one unit with the embedding when tied)."""
    m = plan.model
    blocks = [
        norm_params(m) + block_kind(b.kind).param_count(b.params, m.d_model) for b in plan.blocks
    ]
    table = m.vocab_size * m.d_model
    head = [table + norm_params(m)] if m.tie_embeddings else [table, table + norm_params(m)]
    return blocks + head


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def train_memory(
    plan: Plan,
    batch: int = 1,
    seq_len: int | None = None,
    master_weights: bool | None = None,
    shards: int = 1,
    checkpoint: bool = False,
) -> TrainMemory:
    """Estimate training memory at batch x seq_len (seq_len defaults to max_seq_len), per
    GPU when sharded over `shards` GPUs with FSDP2 (`batch` is then per GPU).
    `master_weights` (default: dtype is not float32) adds an fp32 copy of the weights;
    `checkpoint`: activation checkpointing of every residual block."""
    m = plan.model
    T = m.max_seq_len if seq_len is None else seq_len
    if batch < 1 or T < 1:
        raise ValueError(f"batch and seq_len must be >= 1 (got {batch}, {T})")
    if shards < 1:
        raise ValueError(f"shards must be >= 1 (got {shards})")
    n, dbytes = param_count(plan), m.dtype_bytes
    master = (m.dtype != "float32") if master_weights is None else master_weights
    assumptions = [
        "estimate, not a measurement",
        f"weights and gradients in {m.dtype}",
        "fp32 master weights" if master else "no fp32 master weights",
        "AdamW moments in fp32",
        (
            "activation checkpointing per residual block: every block's input kept, the "
            "largest block's activations recomputed one block at a time"
            if checkpoint
            else "activation checkpointing off"
        )
        + "; fused attention (no T x T scores kept)",
        "logits kept in the model dtype plus their fp32 softmax",
    ]
    gathered = gathered_grads = 0
    if shards > 1:
        largest = max(fsdp_units(plan))
        grad_bytes = FP32 if master else dbytes
        gathered, gathered_grads = largest * dbytes, largest * grad_bytes
        assumptions += [
            f"FSDP2 over {shards} GPUs, per GPU: weights, gradients, master weights and AdamW "
            f"states 1/{shards} each (FSDP2 keeps the shards in fp32 when they are the master "
            "weights: the same bytes)",
            f"plus the largest unit's all-gathered parameters ({largest:,}, in {m.dtype}) and "
            f"its unsharded gradients before reduce-scatter (in "
            f"{'float32' if master else m.dtype}); the next unit's prefetch not counted",
            "batch per GPU; activations not sharded",
        ]
    assumptions.append("no fragmentation, workspaces, communication buffers or CUDA context")
    return TrainMemory(
        batch,
        T,
        _ceil_div(n * dbytes, shards),
        _ceil_div(n * dbytes, shards),
        _ceil_div(n * FP32, shards) if master else 0,
        _ceil_div(ADAMW_STATES * FP32 * n, shards),
        activation_bytes(plan, batch, T, checkpoint),
        assumptions,
        shards,
        checkpoint,
        gathered,
        gathered_grads,
    )
