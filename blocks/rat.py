"""`rat` (R): RAT, chunked gated recurrence with softmax attention across chunks."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from archlab.blocks.base import (
    Backend,
    BackendUnavailable,
    BlockParams,
    FlopCount,
    LayerCache,
    check_backend,
    linear_flops,
    resolve_backend,
)
from archlab.config import ModelConfig
from archlab.kernels.rat.flex import flex_available, rat_core_flex
from archlab.kernels.rat.reference import (
    expand_groups,
    rat_decode_reference,
    rat_decode_shared_reference,
)
from archlab.kernels.rat.scan import rat_core_scan, rat_prefill_cache_scan

KIND = "rat"
SYMBOL = "R"
IS_MIXER = True
BACKENDS = ("reference", "flex", "triton")


class Params(BlockParams):
    """The `rat` params of the spec language (SPEC_LANGUAGE.md)."""

    kind: Literal["rat"] = "rat"
    heads: int = Field(ge=1, le=4096)
    chunk_size: int = Field(ge=1, le=1 << 30)
    head_dim: int | None = Field(default=None, ge=1, le=4096)
    qk_groups: int = Field(default=2, ge=1, le=4096)
    rope: Literal["inter_chunk", "none"] = "inter_chunk"
    bias: bool = False
    backend: Backend = "auto"
    share_cache: int | None = Field(
        default=None,
        ge=0,
        description="index of the earlier rat block whose running keys/values and cache "
        "this block reads (resolved by the compiler); the block then projects only z and q",
    )


def check(p: Params, d_model: int) -> list[tuple[str, str]]:
    """Checks that need the model: head_dim derivable and even under RoPE, groups dividing;
    and that the kind has the backend asked for."""
    errors = check_backend(p.backend, KIND, BACKENDS)
    if p.head_dim is None and d_model % p.heads:
        errors.append(
            (
                "heads",
                f"d_model ({d_model}) must be divisible by heads ({p.heads}) "
                "when head_dim is not given",
            )
        )
    if p.heads % p.qk_groups:
        errors.append(("qk_groups", f"must divide heads ({p.heads}) (got {p.qk_groups})"))
    if p.rope != "none" and (p.head_dim or d_model // p.heads) % 2:
        errors.append(("head_dim", "must be even when rope is on"))
    return errors


EXAMPLES = [
    {"kind": "rat", "heads": 4, "chunk_size": 4},
    {"kind": "rat", "heads": 4, "chunk_size": 1, "qk_groups": 1},
    {"kind": "rat", "heads": 4, "chunk_size": 5, "qk_groups": 4, "rope": "none", "bias": True},
    {"kind": "rat", "heads": 2, "chunk_size": 64},
    {"kind": "rat", "heads": 2, "head_dim": 6, "chunk_size": 3, "qk_groups": 1},
]


ROPE_THETA = 10000.0  # the paper's; the spec language has no knob for RAT's theta


def dims(p: Params, d_model: int) -> tuple[int, int, int]:
    """(heads, head_dim, qk_groups) of a RAT block."""
    return p.heads, p.head_dim or d_model // p.heads, p.qk_groups


def _triton_ops(device: torch.device, requested: str):
    """`archlab.kernels.rat.triton_ops` where it can run: on CUDA; and on the CPU under
    Triton's interpreter (TRITON_INTERPRET=1) when `triton` is asked for by name, which is
    how the CPU tests run the Triton path (`auto` never picks the interpreter). None
    elsewhere, or when Triton is missing."""
    interpreted = os.environ.get("TRITON_INTERPRET") == "1" and requested == "triton"
    if device.type != "cuda" and not interpreted:
        return None
    try:
        from archlab.kernels.rat import triton_ops
    except ImportError:
        return None
    return triton_ops


def init_gate_bias_(bias: torch.Tensor, span: int) -> None:
    """The paper's forget-gate bias init, in place: log(U(1, span - 1)), so that a gate
    remembers over about `span` steps at the start of training (zeros for span <= 2)."""
    with torch.no_grad():
        if span > 2:
            bias.uniform_(1.0, span - 1.0).log_()
        else:
            bias.zero_()


class Block(nn.Module):
    """RAT, the mixer alone, parameterised as the paper's layer (weights map one to one):
    in_proj -> z, v, g [heads * head_dim each], q, k [qk_groups * head_dim each];
    g = sigmoid(g + gate_bias) in float32; output out_proj(sigmoid(z) * y).

    Backends: `reference` (vectorised float32 PyTorch, any device), `flex` (FlexAttention,
    CUDA), `triton` (CUDA, when `archlab.kernels.rat.triton_ops` exists); `auto` takes the
    first of triton, flex, reference that runs. The constructor selects for the CPU; call
    `select_backend(device)` after moving the block. Parameters are created in float32."""

    def __init__(self, params: Params, model: ModelConfig) -> None:
        super().__init__()
        self.params = params
        self.heads, self.head_dim, self.qk_groups = dims(params, model.d_model)
        self.chunk_size = params.chunk_size
        self.rope = params.rope != "none"
        self.cache_dtype = model.torch_dtype
        inner, qk = self.heads * self.head_dim, self.qk_groups * self.head_dim
        self.shares = params.share_cache is not None
        # z, v, g, q, k; a block reading another's keys/values (share_cache) has z, q only
        self.splits = [inner, qk] if self.shares else [inner, inner, inner, qk, qk]
        self.in_proj = nn.Linear(model.d_model, sum(self.splits), bias=params.bias)
        self.gate_bias = None if self.shares else nn.Parameter(torch.empty(inner))
        self.out_proj = nn.Linear(inner, model.d_model, bias=params.bias)
        if not self.shares:
            self.reset_gate_bias()
        self.backend: str | None = None
        self._core: Callable | None = None
        self._triton = None  # archlab.kernels.rat.triton_ops, when the triton backend runs
        try:
            self.select_backend(torch.device("cpu"))
        except BackendUnavailable:
            pass  # e.g. `flex`: runs once select_backend picks a CUDA device

    def reset_gate_bias(self) -> None:
        """gate_bias = log(U(1, chunk_size - 1)), as the paper (zeros for chunk_size <= 2)."""
        init_gate_bias_(self.gate_bias, self.chunk_size)

    def select_backend(self, device: torch.device | str) -> str:
        """Choose the backend for `device` (raises BackendUnavailable if it cannot run)."""
        device = torch.device(device)
        self.backend, self._core = None, None
        self._triton = _triton_ops(device, self.params.backend)
        D = self.head_dim
        if self._triton is not None and (D < 16 or D & (D - 1)):
            if self.params.backend == "triton":
                raise BackendUnavailable(
                    f"rat backend 'triton' needs head_dim a power of two >= 16 (got {D})"
                )
            self._triton = None
        triton_core = self._triton.rat_core_triton if self._triton else None
        cores = {"triton": triton_core, "flex": rat_core_flex, "reference": rat_core_scan}
        available = {
            "triton": triton_core is not None,
            "flex": flex_available(device),
            "reference": True,
        }
        backend = resolve_backend(self.params.backend, device, available)
        self.backend, self._core = backend, cores[backend]
        return backend

    def project(self, x_BTD: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """in_proj split as the paper: z [B,T,H*D], q, k [B,T,G,D], v, gate logits [B,T,H,D]
        (z and q only for a block that shares another's cache)."""
        H, D, G = self.heads, self.head_dim, self.qk_groups
        if self.shares:
            z, q = self.in_proj(x_BTD).split(self.splits, dim=-1)
            return z, q.unflatten(-1, (G, D))
        z, v, g, q, k = self.in_proj(x_BTD).split(self.splits, dim=-1)
        return (
            z,
            q.unflatten(-1, (G, D)),
            k.unflatten(-1, (G, D)),
            *(t.unflatten(-1, (H, D)) for t in (v, g)),
        )

    def output(self, z_BTE: torch.Tensor, y_BTHD: torch.Tensor) -> torch.Tensor:
        """out_proj(sigmoid(z) * y), in z's dtype."""
        return self.out_proj(torch.sigmoid(z_BTE) * y_BTHD.flatten(-2).to(z_BTE.dtype))

    def _check_backend(self, x: torch.Tensor) -> Callable:
        if self._core is None:
            raise BackendUnavailable(
                f"rat backend {self.params.backend!r} is not selected for a device it can run "
                "on; call select_backend(device)"
            )
        interpreted = self.backend == "triton" and os.environ.get("TRITON_INTERPRET") == "1"
        if self.backend != "reference" and x.device.type != "cuda" and not interpreted:
            raise BackendUnavailable(f"rat backend {self.backend!r} cannot run on {x.device}")
        return self._core

    def forward(self, x_BTD: torch.Tensor, shared_kv=None, return_kv: bool = False):
        """[B, T, d_model] -> [B, T, d_model], any T.

        Cache sharing: `return_kv` also returns what a later block with `share_cache` needs
        to rebuild this block's keys and values: its inputs (k, v, gate logits, gate bias).
        Such a block takes them as `shared_kv` and runs its own backend's core on them with
        its own queries, so that the keys/values are scanned inside that core (the Triton
        and flex kernels included) rather than materialised."""
        core = self._check_backend(x_BTD)
        if self.shares:
            if shared_kv is None:
                raise ValueError(
                    f"this block reads the keys/values of block {self.params.share_cache}: "
                    "pass them as shared_kv (the model does)"
                )
            z, q = self.project(x_BTD)
            return self.output(z, self._attend_shared(core, q, shared_kv))
        z, q, k, v, gl = self.project(x_BTD)
        y = core(q, k, v, gl, self.gate_bias, self.chunk_size, self.rope, ROPE_THETA)
        if not return_kv:
            return self.output(z, y)
        return self.output(z, y), (k, v, gl, self.gate_bias)

    def _attend_shared(self, core: Callable, q: torch.Tensor, shared_kv: tuple) -> torch.Tensor:
        """This block's queries over a source block's keys/values, given as the source's
        inputs (k [B,T,G',D], v and gate logits [B,T,H,D], gate bias)."""
        k, v, gl, bias = shared_kv
        if q.shape[2] != k.shape[2]:  # other qk groups than the source: one group per head
            q, k = expand_groups(q, self.heads), expand_groups(k, self.heads)
        return core(q, k, v, gl, bias, self.chunk_size, self.rope, ROPE_THETA)

    def allocate_cache(
        self,
        batch: int,
        max_len: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LayerCache:
        """Zeroed "k", "v" [batch, ceil(max_len / chunk_size), heads, head_dim] in the layout
        of kernels/rat/reference.py; dtype defaults to the model's, device to the block's.
        A sharing block owns none: the model points `cache.source` at its source's."""
        if self.shares:
            return LayerCache()
        shape = (batch, -(-max_len // self.chunk_size), self.heads, self.head_dim)
        device = device if device is not None else self.out_proj.weight.device
        dtype = dtype if dtype is not None else self.cache_dtype
        return LayerCache(
            {n: torch.zeros(shape, device=device, dtype=dtype) for n in ("k", "v")}, 0
        )

    def _check_room(self, cache: LayerCache, new_len: int) -> None:
        slots = cache["k"].shape[1]
        if -(-new_len // self.chunk_size) > slots:
            raise ValueError(f"cache holds {slots * self.chunk_size} tokens, needs {new_len}")

    def prefill(
        self, x_BTD: torch.Tensor, cache: LayerCache, shared_kv=None, return_kv: bool = False
    ):
        """Run a prompt (one parallel pass) into an empty cache; returns forward(x) (and the
        running keys/values with `return_kv`, as `forward`)."""
        if cache.length:
            raise ValueError(f"prefill needs an empty cache (it holds {cache.length} tokens)")
        if self.shares:
            cache.length = x_BTD.shape[1]
            return self.forward(x_BTD, shared_kv=shared_kv)
        self._check_room(cache, x_BTD.shape[1])
        core = self._check_backend(x_BTD)
        z, q, k, v, gl = self.project(x_BTD)
        kc, vc, L = cache["k"], cache["v"], self.chunk_size
        if self.backend == "triton" and not return_kv and not torch.is_grad_enabled():
            # one fused pass: the forward and the cache fill
            args = (q, k, v, gl, self.gate_bias, kc, vc, L, self.rope, ROPE_THETA)
            y = self._triton.rat_prefill_triton(*args)
            cache.length = x_BTD.shape[1]
            return self.output(z, y)
        y = core(q, k, v, gl, self.gate_bias, self.chunk_size, self.rope, ROPE_THETA)
        states = (t.detach() for t in (k, v, gl, self.gate_bias))
        rat_prefill_cache_scan(*states, kc, vc, L, self.rope, ROPE_THETA)
        cache.length = x_BTD.shape[1]
        if return_kv:
            return self.output(z, y), (k, v, gl, self.gate_bias)
        return self.output(z, y)

    @torch.no_grad()
    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Decode one token at position cache.length (O(number of chunks)); no autograd."""
        pos = cache.length
        if self.shares:
            if cache.source is None:
                raise ValueError("a sharing block's cache needs its source's (cache.source)")
            self._check_room(cache.source, pos + 1)
            z, q = self.project(x_B1D)
            kc, vc = cache.source["k"], cache.source["v"]
            y_BHD = rat_decode_shared_reference(
                q[:, 0], kc, vc, pos, self.chunk_size, self.rope, ROPE_THETA
            )
            cache.length = pos + 1
            return self.output(z, y_BHD[:, None])
        self._check_room(cache, pos + 1)
        z, q, k, v, gl = self.project(x_B1D)
        kc, vc, L = cache["k"], cache["v"], self.chunk_size
        args = (q[:, 0], k[:, 0], v[:, 0], gl[:, 0], self.gate_bias, kc, vc, pos, L)
        decode = self._triton.rat_decode_triton if self.backend == "triton" else None
        y_BHD = (decode or rat_decode_reference)(*args, self.rope, ROPE_THETA)
        cache.length = pos + 1
        return self.output(z, y_BHD[:, None])


def scored_pairs(chunk_size: int, seq_len: int) -> int:
    """(query, key) pairs scored per head and sequence under the chunk-causal mask: token t
    scores against the t // chunk_size earlier chunk ends plus its own running key."""
    n, r = divmod(seq_len, chunk_size)
    return seq_len + chunk_size * n * (n - 1) // 2 + r * n


def _proj_out(p: Params, d_model: int) -> int:
    """Width of in_proj: z, v, g, q, k; z and q only when the block shares a cache."""
    H, D, G = dims(p, d_model)
    return H * D + G * D if p.share_cache is not None else 3 * H * D + 2 * G * D


def param_count(p: Params, d_model: int) -> int:
    """Exact parameter count of `Block` (a sharing block has no v, g, k rows, no gate bias)."""
    H, D, _ = dims(p, d_model)
    inner, proj_out = H * D, _proj_out(p, d_model)
    biases = (proj_out + d_model) if p.bias else 0
    gate_bias = 0 if p.share_cache is not None else inner
    return d_model * proj_out + gate_bias + inner * d_model + biases


def _cost(p: Params, d_model: int, tokens: int, pairs: int) -> FlopCount:
    """FLOPs of `tokens` tokens that together score `pairs` (query, key) pairs per head.

    matmul: in_proj and out_proj (2 per multiply-add, bias adds not counted) plus the QK
    and PV products, 2 * head_dim each per scored pair and head.
    other, per token with E = heads * head_dim: forget gate 3E (bias add, sigmoid, 1 - g);
    the two scans 3E each (g * s + (1 - g) * x); RoPE 3E on q and 3E on the keys when on;
    output gate 2E (sigmoid, product); plus the softmax, 5 per scored pair and head
    (scale, max, exp, sum, divide)."""
    H, D, _ = dims(p, d_model)
    E = H * D
    proj = linear_flops(tokens, d_model, _proj_out(p, d_model)) + linear_flops(tokens, E, d_model)
    rope = 3 * E if p.rope != "none" else 0
    if p.share_cache is not None:  # no gate, no scans, keys rotated by the source
        per_token = rope + 2 * E
    else:
        per_token = 3 * E + 6 * E + 2 * rope + 2 * E
    return FlopCount(proj + 4 * D * H * pairs, tokens * per_token + 5 * H * pairs)


def flops(p: Params, d_model: int, batch: int, seq_len: int) -> FlopCount:
    """Forward FLOPs of a batch of sequences of seq_len tokens (see `_cost`)."""
    return _cost(p, d_model, batch * seq_len, batch * scored_pairs(p.chunk_size, seq_len))


def decode_flops(p: Params, d_model: int, batch: int, t: int) -> FlopCount:
    """FLOPs of one new token at position t: t // chunk_size chunk ends plus itself."""
    return _cost(p, d_model, batch, batch * (t // p.chunk_size + 1))


def cache_bytes(p: Params, d_model: int, batch: int, seq_len: int, dtype_bytes: int) -> int:
    """2 * B * ceil(T / chunk_size) * heads * head_dim * dtype_bytes (chunk-end k and v);
    0 for a block that reads another block's cache."""
    if p.share_cache is not None:
        return 0
    H, D, _ = dims(p, d_model)
    return 2 * batch * -(-seq_len // p.chunk_size) * H * D * dtype_bytes
