"""The decode state of a built block (`LayerCache`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LayerCache:
    """The decode state of one block: named tensors plus the number of tokens seen."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    length: int = 0
    children: list[LayerCache] = field(default_factory=list)  # a parallel block's branches
    # the cache this block (or parallel branch) reads (`share_cache`), not owns: a block's
    # or, for a branch source, the `children` entry of the source branch
    source: LayerCache | None = None

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
