"""What every block kind shares, without torch: the `BlockKind` record, the params base
class, the model settings, FLOP counts and the backend resolver.

A block kind lives in one room, `blocks/<kind>/`: its `__init__.py` exports
`KIND = BlockKind(...)` and imports no torch (so that validating and costing a spec
never loads torch); its `layer.py` holds the `nn.Module`, which `KIND.layer()` imports on
first use. Everything else in archlab (the compiler, the cost model, scaling, sharing,
drawing, the schema, the docs table and the contract tests) reads the registry
(`archlab.blocks.registry`) and nothing else. docs/architecture.md shows how to add one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


class ModelConfig(BaseModel):
    """Model-wide settings (`model:` in a spec): what every block needs to know."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    d_model: int = Field(ge=1, le=1 << 20, description="width of the residual stream")
    vocab_size: int = Field(ge=1, le=1 << 24, description="tokens in the vocabulary")
    max_seq_len: int = Field(
        default=4096, ge=1, le=1 << 30, description="longest sequence the model is built for"
    )
    norm: Literal["rmsnorm", "layernorm"] = Field(
        default="rmsnorm", description="the pre-norm of every block and the final norm"
    )
    norm_eps: float = Field(default=1e-6, gt=0, lt=1, description="epsilon of the norms")
    tie_embeddings: bool = Field(
        default=False, description="the LM head reuses the embedding matrix"
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field(
        default="bfloat16", description="dtype of weights, activations and caches"
    )
    logit_softcap: float | None = Field(
        default=None,
        gt=0,
        description="soft-cap the final logits: cap * tanh(logits / cap) (Gemma-2); none if null",
    )

    @property
    def torch_dtype(self):
        """The torch dtype of `dtype` (imports torch)."""
        import torch

        return getattr(torch, self.dtype)

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]


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


def linear_flops(tokens: int, d_in: int, d_out: int) -> int:
    """FLOPs of a dense projection over `tokens` rows."""
    return 2 * tokens * d_in * d_out


def per_token_flops(per_token: Callable[[Any, int], FlopCount]):
    """(flops, decode_flops) of a kind whose work is the same for every token at every
    position (a recurrence with a constant-size state): `per_token(p, d_model)` times
    the batch x T tokens of a forward, or the batch of one decode step."""

    def flops(p: Any, d_model: int, batch: int, seq_len: int) -> FlopCount:
        return per_token(p, d_model).scale(batch * seq_len)

    def decode_flops(p: Any, d_model: int, batch: int, t: int) -> FlopCount:
        return per_token(p, d_model).scale(batch)

    return flops, decode_flops


Checks = list[tuple[str, str]]  # (field, message) pairs


def no_checks(p: Any, d_model: int) -> Checks:
    """The default `check`: nothing needs the model."""
    return []


def no_breakpoints(p: Any) -> tuple[set[int], int]:
    """The default `breakpoints`: the cost is one polynomial in T for every T."""
    return set(), 1


def scale_widths(data: dict, d_old: int, d_new: int) -> dict:
    """The default `scale`: a block's params at d_new instead of d_old. Head sizes are
    kept (heads = d_new // head_dim; kv_heads and qk_groups shrink to divide them) and
    `hidden` widths scale with d_model; chunk sizes and windows are unchanged."""
    out = dict(data)
    if isinstance(out.get("heads"), int):
        heads = out["heads"]
        head_dim = min(out.get("head_dim") or d_old // heads, d_new)
        new_heads = max(1, d_new // head_dim)
        out["heads"], out["head_dim"] = new_heads, head_dim
        if out.get("kv_heads"):
            kv = max(1, out["kv_heads"] * new_heads // heads)
            out["kv_heads"] = math.gcd(new_heads, kv)
        if isinstance(out.get("qk_groups"), int):
            out["qk_groups"] = math.gcd(new_heads, out["qk_groups"])
    if isinstance(out.get("hidden"), int):
        out["hidden"] = max(8, round(out["hidden"] * d_new / d_old / 8) * 8)
    return out


@dataclass(frozen=True)
class BlockKind:
    """One block kind of the spec language: everything archlab knows about it.

    The cost functions are pure (no module, no torch):
    `param_count(p, d_model)`, `flops(p, d_model, batch, seq_len)` (forward),
    `decode_flops(p, d_model, batch, t)` (one new token with t tokens cached),
    `cache_bytes(p, d_model, batch, seq_len, dtype_bytes)` and
    `activations(p, d_model, seq_len) -> (elements in the model dtype, float32 bytes)`
    that one sequence keeps for backward (the training-memory estimate); and, for kinds
    whose tokens use only some of the parameters, `active_param_count(p, d_model)`.
    """

    name: str
    params: type[BlockParams]
    layer: Callable[[], type]  # the nn.Module class(params, model); imports torch
    param_count: Callable[[Any, int], int]
    flops: Callable[[Any, int, int, int], FlopCount]
    decode_flops: Callable[[Any, int, int, int], FlopCount]
    cache_bytes: Callable[[Any, int, int, int, int], int]
    activations: Callable[[Any, int, int], tuple[int, int]]
    summary: str  # one line for docs/blocks.md
    symbol: str | None = None  # the pattern symbol (None: bind one with `symbols:`)
    is_mixer: bool = True  # False for channel mixers (an MLP)
    check: Callable[[Any, int], Checks] = no_checks  # checks that need d_model
    backends: tuple[str, ...] = ("reference",)  # in the order `auto` tries them
    # (set of T where a min(T, window) piece changes form, period of floor(T / chunk)
    # pieces): what the crossover search needs to know of the cost's shape in T
    breakpoints: Callable[[Any], tuple[set[int], int]] = no_breakpoints
    scale: Callable[[dict, int, int], dict] = scale_widths  # params at a smaller d_model
    # what must agree between a cache's source and a block that reads it
    # (`share_cache`); None: the kind cannot share a cache
    cache_geometry: Callable[[Any, int], dict] | None = None
    branchable: bool = False  # may be a branch of a `parallel` block
    color: str = "#888888"  # in plots and drawings
    examples: tuple[Mapping, ...] = ()  # small params the CPU contract tests build
    gpu_examples: tuple[Mapping, ...] = ()  # params the GPU contract tests build
    composite: bool = False  # holds other blocks (parallel)
    # the parameters one token uses (a mixture of experts' routed ones); None: all of them
    active_param_count: Callable[[Any, int], int] | None = None

    def build(self, params: BlockParams, model: ModelConfig):
        """The built `nn.Module` of `params` in a model of `model`'s settings (imports
        torch)."""
        return self.layer()(params, model)


# ---- backends ---------------------------------------------------------------------------

BackendTable = Mapping[str, Callable[[Any], "str | None"]]  # name -> device -> why not / None


def resolve_backend(kind: str, requested: str, device: Any, table: BackendTable) -> str:
    """The backend to run on `device`. `table` maps each backend, in the order `auto`
    tries them, to a check that returns None when it can run on the device, else why
    not. A requested backend that cannot run raises BackendUnavailable with the reason."""
    if requested == "auto":
        reasons = []
        for name, why_not in table.items():
            reason = why_not(device)
            if reason is None:
                return name
            reasons.append(f"{name}: {reason}")
        raise BackendUnavailable(f"no {kind} backend can run on {device} ({'; '.join(reasons)})")
    if requested not in table:
        raise BackendUnavailable(
            f"{kind} has no backend {requested!r} (choose from {', '.join(['auto', *table])})"
        )
    reason = table[requested](device)
    if reason is not None:
        raise BackendUnavailable(f"{kind} backend {requested!r} cannot run on {device}: {reason}")
    return requested


def select_cpu_backend(block: Any, known: Mapping[str, Any]) -> None:
    """At a block's construction: `block.select_backend("cpu")`, leaving `block.backend`
    None when the requested backend is one of `known` that needs another device (a CUDA
    backend is resolved once the block has a device: `select_backend(cuda)`); a backend the
    kind lacks raises BackendUnavailable."""
    block.backend = None
    try:
        block.select_backend("cpu")
    except BackendUnavailable:
        if block.params.backend not in known:  # no such backend: an error
            raise


def runs_anywhere(device: Any) -> None:
    """A backend check: plain PyTorch runs on every device."""
    return None


def needs_cuda(device: Any) -> str | None:
    """A backend check: CUDA only."""
    return None if getattr(device, "type", str(device)) == "cuda" else "needs a CUDA device"


def backend_field(backends: tuple[str, ...]):
    """The `backend` field of a kind's Params: "auto" or one of `backends`. It is a plain
    string so that the compiler's error names the kind and its choices (the JSON Schema
    still lists them)."""
    return Field(
        default="auto",
        description="the implementation to run: auto picks the first that can run here",
        json_schema_extra={"enum": ["auto", *backends]},
    )


def backend_check(kind: str, backends: tuple[str, ...], backend: str) -> Checks:
    """The `backend` error of a kind that does not have the requested backend (else [])."""
    if backend in ("auto", *backends):
        return []
    choices = ", ".join(("auto", *backends))
    return [("backend", f"{kind} has no backend {backend!r} (choose from {choices})")]
