"""The experts of `moe` over tokens sorted by expert: the float32-safe loop (the
`reference` backend) and grouped GEMMs (`torch._grouped_mm`, the `grouped` backend). Both
take the stacked weights in nn.Linear's layout, `up` [E, n_in * F, D] (the gate's F
columns first when gated) and `down` [E, D, F], and the tokens' rows in expert order with
`counts` [E] rows per expert.

`sort_by_expert` makes that order, and `expert_counts` the counts, in fixed shapes and
without a host sync (no `bincount`, whose output size depends on the data, no boolean
indexing): the router, the sort, the capacity cut and the grouped GEMMs trace into one
graph (torch.compile, CUDA graphs). Only the loop reads the counts on the host (its
split sizes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

GROUP_ALIGN = 8  # rows of each expert's group padded to a multiple of this (grouped GEMMs)


def expert_counts(expert_M: torch.Tensor, num_experts: int) -> torch.Tensor:
    """How many of the rows `expert_M` [M] (int64) picked each expert: [E] int64, the same
    counts as `torch.bincount(expert_M, minlength=E)` in a size fixed without reading the
    data (a scatter-add of ones)."""
    counts = torch.zeros(num_experts, dtype=torch.long, device=expert_M.device)
    return counts.scatter_add_(0, expert_M, torch.ones_like(expert_M))


def sort_by_expert(
    expert_M: torch.Tensor, weight_M: torch.Tensor, num_experts: int, capacity: int | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows (token, choice pairs) in expert order, stable (token order within an
    expert) -> (order [R] into the M rows, each row's expert [R], weight [R], counts [E]).

    Dropless (`capacity` None): R = M. With `capacity` C an expert keeps its first C rows:
    the kept rows come first (still in expert order), then dropped rows fill the fixed
    R = min(M, E * C) rows, counted in the last expert's group with weight 0 (they add
    0 to the output and carry no gradient), so that no shape depends on the data."""
    E = num_experts
    counts = expert_counts(expert_M, E)
    order = expert_M.argsort(stable=True)
    expert, weight = expert_M[order], weight_M[order]
    if capacity is None:
        return order, expert, weight, counts
    M = expert_M.shape[0]
    R = min(M, E * capacity)
    rank = torch.arange(M, device=expert.device) - (counts.cumsum(0) - counts)[expert]
    kept = rank < capacity
    first = (~kept).to(torch.uint8).argsort(stable=True)[:R]  # the kept rows first
    order, expert, weight, kept = order[first], expert[first], weight[first], kept[first]
    counts = counts.clamp(max=capacity)
    counts = torch.cat([counts[:-1], counts[-1:] + (R - counts.sum())])  # + the fillers
    expert = torch.where(kept, expert, E - 1)
    return order, expert, torch.where(kept, weight, 0.0), counts


def activate(h: torch.Tensor, activation: str) -> torch.Tensor:
    """The expert's activation of h [.., n_in * F] (gated: the gate's F columns first)."""
    if activation in ("swiglu", "geglu"):
        gate, up = h.chunk(2, dim=-1)
        return (F.silu(gate) if activation == "swiglu" else F.gelu(gate)) * up
    if activation == "gelu":
        return F.gelu(h)
    if activation == "silu":
        return F.silu(h)
    return F.relu(h).square()


def loop_experts(
    xs_MD: torch.Tensor,
    counts_E: torch.Tensor,
    up_EHD: torch.Tensor,
    down_EDF: torch.Tensor,
    activation: str,
) -> torch.Tensor:
    """One matmul pair per expert over its rows (every expert runs, an empty one too, so
    that each weight has a gradient). Returns [M, D] in the rows' order. The split reads
    `counts_E` on the host: a device sync, and a graph break under torch.compile (this is
    the readable ground truth; `grouped_experts` has neither)."""
    outs = []
    for e, chunk in enumerate(xs_MD.split(counts_E.tolist())):
        h = activate(chunk @ up_EHD[e].T, activation)
        outs.append(h @ down_EDF[e].T)
    return torch.cat(outs)


def grouped_experts(
    xs_MD: torch.Tensor,
    counts_E: torch.Tensor,
    sorted_expert_M: torch.Tensor,
    up_EHD: torch.Tensor,
    down_EDF: torch.Tensor,
    activation: str,
) -> torch.Tensor:
    """The experts as two grouped GEMMs. Each expert's rows are padded with zero rows to a
    multiple of GROUP_ALIGN into a buffer of a size known without a device sync
    (M + (GROUP_ALIGN - 1) * E rows; the last group takes what is left), so the call is
    free of host syncs. `sorted_expert_M` is each row's expert. Returns [M, D]."""
    M, D = xs_MD.shape
    E = counts_E.shape[0]
    rows = M + (GROUP_ALIGN - 1) * E
    padded = (counts_E + GROUP_ALIGN - 1) // GROUP_ALIGN * GROUP_ALIGN
    padded = torch.cat([padded[:-1], (rows - padded[:-1].sum()).reshape(1)])
    ends = padded.cumsum(0)
    starts_padded, starts = ends - padded, counts_E.cumsum(0) - counts_E
    rank = torch.arange(M, device=xs_MD.device) - starts[sorted_expert_M]
    dest = starts_padded[sorted_expert_M] + rank
    xp = xs_MD.new_zeros(rows, D).index_copy(0, dest, xs_MD)
    offs = ends.to(torch.int32)
    h = activate(torch._grouped_mm(xp, up_EHD.transpose(-2, -1), offs=offs), activation)
    y = torch._grouped_mm(h, down_EDF.transpose(-2, -1), offs=offs)
    return y[dest]


def grouped_fits(x: torch.Tensor, d_model: int, hidden: int) -> bool:
    """Whether the grouped GEMMs take these tensors: bf16 on CUDA, rows of 16-byte
    multiples (d_model and hidden multiples of 8)."""
    return x.is_cuda and x.dtype == torch.bfloat16 and d_model % 8 == 0 and hidden % 8 == 0
