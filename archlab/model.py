"""Plan -> nn.Module: `embedding -> pre-norm residual blocks -> final norm -> lm head`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
from torch import nn

from archlab.blocks.base import DTYPE_BYTES, ModelConfig
from archlab.blocks.cache import LayerCache
from archlab.blocks.registry import kind as block_kind
from archlab.lang.errors import ModelTooLarge
from archlab.lang.plan import Plan


def make_norm(model: ModelConfig) -> nn.Module:
    """The model's norm over d_model (RMSNorm, or LayerNorm with bias)."""
    if model.norm == "rmsnorm":
        return nn.RMSNorm(model.d_model, eps=model.norm_eps)
    return nn.LayerNorm(model.d_model, eps=model.norm_eps)


class ResidualBlock(nn.Module):
    """x + mixer(norm(x)), with the same wrapping for prefill and step.

    Cache sharing: a block whose keys/values later blocks read (`exports`: None for the
    mixer itself, j for branch j of a parallel mixer) hands them on through the `shared`
    dict ((block position, branch or None) -> what the mixer returned with return_kv); a
    reader (`reads`: reader -> the source's (position, branch or None)) takes its source's
    from there. A parallel mixer takes `shared_kv` and `return_kv` per branch."""

    def __init__(
        self,
        norm: nn.Module,
        mixer: nn.Module,
        index: int,
        exports=(),
        reads: dict | None = None,
    ):
        super().__init__()
        self.norm, self.mixer, self.index = norm, mixer, index
        self.exports: frozenset = frozenset(exports)
        if reads is None:  # a plain mixer: its own `share_cache`
            source = getattr(getattr(mixer, "params", None), "share_cache", None)
            reads = {} if source is None else {None: (source, None)}
        self.reads: dict = dict(reads)

    def _kwargs(self, shared: dict | None) -> dict:
        if None in self.reads:
            return {"shared_kv": shared[self.reads[None]]}
        if None in self.exports:
            return {"return_kv": True}
        out = {}
        if self.reads:
            out["shared_kv"] = {j: shared[ref] for j, ref in self.reads.items()}
        if self.exports:
            out["return_kv"] = self.exports
        return out

    def _keep(self, out, shared: dict | None) -> torch.Tensor:
        if not self.exports:
            return out
        out, kv = out
        if None in self.exports:
            shared[(self.index, None)] = kv
        else:
            for j in self.exports:
                shared[(self.index, j)] = kv[j]
        return out

    def forward(self, x_BTD: torch.Tensor, shared: dict | None = None) -> torch.Tensor:
        out = self.mixer(self.norm(x_BTD), **self._kwargs(shared))
        return x_BTD + self._keep(out, shared)

    def prefill(
        self, x_BTD: torch.Tensor, cache: LayerCache, shared: dict | None = None
    ) -> torch.Tensor:
        out = self.mixer.prefill(self.norm(x_BTD), cache, **self._kwargs(shared))
        return x_BTD + self._keep(out, shared)

    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        return x_B1D + self.mixer.step(self.norm(x_B1D), cache)


def cache_links(plan: Plan) -> tuple[dict[int, set], dict[int, dict]]:
    """Position in `plan.order()` -> what its block exports (None: the block itself; j: its
    branch j) and what it reads (reader -> the source's (position, branch or None))."""
    order = plan.order()
    position = {b.index: i for i, b in enumerate(order)}
    exports: dict[int, set] = {i: set() for i in range(len(order))}
    reads: dict[int, dict] = {i: {} for i in range(len(order))}
    for i, b in enumerate(order):
        for reader, (source, branch) in b.cache_reads().items():
            exports[position[source]].add(branch)
            reads[i][reader] = (position[source], branch)
    return exports, reads


@dataclass
class ModelCache:
    """The decode state of a whole model: one LayerCache per block."""

    layers: list[LayerCache] = field(default_factory=list)

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def nbytes(self) -> int:
        return sum(c.nbytes() for c in self.layers)


class ArchModel(nn.Module):
    """The model a spec describes. `forward(ids [B, T]) -> logits [B, T, vocab]`."""

    def __init__(self, plan: Plan, dtype: torch.dtype | None = None):
        """Weights are initialised in float32, then cast to `dtype` (when given) one block
        at a time, so that a large model never holds a whole float32 copy."""
        super().__init__()
        self.plan = plan
        m = plan.model

        def cast(module: nn.Module) -> nn.Module:
            return module if dtype is None else module.to(dtype=dtype)

        self.embedding = nn.Embedding(m.vocab_size, m.d_model)
        nn.init.normal_(self.embedding.weight, std=0.02)
        cast(self.embedding)
        exports, reads = cache_links(plan)
        self.blocks = nn.ModuleList(
            cast(
                ResidualBlock(
                    make_norm(m), block_kind(b.kind).build(b.params, m), i, exports[i], reads[i]
                )
            )
            for i, b in enumerate(plan.order())
        )
        self.final_norm = cast(make_norm(m))
        self.lm_head = nn.Linear(m.d_model, m.vocab_size, bias=False)
        nn.init.normal_(self.lm_head.weight, std=0.02)
        cast(self.lm_head)
        if m.tie_embeddings:
            self.lm_head.weight = self.embedding.weight

    def select_backends(self, device: torch.device | str) -> dict[int, str]:
        """Choose every block's backend for `device` (raises BackendUnavailable if a
        requested backend cannot run there); returns block index -> backend."""
        device = torch.device(device)
        for block in self.blocks:
            block.mixer.select_backend(device)
        return self.backends()

    def backends(self) -> dict[int, str]:
        """Block index -> the backend it runs (None for blocks without backends)."""
        return {i: getattr(b.mixer, "backend", None) for i, b in enumerate(self.blocks)}

    def head(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """Logits from the last block's output states: the final norm, the LM head, the
        logit soft-cap when the model has one. Works on any leading shape ([..., d_model])."""
        logits = self.lm_head(self.final_norm(x_BTD))
        cap = self.plan.model.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)

    def aux_loss(self) -> torch.Tensor:
        """The sum of the auxiliary losses the blocks left in the last forward (a mixture
        of experts' load-balancing loss, already times its `aux_loss_coef`); 0 without
        any. A training step adds it to the language-model loss."""
        losses = [
            b.mixer.aux_loss for b in self.blocks if getattr(b.mixer, "aux_loss", None) is not None
        ]
        return torch.stack(losses).sum() if losses else self.lm_head.weight.new_zeros(())

    def hidden(self, input_ids: torch.Tensor) -> torch.Tensor:
        """ids [B, T] -> the last block's output states [B, T, d_model] (before `head`): a
        loss that reads a few positions takes their logits from these alone."""
        x, shared = self.embedding(input_ids), {}
        for block in self.blocks:
            x = block(x, shared)
        return x

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(input_ids))

    def allocate_cache(self, batch_size: int, max_len: int, device=None, dtype=None) -> ModelCache:
        """Caches for decoding up to `max_len` tokens (prompt + generated)."""
        p = next(self.parameters())
        device, dtype = device or p.device, dtype or p.dtype
        layers = [
            b.mixer.allocate_cache(batch_size, max_len, device=device, dtype=dtype)
            for b in self.blocks
        ]
        for block, layer in zip(self.blocks, layers, strict=True):
            for reader, (source, branch) in block.reads.items():
                mine = layer if reader is None else layer.children[reader]
                theirs = layers[source]
                mine.source = theirs if branch is None else theirs.children[branch]
        return ModelCache(layers)

    def prefill(self, input_ids: torch.Tensor, cache: ModelCache) -> torch.Tensor:
        """Run the prompt [B, T] through the model, filling the (empty) cache."""
        x, shared = self.embedding(input_ids), {}
        for block, layer_cache in zip(self.blocks, cache.layers, strict=True):
            x = block.prefill(x, layer_cache, shared)
        return self.head(x)

    def step(self, input_ids: torch.Tensor, cache: ModelCache) -> torch.Tensor:
        """One decode step: ids [B, 1] -> logits [B, 1, vocab]."""
        x = self.embedding(input_ids)
        for block, layer_cache in zip(self.blocks, cache.layers, strict=True):
            x = block.step(x, layer_cache)
        return self.head(x)


def free_memory(device: torch.device) -> int | None:
    """Bytes free on `device` (the CPU: available RAM), or None when unknown."""
    try:
        if device.type == "cuda":
            return torch.cuda.mem_get_info(device)[0]
        if device.type == "cpu":
            try:
                with open("/proc/meminfo") as f:
                    for line in f:
                        if line.startswith("MemAvailable:"):
                            return int(line.split()[1]) * 1024
            except OSError:
                pass
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, RuntimeError, ValueError):
        pass
    return None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**28 else f"{n / 2**20:,.1f} MiB"


def check_fits(plan: Plan, device: torch.device, dtype: torch.dtype) -> None:
    """ModelTooLarge when the weights (the cost model's parameter count x the dtype's
    bytes) exceed the free memory of `device`; nothing when that is unknown."""
    from archlab.cost.analytic import param_count

    free = free_memory(device) if device.type != "meta" else None
    params = param_count(plan)
    need = params * dtype.itemsize
    if free is not None and need > free:
        raise ModelTooLarge(
            f"{plan.name}: the weights need {_gib(need)} ({params:,} parameters x "
            f"{dtype.itemsize} bytes, {str(dtype).removeprefix('torch.')}) but {device} has "
            f"{_gib(free)} free; not building it (`archlab build --force` or "
            "`build_model(..., force=True)` tries anyway)"
        )


def build_model(
    plan: Plan,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str | None = None,
    force: bool = False,
) -> ArchModel:
    """Instantiate the plan on `device` in `dtype` (default: the spec's `model.dtype`)
    and select every block's backend for that device. Unless `force`, a model whose
    weights would not fit in the device's free memory raises ModelTooLarge (a ValueError)
    before anything is allocated."""
    device = torch.device(device)
    if isinstance(dtype, str):
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"unknown dtype {dtype!r} (choose from {', '.join(DTYPE_BYTES)})")
        dtype = getattr(torch, dtype)
    dtype = dtype or plan.model.torch_dtype
    if not force:
        check_fits(plan, device, dtype)
    with torch.device(device):
        model = ArchModel(plan, dtype)
    if device.type != "meta":
        model.select_backends(device)
    return model
