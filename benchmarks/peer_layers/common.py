"""What the peers share: `PeerUnavailable` (a peer that cannot run here), `compiled` (a
function under torch.compile, or as it is), `VariantPeer` (a peer tried in variants, the
next taken when one fails; `compiled_variants` lists those of a layer compiled whole) and
the copying of archlab's weights into a peer (`_wrap`, `_copy`, `_copy_named`)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


class PeerUnavailable(RuntimeError):
    """The peer cannot run here (missing package, no CUDA, no --rat-repo)."""


def compiled(fn: Callable, mode: str, dynamic: bool | None) -> Callable:
    """`fn` under torch.compile (`mode` inductor or eager), or `fn` itself (`none`)."""
    if mode == "none":
        return fn
    return torch.compile(fn, backend="inductor" if mode == "inductor" else "eager", dynamic=dynamic)


def _wrap(kind: str, block: nn.Module) -> tuple[nn.Module, nn.Module | None]:
    """(mixer, norm) of an archlab residual block, or (block, None) for a bare mixer."""
    mixer = getattr(block, "mixer", block)
    return mixer, getattr(block, "norm", None)


@torch.no_grad()
def _copy(dst: torch.Tensor, src: torch.Tensor, name: str) -> None:
    if dst.shape != src.shape:
        raise ValueError(f"{name}: peer shape {tuple(dst.shape)} != archlab {tuple(src.shape)}")
    dst.copy_(src.to(device=dst.device, dtype=dst.dtype))


def _copy_named(peer: nn.Module, mixer: nn.Module, names: dict[str, str]) -> None:
    """Copy archlab parameters (state_dict names) into the peer's (peer name -> archlab)."""
    src, dst = mixer.state_dict(), peer.state_dict()
    for peer_name, archlab_name in names.items():
        if archlab_name in src:
            _copy(dst[peer_name], src[archlab_name], archlab_name)
    missing = [a for a in names.values() if a not in src and not a.endswith(".bias")]
    if missing:
        raise ValueError(f"archlab block has no {missing}")
    unused = set(src) - set(names.values())
    if unused:
        raise ValueError(f"archlab parameters the peer does not model: {sorted(unused)}")


def compiled_variants(compile_mode: str, eager_fallback: bool = True) -> list[str]:
    """The variants of a peer compiled whole: dynamic shapes, then static ones, then
    (`eager_fallback`) eager; eager alone with --compile none."""
    if compile_mode == "none":
        return ["eager"]
    variants = ["compiled, dynamic shapes", "compiled, static shapes"]
    return [*variants, "eager"] if eager_fallback else variants


class VariantPeer(nn.Module):
    """A peer tried in its variants in order (compiled first, then plainer ones): `variants`
    names them, `variant` indexes the current one, `_build()` makes its callables and
    `next_variant()` moves to the next after a failure (False when none is left)."""

    def use_variants(self, compile_mode: str, variants: list[str]) -> None:
        """Start at the first of `variants`; `compile_mode` is the run's --compile."""
        self.compile = compile_mode
        self.variants = variants
        self.variant = 0
        self._build()

    @property
    def variant_name(self) -> str:
        return self.variants[self.variant]

    def next_variant(self) -> bool:
        if self.variant + 1 >= len(self.variants):
            return False
        self.variant += 1
        self._build()
        return True

    def _build(self) -> None:
        """Make the current variant's callables (nothing to make by default)."""

    def _compiled(self, fn: Callable) -> Callable:
        """`fn` as the current variant runs it: itself ("eager"), or under the run's
        --compile with dynamic shapes ("dynamic" in the name) or static ones."""
        name = self.variant_name
        return compiled(fn, "none" if name == "eager" else self.compile, "dynamic" in name)
