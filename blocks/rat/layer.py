"""The `rat` layer: the nn.Module of `archlab.blocks.rat` (the paper's RAT layer)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from archlab.blocks.base import (
    BackendUnavailable,
    ModelConfig,
    resolve_backend,
    runs_anywhere,
)
from archlab.blocks.cache import LayerCache
from archlab.blocks.rat import Params, dims
from archlab.kernels.gates import init_gate_bias_
from archlab.kernels.rat.flex import flex_available, rat_core_flex
from archlab.kernels.rat.reference import (
    expand_groups,
    rat_decode_reference,
    rat_decode_shared_reference,
)
from archlab.kernels.rat.scan import rat_core_scan, rat_prefill_cache_scan
from archlab.kernels.runtime import triton_can_run, triton_interpreted

ROPE_THETA = 10000.0  # the paper's; the spec language has no knob for RAT's theta


def triton_runs(
    device: torch.device, asked_by_name: bool = False, head_dim: int | None = None
) -> str | None:
    """The `triton` backend's check: None where `archlab.kernels.rat.triton_ops` can run,
    else why not. It runs on CUDA; and on the CPU under Triton's interpreter
    (TRITON_INTERPRET=1) when `triton` is asked for by name, which is how the CPU tests run
    the Triton path (`auto` never picks the interpreter). Its kernels need head_dim a power
    of two >= 16."""
    reason = triton_can_run(device, asked_by_name)
    if reason is not None:
        return reason
    try:
        from archlab.kernels.rat import triton_ops  # noqa: F401
    except ImportError as e:
        return f"cannot import archlab.kernels.rat.triton_ops ({e})"
    if head_dim is not None and (head_dim < 16 or head_dim & (head_dim - 1)):
        return f"needs head_dim a power of two >= 16 (got {head_dim})"
    return None


def flex_runs(device: torch.device) -> str | None:
    """The `flex` backend's check: FlexAttention compiles for CUDA devices only."""
    return None if flex_available(device) else "needs FlexAttention on a CUDA device"


class RATBlock(nn.Module):
    """RAT, the mixer alone, parameterised as the paper's layer (weights map one to one):
    in_proj -> z, v, g [heads * head_dim each], q, k [qk_groups * head_dim each];
    g = sigmoid(g + gate_bias) in float32; output out_proj(sigmoid(z) * y).

    Backends (`BACKENDS`): `reference` (vectorised float32 PyTorch, any device), `flex`
    (FlexAttention, CUDA), `triton` (CUDA, when `archlab.kernels.rat.triton_ops` imports;
    head_dim a power of two >= 16); `auto` takes the first of triton, flex, reference that
    runs. The constructor selects for the CPU; call `select_backend(device)` after moving
    the block. Parameters are created in float32."""

    # backend -> check(device) (None: it runs there), in `auto` order; `select_backend`
    # binds the triton check to this block's head_dim and to whether it was asked by name
    BACKENDS = {"triton": triton_runs, "flex": flex_runs, "reference": runs_anywhere}

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
        self.backend, self._core, self._triton = None, None, None
        asked, D = self.params.backend == "triton", self.head_dim
        table = {**self.BACKENDS, "triton": lambda dev: triton_runs(dev, asked, D)}
        backend = resolve_backend("rat", self.params.backend, device, table)
        if backend == "triton":
            from archlab.kernels.rat import triton_ops

            self._triton, core = triton_ops, triton_ops.rat_core_triton
        else:
            core = rat_core_flex if backend == "flex" else rat_core_scan
        self.backend, self._core = backend, core
        return backend

    def project(self, x_BTD: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """in_proj split as the paper: z [B,T,H*D], q, k [B,T,G,D], v, gate logits [B,T,H,D]
        (z and q only for a block that shares another's cache)."""
        return self.split(self.in_proj(x_BTD))

    def split(self, proj: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """`project`'s views of an in_proj output."""
        H, D, G = self.heads, self.head_dim, self.qk_groups
        if self.shares:
            z, q = proj.split(self.splits, dim=-1)
            return z, q.unflatten(-1, (G, D))
        z, v, g, q, k = proj.split(self.splits, dim=-1)
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
        interpreted = self.backend == "triton" and triton_interpreted()
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
        if self.backend == "triton":  # the gate inside the kernels, one gradient buffer
            proj = self.in_proj(x_BTD)
            args = (self.heads, self.qk_groups, self.chunk_size, self.rope, ROPE_THETA)
            out = self.out_proj(self._triton.rat_gated_triton(proj, self.gate_bias, *args))
            if not return_kv:
                return out
            _, _, k, v, gl = self.split(proj)
            return out, (k, v, gl, self.gate_bias)
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
            # one fused pass: the forward, the output gate and the cache fill
            args = (q, k, v, gl, self.gate_bias, kc, vc, L, self.rope, ROPE_THETA)
            gated = self._triton.rat_prefill_triton(*args, z=z)
            cache.length = x_BTD.shape[1]
            return self.out_proj(gated)
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
