"""The rat peer: the RAT paper's published layer, imported from a checkout of
github.com/CLAIRE-Labo/RAT (`published_rat`, never copied into this project, patched at
import for torch 2.11's FlexAttention), run as its own benchmark runs it: float32 weights
under bf16 autocast, the layer under torch.compile."""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable

import torch
from torch import nn

from .common import PeerUnavailable, VariantPeer, _copy, _copy_named, _wrap
from .run_setup import Setup

_CHUNK_MASKS: dict[int, Callable] = {}


def _chunk_mask(chunk_size: int) -> Callable:
    """The published layer's chunk-causal mask_mod as a plain function (one per chunk size,
    made outside any compiled region: the patched property only looks it up)."""
    if chunk_size not in _CHUNK_MASKS:

        def block_causal_mask(b, h, q_idx, kv_idx):
            return q_idx // chunk_size > kv_idx

        _CHUNK_MASKS[chunk_size] = block_causal_mask
    return _CHUNK_MASKS[chunk_size]


def _stub_config_packages() -> list[str]:
    """The RAT repo's package `src.model` imports `src/utils/config.py`, which imports hydra
    and omegaconf for its config instantiation; the layer itself never calls them. Where
    they are missing (the GPU image has neither), empty stand-ins are registered so that the
    import succeeds. Returns the names stubbed."""
    import types

    stubbed = []
    for name in ("hydra", "omegaconf"):
        if importlib.util.find_spec(name) is None and name not in sys.modules:
            module = types.ModuleType(name)
            module.__doc__ = "stand-in registered by benchmarks/peers.py (never called)"
            if name == "omegaconf":
                module.ListConfig = type("ListConfig", (list,), {})
                module.DictConfig = type("DictConfig", (dict,), {})
            sys.modules[name] = module
            stubbed.append(name)
    return stubbed


@functools.cache
def published_rat(repo: str, require_cuda: bool = True) -> dict:
    """The RAT paper's layer, its InterRoPE and its cache, imported from a checkout of
    github.com/CLAIRE-Labo/RAT at `repo` (nothing of it is copied into this project).

    Patches, applied here at import and listed under "patches":
    - the layer hands `create_block_mask` its bound method `self.block_causal_mask`; torch
      2.11's FlexAttention wants a plain function as mask_mod, so the attribute becomes a
      property returning a plain function of the same maths (q_idx // chunk_size > kv_idx),
      one per chunk size;
    - missing hydra / omegaconf get empty stand-ins (`_stub_config_packages`)."""
    if not os.path.isdir(os.path.join(repo, "src", "model")):
        raise PeerUnavailable(f"not available: no RAT checkout at {repo!r} (--rat-repo)")
    if require_cuda and not torch.cuda.is_available():
        raise PeerUnavailable("not available: the published RAT layer runs on CUDA only")
    repo = os.path.abspath(repo)
    if repo not in sys.path:
        sys.path.insert(0, repo)
    patches = [f"stand-in module for {n} (imported, never used)" for n in _stub_config_packages()]
    importlib.import_module("src.model")  # registers the norms the layer looks up
    rat_mod = importlib.import_module("src.model.backbone.rat.rat")
    pe = importlib.import_module("src.model.embedding.pe")
    cache = importlib.import_module("src.model.backbone.cache")
    RAT = rat_mod.RAT
    if not isinstance(RAT.__dict__.get("block_causal_mask"), property):
        RAT.block_causal_mask = property(lambda self: _chunk_mask(self.chunk_size))
    patches.append("RAT.block_causal_mask: a plain function as flex mask_mod (torch 2.11)")
    return {
        "RAT": RAT,
        "InterRoPE": pe.InterRoPE,
        "RATCache": cache.RATCache,
        "module": rat_mod,
        "patches": patches,
    }


class PublishedRATPeer(VariantPeer):
    """The published layer: x + out_proj(sigmoid(z) * RAT(rmsnorm(x))) (its own norm and
    residual), float32 weights under bf16 autocast, compiled as its benchmark compiles it."""

    def __init__(self, setup: Setup, repo: str | None) -> None:
        super().__init__()
        if not repo:
            raise PeerUnavailable("not available: no --rat-repo given")
        self.m = published_rat(repo)
        _chunk_mask(setup.chunk)  # the plain mask_mod the patched layer looks up
        d, H = setup.d_model, setup.heads
        self.chunk, self.heads, self.head_dim = setup.chunk, H, d // H
        self.d_model, self.dtype = d, setup.dtype
        self.layer = self.m["RAT"](
            d_model=d,
            num_head=H,
            chunk_size=self.chunk,
            ngroups=setup.qk_groups,
            layer_id=0,
            device="cuda",
            dtype=torch.float32,
        )
        self._ropes: dict = {}
        variants = ["torch.compile(layer), static shapes (as published)", "eager layer"]
        if setup.compile == "none":
            variants = ["eager layer"]
        self.use_variants(setup.compile, variants)

    @property
    def impl(self) -> str:
        return f"RAT paper's layer (CLAIRE-Labo/RAT), {self.variant_name}"

    def _build(self) -> None:
        eager = self.variant_name == "eager layer"
        self._fn = self.layer if eager else torch.compile(self.layer, dynamic=False)

    def _rope_kwargs(self, start: int, stop: int) -> dict:
        """The layer's RoPE arguments from its InterRoPE (theta 10000), made once per
        (start, stop) as the published benchmark makes them once, outside its timing."""
        key = (start, stop)
        if key not in self._ropes:
            rope = self.m["InterRoPE"](
                dim=self.head_dim,
                max_num_chunk=-(-stop // self.chunk),
                chunk_size=self.chunk,
                base=10000,
                device="cuda",
            )
            make = rope.step if stop - start == 1 and start else rope
            self._ropes[key] = make(start, stop, "cuda", self.dtype)[1]
        return self._ropes[key]

    def _autocast(self, cache_enabled: bool = True):
        return torch.autocast("cuda", dtype=self.dtype, cache_enabled=cache_enabled)

    def forward(self, x):
        kw = self._rope_kwargs(0, x.shape[1])
        with self._autocast():
            return self._fn(x, cache=None, **kw)

    def allocate_cache(self, batch: int, max_len: int):
        cache = self.m["RATCache"](
            batch,
            -(-max_len // self.chunk),
            self.chunk,
            self.heads,
            self.head_dim,
            self.d_model,
            1,
            dtype=self.dtype,
            device="cuda",
        )
        for t in cache.cache[0]:
            t.zero_()  # the published cache is torch.empty; zeros, as archlab's
        return cache

    def prefill(self, x, cache):
        cache.reset_cache()
        kw = self._rope_kwargs(0, x.shape[1])
        with self._autocast():
            return self._fn(x, cache=cache, **kw)

    @torch.no_grad()
    def step(self, x_B1D, cache, pos):
        cache.set_seq(pos)
        kw = self._rope_kwargs(pos, pos + 1)
        with self._autocast(cache_enabled=False):  # captured in a CUDA graph
            return self.layer.step(x_B1D, cache=cache, **kw)


def load_rat(peer: PublishedRATPeer, block: nn.Module) -> None:
    """in_proj (z, v, g, q, k in the same order on both sides), gate_bias and out_proj from
    the mixer; the layer's input_norm from the archlab block's norm (both RMSNorm, eps 1e-6)."""
    mixer, norm = _wrap("rat", block)
    if norm is None:
        raise ValueError("the published layer holds its input norm: pass the archlab block")
    layer = peer.layer
    _copy_named(
        layer,
        mixer,
        {
            "in_proj.weight": "in_proj.weight",
            "gate_bias": "gate_bias",
            "out_proj.weight": "out_proj.weight",
        },
    )
    _copy(layer.input_norm.weight, norm.weight, "norm.weight")
    if abs(layer.input_norm.eps - norm.eps) > 1e-12:
        raise ValueError(f"norm eps differ: published {layer.input_norm.eps}, archlab {norm.eps}")
