"""The `attention` layer: the nn.Module of `archlab.blocks.attention` (also the base of
`local_attention`'s). The torch-free params, checks and costs are in the record."""

from __future__ import annotations

import torch
from torch import nn

from archlab.blocks.attention import (
    Params,
    common,
    head_dims,
    logit_mods,
    out_bias,
    q_width,
    rotary_dim,
)
from archlab.blocks.base import (
    BackendUnavailable,
    ModelConfig,
    needs_cuda,
    resolve_backend,
    runs_anywhere,
)
from archlab.blocks.cache import LayerCache
from archlab.kernels.flex_compiled import flex_available
from archlab.kernels.rope import cos_sin_table, existing_table


def sdpa_cannot_modify(device: torch.device) -> str:
    """The sdpa check of a block with soft-capped logits or sink logits."""
    return "sdpa cannot soft-cap attention logits or add sink logits (use flex or reference)"


def flex_can_run(device: torch.device) -> str | None:
    """A backend check: compiled FlexAttention needs CUDA, torch's flex_attention and
    Triton."""
    if flex_available(device):
        return None
    return needs_cuda(device) or "needs torch's flex_attention and Triton"


def _sequence(
    block: AttentionBlock,
    x_BTD: torch.Tensor,
    shared_kv,
    block_mask=None,
    table=None,
    with_kv: bool = True,
):
    """A whole sequence through `block`: (its output [B, T, d_model], k, v), k and v None
    unless `with_kv` (a compiled graph that returns k and v adds their zero gradients in
    its backward: a kernel of 0.73 ms per 64 x 4096 training step in a profile on an
    H200). `table`: the RoPE angles (`cos_sin_table`) or None to compute them."""
    positions = torch.arange(x_BTD.shape[1], device=x_BTD.device)
    q, k, v, gate = block._gated_project(x_BTD, positions, shared_kv, table)
    y = block._out(block._attend_sequence(q, k, v, block_mask), gate)
    return (y, k, v) if with_kv else (y, None, None)


COMPILE_OPTIONS = {"dynamic": True}  # how the sdpa sequence path is compiled on CUDA
_compiled_sequence = None


def fuses_on(x_BTD: torch.Tensor, backend: str | None) -> bool:
    """Whether the sequence path runs compiled: on CUDA for the sdpa and flex backends,
    more than one token, and not already inside an enclosing torch.compile."""
    return (
        x_BTD.device.type == "cuda"
        and backend in ("sdpa", "flex")
        and x_BTD.shape[1] > 1
        and not torch.compiler.is_compiling()
    )


def run_sequence(block: AttentionBlock, x_BTD: torch.Tensor, shared_kv=None, with_kv: bool = True):
    """`_sequence`, as one compiled graph where `fuses_on` (projections, RoPE, the layout
    changes around the attention kernel and the output projection, fused the way a
    torch.compile'd plain layer is: the eager glue cost about 20 ms of a 100 ms training
    step at 64 x 4096 on an H200); else eagerly. The RoPE angles come from a table made
    once (`cos_sin_table`), as a plain layer's cached tables (computed per element of q
    and k, they took two kernels of 6.0 ms each per step of the layer compiled whole, in
    a profile on an H200); inside an enclosing torch.compile, from the table if one was
    made (`select_backend` makes it on CUDA), else computed."""
    global _compiled_sequence
    table = None
    if block.params.rope:
        args = (x_BTD.shape[1], block.rotary_dim, block.params.rope_theta, x_BTD.device)
        table = existing_table(*args) if torch.compiler.is_compiling() else cos_sin_table(*args)
    mask = None
    if block.backend == "flex":  # made outside any graph, once per (T, window, device)
        mask = common.flex_block_mask(x_BTD.shape[1], block.window, x_BTD.device)
    if not fuses_on(x_BTD, block.backend):
        return _sequence(block, x_BTD, shared_kv, mask, table, with_kv)
    if _compiled_sequence is None:
        _compiled_sequence = torch.compile(_sequence, **COMPILE_OPTIONS)
    return _compiled_sequence(block, x_BTD, shared_kv, mask, table, with_kv)


def store_last(cache_BSKD: torch.Tensor, new_BTKD: torch.Tensor) -> None:
    """Store the last min(T, S) positions of `new` in a cache of S slots, position p in slot
    p % S (a ring buffer when T > S), as at most two slice copies (no index tensor, no
    index_put)."""
    T, slots = new_BTKD.shape[1], cache_BSKD.shape[1]
    kept = min(T, slots)
    first = T - kept
    start = first % slots
    head = min(kept, slots - start)
    cache_BSKD[:, start : start + head].copy_(new_BTKD[:, first : first + head])
    if head < kept:
        cache_BSKD[:, : kept - head].copy_(new_BTKD[:, first + head :])


def triton_decodes(cache_k: torch.Tensor, q: torch.Tensor) -> bool:
    """Whether the decode step attends with `kernels.attention_decode` (Triton, memory-bound
    at every cache length) rather than sdpa: on CUDA, with the cache in q's dtype."""
    return q.is_cuda and cache_k.dtype == q.dtype and q.shape[1] == 1


class AttentionBlock(nn.Module):
    """Causal attention over x [B, T, d_model]: the mixer alone (no norm, no residual).

    `local_attention` reuses this class: a `window` in the params limits each token to
    itself and the `window - 1` tokens before it, and the cache becomes a ring buffer of
    min(max_len, window) positions. Keys are cached after RoPE. The decode `step` has one
    query, so it runs `reference` for the reference backend and otherwise, on CUDA, the
    Triton decode kernel of `kernels.attention_decode` (sdpa elsewhere; flex's
    block-sparse kernel has no single-query path). A block that asks for `flex` has no
    backend until `select_backend` is called with a CUDA device.

    With `attn_softcap` or `sinks` the backends are flex and reference (in `auto`'s order;
    sdpa cannot, `backend_table` says why) and the decode step runs the reference. The sink
    logits are the parameter `sinks` [heads, sinks].

    With `output_gate` (gated attention, Qiu et al. 2025, arXiv:2505.06708; Qwen3-Next)
    q_proj is twice as wide, in HF's `Qwen3NextAttention` layout: per head, head_dim query
    rows then head_dim gate rows, so that Qwen3-Next's q_proj weights (and bias) load as
    they are. Each head's attention output is multiplied by sigmoid(gate) (in float32)
    before o_proj, after the attention core, so every backend and the decode step run the
    same gate. `o_bias` sets o_proj's bias apart from q/k/v's (`bias`).
    """

    KIND_NAME = "attention"
    # backend -> why it cannot run on a device (None: it can), in the order `auto` tries them
    BACKENDS = {"sdpa": runs_anywhere, "reference": runs_anywhere, "flex": flex_can_run}

    def __init__(self, params: Params, model: ModelConfig) -> None:
        super().__init__()
        self.params = params
        self.window: int | None = getattr(params, "window", None)
        self.heads, self.kv_heads, self.head_dim = head_dims(params, model.d_model)
        self.rotary_dim = rotary_dim(params, model.d_model)
        self.logit_mods = logit_mods(params)  # soft-capping or sinks: no sdpa
        self.norm_eps = model.norm_eps
        self.max_seq_len = model.max_seq_len
        d, inner = model.d_model, self.heads * self.head_dim
        kv_inner = self.kv_heads * self.head_dim
        self.shares = params.share_cache is not None  # reads block share_cache's k/v
        self.q_proj = nn.Linear(d, q_width(params, d), bias=params.bias)
        if not self.shares:
            self.k_proj = nn.Linear(d, kv_inner, bias=params.bias)
            self.v_proj = nn.Linear(d, kv_inner, bias=params.bias)
        self.o_proj = nn.Linear(inner, d, bias=out_bias(params))
        if params.qk_norm:
            self.q_norm = nn.Parameter(torch.ones(self.head_dim))
            if not self.shares:
                self.k_norm = nn.Parameter(torch.ones(self.head_dim))
        if params.sinks:
            self.sinks = nn.Parameter(torch.zeros(self.heads, params.sinks))
        self.reset_parameters()
        self.backend: str | None = None
        try:
            self.select_backend(torch.device("cpu"))
        except BackendUnavailable:
            table = self.backend_table()
            if params.backend not in table or table[params.backend] is sdpa_cannot_modify:
                raise  # no such backend, or one that runs nowhere: an error
            # flex runs on CUDA only: select_backend(cuda) picks it

    def reset_parameters(self) -> None:
        """Projections ~ N(0, 0.02), biases 0, qk-norm weights 1, sink logits 0."""
        for proj in (
            self.q_proj,
            getattr(self, "k_proj", None),
            getattr(self, "v_proj", None),
            self.o_proj,
        ):
            if proj is None:
                continue
            nn.init.normal_(proj.weight, std=0.02)
            if proj.bias is not None:
                nn.init.zeros_(proj.bias)
        for norm in (getattr(self, "q_norm", None), getattr(self, "k_norm", None)):
            if norm is not None:
                nn.init.ones_(norm)
        if getattr(self, "sinks", None) is not None:
            nn.init.zeros_(self.sinks)

    def backend_table(self):
        """`BACKENDS`; with soft-capping or sinks, flex then reference, and sdpa last with
        the reason it cannot run."""
        if not self.logit_mods:
            return self.BACKENDS
        table = {n: self.BACKENDS[n] for n in ("flex", "reference") if n in self.BACKENDS}
        return {**table, "sdpa": sdpa_cannot_modify}

    def select_backend(self, device: torch.device | str) -> str:
        """Choose the backend for `device` (raises BackendUnavailable if it cannot run)."""
        device = torch.device(device)
        self.backend = resolve_backend(
            self.KIND_NAME, self.params.backend, device, self.backend_table()
        )
        if device.type == "cuda" and self.params.rope:  # read inside torch.compile'd models
            cos_sin_table(self.max_seq_len, self.rotary_dim, self.params.rope_theta, device)
        return self.backend

    def _mods(self) -> dict:
        """The softmax's soft-capping and sink logits, for the reference and flex cores."""
        return {"softcap": self.params.attn_softcap, "sinks_HN": getattr(self, "sinks", None)}

    def _queries(self, x_BTD: torch.Tensor, positions_T: torch.Tensor, table=None):
        """q [B, T, H, dh] with qk-norm and RoPE applied, and the output gate's logits
        [B, T, H, dh] (None without `output_gate`): q_proj's output holds, per head, the
        head's query and then its gate (HF's Qwen3NextAttention layout). `table`: the RoPE
        angles (`cos_sin_table`) or None to compute them."""
        if self.backend is None or (self.backend == "flex" and x_BTD.device.type != "cuda"):
            raise BackendUnavailable(
                f"backend {self.params.backend!r} cannot run on {x_BTD.device} "
                "(select_backend(device) chooses one for the device)"
            )
        B, T, _ = x_BTD.shape
        q = self.q_proj(x_BTD).view(B, T, self.heads, -1)
        gate = None
        if self.params.output_gate:
            q, gate = q.split(self.head_dim, dim=-1)
        if self.params.qk_norm:
            q = common.rms_norm(q, self.q_norm, self.norm_eps)
        if self.params.rope:
            q = common.partial_rope(q, positions_T, self.params.rope_theta, self.rotary_dim, table)
        return q, gate

    def _keys_values(self, x_BTD: torch.Tensor, positions_T: torch.Tensor, table=None):
        """k and v [B, T, K, dh], k with qk-norm and RoPE applied (`table` as in
        `_queries`)."""
        B, T, _ = x_BTD.shape
        k = self.k_proj(x_BTD).view(B, T, self.kv_heads, self.head_dim)
        v = self.v_proj(x_BTD).view(B, T, self.kv_heads, self.head_dim)
        if self.params.qk_norm:
            k = common.rms_norm(k, self.k_norm, self.norm_eps)
        if self.params.rope:
            k = common.partial_rope(k, positions_T, self.params.rope_theta, self.rotary_dim, table)
        return k, v

    def _project(self, x_BTD, positions_T, shared_kv=None):
        """q, and k, v: this block's own, or those of the block it shares (`shared_kv`)."""
        return self._gated_project(x_BTD, positions_T, shared_kv)[:3]

    def _gated_project(self, x_BTD, positions_T, shared_kv=None, table=None):
        """`_project`'s q, k, v and the output gate's logits (None without output_gate)."""
        q, gate = self._queries(x_BTD, positions_T, table)
        if not self.shares:
            return q, *self._keys_values(x_BTD, positions_T, table), gate
        if shared_kv is None:
            raise ValueError(
                f"this block reads the keys/values of block {self.params.share_cache}: "
                "pass them as shared_kv (the model does)"
            )
        return q, *shared_kv, gate

    def _attend_sequence(self, q_BTHD, k_BTKD, v_BTKD, block_mask=None) -> torch.Tensor:
        if self.backend == "flex":
            return common.flex_attention(
                q_BTHD, k_BTKD, v_BTKD, self.window, block_mask, **self._mods()
            )
        if self.backend == "sdpa" and self.window is None:
            return common.sdpa_attention(q_BTHD, k_BTKD, v_BTKD, causal=True)
        mask_TT = common.window_mask(q_BTHD.shape[1], self.window, q_BTHD.device)
        if self.backend == "sdpa":
            return common.sdpa_attention(q_BTHD, k_BTKD, v_BTKD, mask_TS=mask_TT)
        return common.reference_attention(q_BTHD, k_BTKD, v_BTKD, mask_TT, **self._mods())

    def _out(self, y_BTHD: torch.Tensor, gate_BTHD: torch.Tensor | None = None) -> torch.Tensor:
        """o_proj of the heads' outputs, each multiplied by sigmoid(gate) first when the
        block has the output gate (in float32, returned to y's dtype)."""
        if gate_BTHD is not None:
            gated = y_BTHD.float() * torch.sigmoid(gate_BTHD.float())
            y_BTHD = gated.to(y_BTHD.dtype)
        return self.o_proj(y_BTHD.flatten(2))

    def forward(self, x_BTD: torch.Tensor, shared_kv=None, return_kv: bool = False):
        """[B, T, d_model] -> [B, T, d_model], causal over T. `return_kv` also returns the
        (k, v) that a later block sharing this one's cache reads; a sharing block takes
        them as `shared_kv`."""
        y, k, v = run_sequence(self, x_BTD, shared_kv, with_kv=return_kv)
        return (y, (k, v)) if return_kv else y

    def allocate_cache(
        self,
        batch: int,
        max_len: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LayerCache:
        """Empty k, v caches [B, slots, K, dh]; slots = max_len, or min(max_len, window).
        A sharing block owns none: the model points `cache.source` at its source's."""
        if self.shares:
            return LayerCache()
        slots = max_len if self.window is None else min(max_len, self.window)
        w = self.q_proj.weight
        shape = (batch, slots, self.kv_heads, self.head_dim)
        kw = {"device": device or w.device, "dtype": dtype or w.dtype}
        return LayerCache({"k": torch.zeros(shape, **kw), "v": torch.zeros(shape, **kw)})

    def _check_room(self, cache: LayerCache, end: int) -> int:
        """Slots of the cache; raises if position `end - 1` cannot be stored (a ring buffer
        holding a whole window never runs out)."""
        slots = cache["k"].shape[1]
        if end > slots and slots != self.window:
            raise ValueError(f"the cache holds {slots} positions; position {end - 1} does not fit")
        return slots

    def prefill(
        self, x_BTD: torch.Tensor, cache: LayerCache, shared_kv=None, return_kv: bool = False
    ):
        """Run the prompt [B, T, d_model] (cache empty before) and store its last keys/values
        (a sharing block stores nothing: its source did)."""
        if cache.length:
            raise ValueError(f"prefill needs an empty cache (it holds {cache.length} tokens)")
        T = x_BTD.shape[1]
        y, k, v = run_sequence(self, x_BTD, shared_kv)
        if not self.shares:
            self._check_room(cache, T)
            store_last(cache["k"], k)
            store_last(cache["v"], v)
        cache.length = T
        return (y, (k, v)) if return_kv else y

    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Decode one token [B, 1, d_model] at position cache.length against the cache (a
        sharing block: against `cache.source`, which its source block has already updated)."""
        pos = cache.length
        positions = torch.arange(pos, pos + 1, device=x_B1D.device)  # no host copy: capturable
        table = None  # RoPE angles: a row of the table `select_backend` made, if it did
        if self.params.rope:
            table = existing_table(pos + 1, self.rotary_dim, self.params.rope_theta, x_B1D.device)
        if self.shares:
            if cache.source is None:
                raise ValueError("a sharing block's cache needs its source's (cache.source)")
            kv = cache.source
            slots = self._check_room(kv, pos + 1)
            q, gate = self._queries(x_B1D, positions, table)
        else:
            kv = cache
            slots = self._check_room(cache, pos + 1)
            q, k, v, gate = self._gated_project(x_B1D, positions, table=table)
            cache["k"][:, pos % slots] = k[:, 0].to(cache["k"].dtype)
            cache["v"][:, pos % slots] = v[:, 0].to(cache["v"].dtype)
        valid = min(pos + 1, slots)  # attention is order-free over keys, so ring order is fine
        exact = self.backend == "reference" or self.logit_mods
        if not exact and triton_decodes(kv["k"], q):
            from archlab.kernels.attention_decode import decode_attention

            y = decode_attention(q[:, 0], kv["k"], kv["v"], valid)[:, None]
        else:
            keys, values = kv["k"][:, :valid].to(q.dtype), kv["v"][:, :valid].to(q.dtype)
            if exact:
                y = common.reference_attention(q, keys, values, None, **self._mods())
            else:
                y = common.sdpa_attention(q, keys, values)
        cache.length = pos + 1
        return self._out(y, gate)
