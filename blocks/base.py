"""What every block kind shares: the params base class, the cache, FLOP counts.

The contract of a block module `blocks/<kind>.py` (see docs/blocks.md):

- `KIND`, `SYMBOL`, `IS_MIXER`;
- `Params(BlockParams)` with `kind: Literal[KIND]`, defaults and range checks;
- `check(params, d_model) -> list[(field, message)]` for checks that need the model;
- `Block(params, model)`: an `nn.Module` with `forward(x_BTD)`, `prefill(x_BTD, cache)`,
  `step(x_B1D, cache)` and `allocate_cache(batch, max_len, device, dtype)`; it is the
  mixer alone (the pre-norm and residual are added by the model);
- pure functions, no module needed: `param_count(params, d_model)`,
  `flops(params, d_model, batch, seq_len) -> FlopCount` (forward),
  `decode_flops(params, d_model, batch, t) -> FlopCount` (one new token at position t,
  i.e. with t tokens already in the cache), `cache_bytes(params, d_model, batch, seq_len,
  dtype_bytes)`;
- `EXAMPLES`: a few small param dicts that the registry contract tests build.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict

Backend = Literal["auto", "reference", "sdpa", "flex", "triton"]


class BlockParams(BaseModel):
    """Base of every block's `Params`: unknown fields are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class BackendUnavailable(RuntimeError):
    """A requested backend cannot run here (wrong device, missing package)."""


@dataclass(frozen=True)
class FlopCount:
    """Forward FLOPs (2 per multiply-add): matmul-type work and the rest, separately."""

    matmul: int = 0
    other: int = 0

    def __add__(self, o: FlopCount) -> FlopCount:
        return FlopCount(self.matmul + o.matmul, self.other + o.other)

    def scale(self, k: int) -> FlopCount:
        return FlopCount(self.matmul * k, self.other * k)

    @property
    def total(self) -> int:
        return self.matmul + self.other


@dataclass
class LayerCache:
    """The decode state of one block: named tensors plus the number of tokens seen."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    length: int = 0
    children: list[LayerCache] = field(default_factory=list)  # a parallel block's branches
    source: LayerCache | None = None  # the cache this block reads (`share_cache`), not owns

    def set_length(self, length: int) -> None:
        """Mark this cache, and its branches', as holding `length` tokens."""
        self.length = length
        for child in self.children:
            child.set_length(length)

    def nbytes(self) -> int:
        """Bytes this block owns (a shared source's tensors are not counted)."""
        own = sum(t.numel() * t.element_size() for t in self.tensors.values())
        return own + sum(c.nbytes() for c in self.children)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self.tensors[name]


def check_backend(backend: str, kind: str, available: tuple[str, ...]) -> list[tuple[str, str]]:
    """The `backend` error of a kind that does not have the requested backend (else [])."""
    if backend in ("auto", *available):
        return []
    choices = ", ".join(("auto", *available))
    return [("backend", f"{kind} has no backend {backend!r} (choose from {choices})")]


def linear_flops(tokens: int, d_in: int, d_out: int) -> int:
    """FLOPs of a dense projection over `tokens` rows."""
    return 2 * tokens * d_in * d_out


def resolve_backend(requested: str, device: torch.device, available: dict[str, bool]) -> str:
    """Pick the backend to run. `available` maps backend -> can it run on this device,
    in order of preference for `auto`. A requested backend that cannot run raises."""
    if requested == "auto":
        for name, ok in available.items():
            if ok:
                return name
        raise BackendUnavailable(f"no backend can run on {device}")
    if requested not in available:
        raise BackendUnavailable(
            f"backend {requested!r} does not exist for this block "
            f"(choose from {', '.join(['auto', *available])})"
        )
    if not available[requested]:
        raise BackendUnavailable(f"backend {requested!r} cannot run on {device}")
    return requested
