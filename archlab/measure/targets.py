"""What `archlab.measure.profile` times: a whole model (`ModelTarget`) or one mixer block
of a spec with its projections (`LayerTarget`, the RAT paper's efficiency setup), with
their inputs, caches, cost-model figures and train steps. A train step's forward (the
model's with its loss, or the block's) can be wrapped (`wrap`: torch.compile, for
`--compile`); the backward and the optimizer step stay as they are."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from archlab.blocks.registry import kind as block_kind
from archlab.cost.analytic import mixer_figures, spec_cost
from archlab.lang.plan import Plan, PlannedBlock
from archlab.model import build_model

Wrap = Callable[[Callable], Callable] | None  # e.g. archlab.measure.compiled.compile_fn


class _Target:
    """What the timing loops drive: `self.module` (a model or one block) and its cache."""

    module: torch.nn.Module

    def allocate_cache(self, batch: int, max_len: int, device=None):
        return self.module.allocate_cache(batch, max_len, device=device)

    def prefill(self, x: torch.Tensor, cache) -> torch.Tensor:
        return self.module.prefill(x, cache)

    def step(self, x: torch.Tensor, cache) -> torch.Tensor:
        return self.module.step(x, cache)

    def backend_notes(self) -> list[str]:
        """The caveats the blocks' selected backends give (`backend_note`), each once."""
        notes = (getattr(m, "backend_note", None) for m in self.module.modules())
        return [f"backend: {n}" for n in dict.fromkeys(n for n in notes if n)]


class ModelTarget(_Target):
    """A whole model built from a Plan (whose `model.dtype` is the dtype it runs in)."""

    def __init__(self, plan: Plan, device: torch.device, scaled: str | None = None):
        self.plan, self.device, self.scaled = plan, device, scaled
        self.label = "model"
        self.module = build_model(plan, device=device)
        self.vocab = plan.model.vocab_size

    def backends(self) -> dict[str, str]:
        by_kind: dict[str, set[str]] = {}
        for block, backend in zip(self.plan.order(), self.module.backends().values(), strict=False):
            if backend is not None:
                by_kind.setdefault(block.kind, set()).add(str(backend))
        return {k: "/".join(sorted(v)) for k, v in by_kind.items()}

    def analytic(self, batch: int, seq_len: int) -> dict[str, int]:
        c = spec_cost(self.plan, batch=batch, seq_len=seq_len)
        return {
            "fwd_flops": c.fwd_flops,
            "train_flops": c.train_flops,
            "cache_bytes": c.cache_bytes,
            "decode_flops": c.decode_flops,
            "decode_bytes": c.decode_bytes,
        }

    def inputs(self, batch: int, seq_len: int) -> torch.Tensor:
        return torch.randint(0, self.vocab, (batch, seq_len), device=self.device)

    def loss_fn(self, batch: int, seq_len: int) -> tuple[Callable[..., torch.Tensor], tuple]:
        """The forward of a train step, `loss(ids, targets)`: cross-entropy of the logits
        plus the blocks' auxiliary losses; and random (ids, targets) to call it with."""
        model = self.module

        def loss(ids: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            logits = model(ids)
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten()) + model.aux_loss()

        return loss, (self.inputs(batch, seq_len), self.inputs(batch, seq_len))

    def train_fn(
        self, batch: int, seq_len: int, optimizer: bool, wrap: Wrap = None
    ) -> Callable[[], None]:
        """One train step: `loss_fn`'s loss (under `wrap`, when given), its backward, an
        AdamW step when `optimizer`, the gradients dropped."""
        loss, args = self.loss_fn(batch, seq_len)
        loss = wrap(loss) if wrap else loss
        model = self.module
        opt = _adamw(model, self.device) if optimizer else None

        def run() -> None:
            loss(*args).backward()
            if opt is not None:
                opt.step()
            model.zero_grad(set_to_none=True)

        return run

    @staticmethod
    def layers(cache) -> list:
        return cache.layers


class LayerTarget(_Target):
    """One mixer block of a spec, alone (input and output projections included, no norm,
    no residual), on random activations [B, T, d_model]."""

    def __init__(
        self, plan: Plan, block: PlannedBlock, device: torch.device, scaled: str | None = None
    ):
        self.plan, self.block, self.device, self.scaled = plan, block, device, scaled
        params = block.summary()  # what differs from the defaults, a backend asked for included
        self.label = f"layer {block.kind}" + (
            "(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else ""
        )
        m = plan.model
        with torch.device(device):
            module = block_kind(block.kind).build(block.params, m)
        self.module = module.to(dtype=m.torch_dtype)
        self.module.select_backend(device)

    def backends(self) -> dict[str, str]:
        backend = getattr(self.module, "backend", None)
        return {self.block.kind: str(backend)} if backend is not None else {}

    def analytic(self, batch: int, seq_len: int) -> dict[str, int]:
        return mixer_figures(self.block, self.plan.model, batch, seq_len)

    def inputs(self, batch: int, seq_len: int) -> torch.Tensor:
        m = self.plan.model
        return torch.randn(batch, seq_len, m.d_model, device=self.device, dtype=m.torch_dtype)

    def train_fn(
        self, batch: int, seq_len: int, optimizer: bool, wrap: Wrap = None
    ) -> Callable[[], None]:
        """One train step: the block's forward (under `wrap`, when given) on random
        activations, the backward of a random gradient, an AdamW step when `optimizer`."""
        x = self.inputs(batch, seq_len).requires_grad_()
        grad = torch.randn_like(x)
        block = self.module

        def forward(x: torch.Tensor) -> torch.Tensor:
            return block(x)

        forward = wrap(forward) if wrap else forward
        opt = _adamw(block, self.device) if optimizer else None

        def run() -> None:
            forward(x).backward(grad)
            if opt is not None:
                opt.step()
            block.zero_grad(set_to_none=True)
            x.grad = None

        return run

    @staticmethod
    def layers(cache) -> list:
        return [cache]


Target = ModelTarget | LayerTarget


def _adamw(module: torch.nn.Module, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(module.parameters(), lr=1e-4, fused=device.type == "cuda")


def set_length(target: Target, cache, length: int) -> None:
    """Mark every layer's cache as holding `length` tokens (the contents stay as they are:
    no block's work depends on the values in its cache)."""
    for layer in target.layers(cache):
        layer.set_length(length)  # a parallel block's branches keep counts of their own
