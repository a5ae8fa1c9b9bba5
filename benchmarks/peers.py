"""Peer suite: every block kind timed beside the plain implementation a competent user
would write, with the same weights, on the same shapes, in one process.

    python benchmarks/peers.py --rat-repo PATH --out peers.json        # on a GPU (paper setup)
    python benchmarks/peers.py --small --out /tmp/peers.json           # a CPU smoke run (CI)

Peers (each built with the archlab block's weights by `load_weights(peer, block)`):
- attention: q/k/v/o projections + RoPE (rotate-half, float32, cached cos/sin) +
  `F.scaled_dot_product_attention(is_causal=True)`, the whole layer under `torch.compile`;
- local_attention: the same with `flex_attention` and a sliding-window `mask_mod` (a key is
  visible from itself and the `window - 1` tokens before it, as archlab), compiled;
- ssm: a Mamba-2 layer on fla-core's kernels (`causal_conv1d`, `chunk_simple_gla`, the fused
  gated RMSNorm; `fused_recurrent_simple_gla` and `causal_conv1d_update` for decode), with
  mamba's parameter layout. `fla.layers.Mamba2` is not part of fla-core (it ships in the
  `flash-linear-attention` package) and its fast path is mamba_ssm's kernels: without
  mamba_ssm it runs a naive PyTorch SSD that materialises [B, chunks, L, L, H, N] tensors;
- rnn: the gated recurrence s_t = g_t s_{t-1} + (1 - g_t) v_t through
  `torch._higher_order_ops.associative_scan` (custom backward: the reverse scan) under
  `torch.compile`; a plain one-step update for decode;
- mlp: the same projections and activation under `torch.compile`;
- rat: the RAT paper's published layer (github CLAIRE-Labo/RAT), imported from `--rat-repo`
  (never copied into this project), run as its own benchmark runs it (float32 weights under
  bf16 autocast, the layer under `torch.compile`). It holds its input RMSNorm and the
  residual, so archlab's row times `x + mixer(norm(x))` from the same block.

Modes: train (forward + backward), prefill (forward without grad, filling a cache), decode
(one token at position T against a cache of T tokens; every side replayed as a CUDA graph
where it can be captured). archlab's block is timed twice: eagerly (`archlab_*`) and under
torch.compile (`archlab_compiled_*`: its forward, prefill and decode step compiled with
static shapes, as `archlab profile --compile` runs them, with the peers' --compile
backend), so each row shows archlab eager and compiled against the peer; with
`--compile none` (the --small default) the compiled side is not timed and the run says so.
The first call of each side (compilation, autotuning, graph capture) is timed apart
(`*_first_call_s`) and never inside a timing. Timings are CUDA
events (perf_counter on the CPU), median of the repetitions. An OOM is a row, not a crash.
The JSON is rewritten after every row, so a run cut short keeps what it measured.

archlab's side is built through its public API (`archlab.build`, the model's
`blocks[i].mixer` / `.norm`); decode steps, archlab's and the peers' alike, are captured in
CUDA graphs by `archlab profile`'s own `graph_of`.

Budget (H200, torch 2.11, Triton 3.6; benchmarks/results/2026-11-29-peers): mlp, attention
and rnn at every paper shape take about 135 s together (compilation included). fla
autotunes its kernels at every new shape, for archlab's ssm block and the peer alike:
chunk_gla's backward took over 2 minutes at the first shape, and even the prefill row at
64x4096 did not finish in 40 s; give `--kinds ssm` a run of its own. Flex attention
compiles per sequence length on archlab's side (22 s for the first train row of
local_attention). `--time-budget` shares the run's seconds between the kinds and skips, with
a note, the rows a kind has no time left for (a row already started runs to its end).
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import importlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

import archlab
from archlab.measure.profile import graph_of, synchronize

KINDS = ("mlp", "attention", "rnn", "ssm", "rat", "local_attention")  # default run order
MODES = ("train", "prefill", "decode")
PAPER_SHAPES = [(64, 4096), (16, 16384), (4, 65536), (2, 131072)]
PAPER_DECODE = [(512, 4096), (512, 16384), (512, 65536)]
SMALL_SHAPES = [(2, 32)]
SMALL_DECODE = [(2, 32)]

try:  # FlexAttention (torch >= 2.5)
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
except ImportError:  # pragma: no cover
    create_block_mask = flex_attention = None
try:
    from torch._higher_order_ops.associative_scan import associative_scan
except ImportError:  # pragma: no cover
    associative_scan = None


class PeerUnavailable(RuntimeError):
    """The peer cannot run here (missing package, no CUDA, no --rat-repo)."""


# ---- setup -----------------------------------------------------------------------------


class Setup:
    """Sizes and settings of one run."""

    def __init__(self, args: argparse.Namespace) -> None:
        cuda = torch.cuda.is_available() and not args.cpu
        self.device = torch.device("cuda" if cuda else "cpu")
        self.small = args.small or not cuda
        if self.small:
            self.d_model, self.heads, self.dtype_name = 64, 4, "float32"
            self.window, self.chunk = 9, 4
            self.ssm = {"d_state": 16, "expand": 2, "head_dim": 16, "n_groups": 1}
            shapes, decode = SMALL_SHAPES, SMALL_DECODE
            self.row_budget_s, self.max_reps = 0.05, 5
        else:
            self.d_model, self.heads, self.dtype_name = 2048, 16, "bfloat16"
            self.window, self.chunk = 1025, 16
            self.ssm = {"d_state": 128, "expand": 2, "head_dim": 64, "n_groups": 1}
            shapes, decode = PAPER_SHAPES, PAPER_DECODE
            self.row_budget_s, self.max_reps = 1.0, 1000
        self.ssm["conv_kernel"] = 4
        self.norm_eps, self.rope_theta, self.qk_groups = 1e-6, 10000.0, 2
        self.shapes = parse_shapes(args.shapes) if args.shapes else shapes
        self.decode = parse_shapes(args.decode) if args.decode else decode
        if args.row_budget is not None:
            self.row_budget_s = args.row_budget
        self.trace_dir: str | None = getattr(args, "trace", None)
        default_compile = "none" if self.small else "inductor"
        self.compile = args.compile or default_compile
        self.dtype = getattr(torch, self.dtype_name)
        longest = max([T for _, T in self.shapes] + [T + 1 for _, T in self.decode] + [1])
        self.max_seq_len = max(longest, 4)

    def spec(self, kind: str) -> dict:
        """A one-block archlab spec of `kind` in this setup (every knob the peer relies on
        is spelled out, so that the peer's configuration does not lean on defaults)."""
        d, H = self.d_model, self.heads
        block = {
            "attention": {"kind": "attention", "heads": H, "rope_theta": self.rope_theta},
            "local_attention": {
                "kind": "local_attention",
                "heads": H,
                "window": self.window,
                "rope_theta": self.rope_theta,
            },
            "ssm": {"kind": "ssm", **self.ssm},
            "rnn": {"kind": "rnn"},
            "mlp": {"kind": "mlp", "hidden": 4 * d, "activation": "gelu"},
            "rat": {"kind": "rat", "heads": H, "chunk_size": self.chunk, "qk_groups": 2},
        }[kind]
        return {
            "name": f"peer-{kind}",
            "model": {
                "d_model": d,
                "vocab_size": 256,
                "dtype": self.dtype_name,
                "max_seq_len": self.max_seq_len,
                "norm_eps": self.norm_eps,
            },
            "stack": [block],
        }


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """'64x4096,16x16k' -> [(64, 4096), (16, 16384)]."""
    out = []
    for item in text.split(","):
        b, t = item.lower().strip().split("x")
        out.append((int(b), int(t[:-1]) * 1024 if t.endswith("k") else int(t)))
    return out


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


# ---- attention and local attention ----------------------------------------------------


def rope_tables(length: int, head_dim: int, theta: float, device) -> tuple[torch.Tensor, ...]:
    """cos, sin [length, head_dim] (float32) of rotate-half RoPE."""
    inv_freq = 1.0 / theta ** (
        torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    )
    freqs = torch.arange(length, device=device, dtype=torch.float32)[:, None] * inv_freq
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def apply_rope(x_BTHD: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE in float32, returned in x's dtype."""
    x = x_BTHD.float()
    x1, x2 = x.chunk(2, dim=-1)
    rotated = torch.cat([-x2, x1], dim=-1)
    return (x * cos_TD[:, None] + rotated * sin_TD[:, None]).to(x_BTHD.dtype)


def sliding_window_mask(window: int) -> Callable:
    """flex mask_mod: key j is visible from query i iff j <= i and i - j < window (the
    token itself counts), as archlab's local_attention. A plain function, not a method."""

    def mask_mod(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    return mask_mod


class AttentionPeer(nn.Module):
    """Causal attention (window=None) or sliding-window attention, the plain way."""

    def __init__(self, setup: Setup, window: int | None = None, bias: bool = False) -> None:
        super().__init__()
        d, H = setup.d_model, setup.heads
        self.heads, self.kv_heads, self.head_dim = H, H, d // H
        self.window, self.theta = window, setup.rope_theta
        inner = H * self.head_dim
        self.q_proj = nn.Linear(d, inner, bias=bias)
        self.k_proj = nn.Linear(d, inner, bias=bias)
        self.v_proj = nn.Linear(d, inner, bias=bias)
        self.o_proj = nn.Linear(inner, d, bias=bias)
        self._tables: tuple[torch.Tensor, torch.Tensor] | None = None
        self._masks: dict = {}
        self.compile = setup.compile
        if window is not None and flex_attention is None:
            raise PeerUnavailable("this torch has no FlexAttention")
        if setup.compile == "none":
            self.variants = ["eager"]
        elif window is None:
            self.variants = ["compiled, dynamic shapes", "compiled, static shapes", "eager"]
        else:  # eager flex materialises every score: no eager fallback at real sizes
            self.variants = ["compiled, dynamic shapes", "compiled, static shapes"]
        self.variant = 0
        self._build()

    @property
    def impl(self) -> str:
        core = (
            "sdpa(is_causal=True)"
            if self.window is None
            else f"flex_attention(window={self.window})"
        )
        return f"projections + RoPE + {core}, {self.variants[self.variant]}"

    def next_variant(self) -> bool:
        if self.variant + 1 >= len(self.variants):
            return False
        self.variant += 1
        self._build()
        return True

    def _build(self) -> None:
        name = self.variants[self.variant]
        mode = "none" if name == "eager" else self.compile
        dynamic = True if "dynamic" in name else False if "static" in name else None
        self._train = compiled(self._layer, mode, dynamic)
        self._prefill = compiled(self._layer_kv, mode, dynamic)

    def rope(self, start: int, stop: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin rows start..stop-1 (tables cached, grown when needed)."""
        if (
            self._tables is None
            or self._tables[0].shape[0] < stop
            or self._tables[0].device != device
        ):
            length = max(stop, 2 * (self._tables[0].shape[0] if self._tables else 0))
            self._tables = rope_tables(length, self.head_dim, self.theta, device)
        cos, sin = self._tables
        return cos[start:stop], sin[start:stop]

    def block_mask(self, T: int, device):
        key = (T, str(device))
        if key not in self._masks:
            make = create_block_mask
            if device.type == "cuda":
                make = functools.partial(create_block_mask, _compile=True)
            self._masks[key] = make(
                sliding_window_mask(self.window), None, None, T, T, device=device
            )
        return self._masks[key]

    def _qkv(self, x, cos, sin):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.heads, self.head_dim)
        k = self.k_proj(x).view(B, T, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, T, self.kv_heads, self.head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def _layer_kv(self, x, cos, sin, block_mask=None):
        """out [B, T, d], and k, v [B, K, T, D] (k rotated) for the cache."""
        B, T, _ = x.shape
        q, k, v = (t.transpose(1, 2) for t in self._qkv(x, cos, sin))
        scale, gqa = self.head_dim**-0.5, self.heads != self.kv_heads
        if self.window is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
        else:
            y = flex_attention(q, k, v, block_mask=block_mask, scale=scale, enable_gqa=gqa)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1)), k, v

    def _layer(self, x, cos, sin, block_mask=None):
        return self._layer_kv(x, cos, sin, block_mask)[0]

    def _args(self, x):
        T = x.shape[1]
        cos, sin = self.rope(0, T, x.device)
        return x, cos, sin, (self.block_mask(T, x.device) if self.window else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window is not None and x.device.type == "cpu" and torch.is_grad_enabled():
            raise PeerUnavailable("not available: FlexAttention has no backward on the CPU")
        return self._train(*self._args(x))

    def allocate_cache(self, batch: int, max_len: int) -> dict:
        slots = max_len if self.window is None else min(max_len, self.window)
        w = self.q_proj.weight
        shape = (batch, self.kv_heads, slots, self.head_dim)
        return {n: torch.zeros(shape, device=w.device, dtype=w.dtype) for n in ("k", "v")}

    def prefill(self, x: torch.Tensor, cache: dict) -> torch.Tensor:
        out, k, v = self._prefill(*self._args(x))
        T, slots = x.shape[1], cache["k"].shape[2]
        if T <= slots:
            cache["k"][:, :, :T].copy_(k)
            cache["v"][:, :, :T].copy_(v)
        else:  # ring buffer: position p in slot p % slots
            ring = torch.arange(T - slots, T, device=x.device) % slots
            cache["k"][:, :, ring] = k[:, :, T - slots :]
            cache["v"][:, :, ring] = v[:, :, T - slots :]
        return out

    @torch.no_grad()
    def step(self, x_B1D: torch.Tensor, cache: dict, pos: int) -> torch.Tensor:
        """Decode the token at position `pos` (pos tokens cached); eager."""
        B = x_B1D.shape[0]
        cos, sin = self.rope(pos, pos + 1, x_B1D.device)
        q, k, v = self._qkv(x_B1D, cos, sin)
        slots = cache["k"].shape[2]
        cache["k"][:, :, pos % slots] = k[:, 0]
        cache["v"][:, :, pos % slots] = v[:, 0]
        valid = min(pos + 1, slots)
        y = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            cache["k"][:, :, :valid],
            cache["v"][:, :, :valid],
            scale=self.head_dim**-0.5,
            enable_gqa=self.heads != self.kv_heads,
        )
        return self.o_proj(y.transpose(1, 2).reshape(B, 1, -1))


def load_attention(peer: AttentionPeer, block: nn.Module) -> None:
    """q/k/v/o weights (and biases) one to one; archlab's qk-norm has no peer here."""
    mixer, _ = _wrap("attention", block)
    names = {f"{p}.weight": f"{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    names |= {f"{p}.bias": f"{p}.bias" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    _copy_named(peer, mixer, {k: v for k, v in names.items() if k in peer.state_dict()})


# ---- mlp --------------------------------------------------------------------------------

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "relu2": lambda h: F.relu(h).square()}


class MLPPeer(nn.Module):
    """down(act(up(x))) (or down(act(gate(x)) * up(x)) when gated), compiled."""

    def __init__(self, setup: Setup, hidden: int, activation: str = "gelu") -> None:
        super().__init__()
        d = setup.d_model
        self.activation = activation
        self.up_proj = nn.Linear(d, hidden, bias=False)
        if activation in ("swiglu", "geglu"):
            self.gate_proj = nn.Linear(d, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, d, bias=False)
        self.compile = setup.compile
        self.variants = (
            ["eager"]
            if setup.compile == "none"
            else ["compiled, dynamic shapes", "compiled, static shapes", "eager"]
        )
        self.variant = 0
        self._build()

    @property
    def impl(self) -> str:
        return f"up/down projections + {self.activation}, {self.variants[self.variant]}"

    def next_variant(self) -> bool:
        if self.variant + 1 >= len(self.variants):
            return False
        self.variant += 1
        self._build()
        return True

    def _build(self) -> None:
        name = self.variants[self.variant]
        mode = "none" if name == "eager" else self.compile
        self._fn = compiled(self._mlp, mode, "dynamic" in name)

    def _mlp(self, x):
        up = self.up_proj(x)
        if self.activation == "swiglu":
            h = F.silu(self.gate_proj(x)) * up
        elif self.activation == "geglu":
            h = F.gelu(self.gate_proj(x)) * up
        else:
            h = ACTIVATIONS[self.activation](up)
        return self.down_proj(h)

    def forward(self, x):
        return self._fn(x)

    def allocate_cache(self, batch: int, max_len: int) -> dict:
        return {}

    def prefill(self, x, cache):
        return self._fn(x)

    @torch.no_grad()
    def step(self, x_B1D, cache, pos):
        return self._mlp(x_B1D)


def load_mlp(peer: MLPPeer, block: nn.Module) -> None:
    mixer, _ = _wrap("mlp", block)
    names = {f"{p}.weight": f"{p}.weight" for p in ("up_proj", "gate_proj", "down_proj")}
    _copy_named(peer, mixer, {k: v for k, v in names.items() if k in peer.state_dict()})


# ---- rnn --------------------------------------------------------------------------------


def _combine(left, right):
    """(a1, b1) then (a2, b2) = (a1 a2, a2 b1 + b2): s_t = a_t s_{t-1} + b_t."""
    return right[0] * left[0], right[0] * left[1] + right[1]


def linear_scan(a: torch.Tensor, b: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """s_t = a_t s_{t-1} + b_t along dim 1 (from the end when `reverse`), s_{-1} = 0."""
    if associative_scan is None:  # pragma: no cover
        raise PeerUnavailable("this torch has no associative_scan")
    mode = "pointwise" if a.is_cuda else "generic"  # pointwise: CUDA under torch.compile
    return associative_scan(_combine, (a, b), dim=1, reverse=reverse, combine_mode=mode)[1]


def gated_scan_function(scan: Callable) -> type[torch.autograd.Function]:
    """An autograd Function for s = scan(g, b): its backward is the reverse scan
    lam_t = grad_t + g_{t+1} lam_{t+1}, d b = lam, d g = lam * s_{t-1} (associative_scan's
    own autograd materialises a T x T matrix)."""

    class GatedScan(torch.autograd.Function):
        @staticmethod
        def forward(ctx, g, b):
            s = scan(g, b, False)
            ctx.save_for_backward(g, s)
            return s

        @staticmethod
        def backward(ctx, grad_s):
            g, s = ctx.saved_tensors
            g_next = F.pad(g[:, 1:], (0, 0, 0, 1))
            lam = scan(g_next, grad_s.contiguous(), True)
            s_prev = F.pad(s[:, :-1], (0, 0, 1, 0))
            return lam * s_prev, lam

    return GatedScan


class RNNPeer(nn.Module):
    """z, v, g = in_proj(x); g = sigmoid(g + gate_bias) (float32);
    s_t = g_t s_{t-1} + (1 - g_t) v_t (float32, associative_scan); out_proj(sigmoid(z) s)."""

    def __init__(self, setup: Setup, bias: bool = False) -> None:
        super().__init__()
        d = setup.d_model
        self.in_proj = nn.Linear(d, 3 * d, bias=bias)
        self.gate_bias = nn.Parameter(torch.zeros(d))
        self.out_proj = nn.Linear(d, d, bias=bias)
        self.compile = setup.compile
        self.variants = (
            ["eager"]
            if setup.compile == "none"
            else [  # torch 2.11's inductor cannot lower associative_scan with dynamic
                # shapes ("lifted arguments"): static shapes, one graph per shape
                "layer compiled, static shapes",
                "scan compiled (fwd and bwd apart), rest eager",
            ]
        )
        self.variant = 0
        self._build()

    @property
    def impl(self) -> str:
        return f"gated recurrence by associative_scan, {self.variants[self.variant]}"

    def next_variant(self) -> bool:
        if self.variant + 1 >= len(self.variants):
            return False
        self.variant += 1
        self._build()
        return True

    def _build(self) -> None:
        name = self.variants[self.variant]
        if name.startswith("scan compiled"):
            scan = compiled(linear_scan, self.compile, False)
            self._scan_fn = gated_scan_function(scan)
            self._fn = self._layer
        else:
            self._scan_fn = gated_scan_function(linear_scan)
            mode = "none" if name == "eager" else self.compile
            self._fn = compiled(self._layer, mode, "dynamic" in name)

    def _layer(self, x):
        """(out [B, T, d], the last state [B, d] float32)."""
        z, v, g = self.in_proj(x).chunk(3, dim=-1)
        g = torch.sigmoid(g.float() + self.gate_bias.float())
        s = self._scan_fn.apply(g, (1 - g) * v.float())
        return self.out_proj(torch.sigmoid(z) * s.to(z.dtype)), s[:, -1]

    def forward(self, x):
        return self._fn(x)[0]

    def allocate_cache(self, batch: int, max_len: int) -> dict:
        w = self.out_proj.weight
        return {"state": torch.zeros(batch, w.shape[0], device=w.device, dtype=w.dtype)}

    def prefill(self, x, cache):
        out, last = self._fn(x)
        cache["state"].copy_(last)
        return out

    @torch.no_grad()
    def step(self, x_B1D, cache, pos):
        z, v, g = self.in_proj(x_B1D[:, 0]).chunk(3, dim=-1)
        g = torch.sigmoid(g.float() + self.gate_bias.float())
        s = g * cache["state"].float() + (1 - g) * v.float()
        cache["state"].copy_(s)
        return self.out_proj(torch.sigmoid(z) * s.to(z.dtype))[:, None]


def load_rnn(peer: RNNPeer, block: nn.Module) -> None:
    mixer, _ = _wrap("rnn", block)
    names = {n: n for n in peer.state_dict()}
    _copy_named(peer, mixer, names)


# ---- ssm (Mamba-2 on fla-core's kernels) ------------------------------------------------


@functools.cache
def fla_ops() -> dict:
    """fla-core's kernels that the SSM peer uses (PeerUnavailable when fla is missing)."""
    try:
        from fla.ops.gla import chunk_gla
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

        try:
            from fla.modules.causal_conv1d import causal_conv1d, causal_conv1d_update
        except ImportError:
            from fla.modules.convolution import causal_conv1d, causal_conv1d_update
        try:
            from fla.modules.norm.layernorm_gated import rmsnorm_fn
        except ImportError:
            from fla.modules.layernorm_gated import rmsnorm_fn
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install
        raise PeerUnavailable(f"fla-core is not importable ({type(e).__name__}: {e})") from e
    chunk_o = importlib.import_module("fla.ops.common.chunk_o")
    refused = (
        getattr(chunk_o, "IS_NVIDIA_HOPPER", False)
        and getattr(chunk_o, "TRITON_ABOVE_3_4_0", False)
        and not getattr(chunk_o, "TRITON_ABOVE_3_7_1", True)
    )
    return {
        "chunk_simple_gla": chunk_simple_gla,
        "chunk_gla": chunk_gla,
        "fused_recurrent_simple_gla": fused_recurrent_simple_gla,
        "causal_conv1d": causal_conv1d,
        "causal_conv1d_update": causal_conv1d_update,
        "rmsnorm_fn": rmsnorm_fn,
        "simple_gla_bwd_refused": bool(refused),
    }


def fla_version() -> str | None:
    for name in ("fla-core", "flash-linear-attention"):
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


class _NormWeight(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class FlaMamba2Peer(nn.Module):
    """Mamba-2 (mamba_ssm's `Mamba2` layout: in_proj -> z | xBC | dt, depthwise causal conv +
    SiLU, dt = softplus(dt + dt_bias), A = -exp(A_log), SSD with a D skip, gated RMSNorm
    per group, out_proj) on fla-core's kernels. The SSD is fla's chunk_simple_gla with
    q = C, k = B, v = dt x, g = dt A, scale 1; where fla refuses chunk_simple_gla's backward
    (Hopper with Triton < 3.7.1) training runs chunk_gla with the decay in every key channel,
    as archlab does. The glue around the kernels is eager PyTorch."""

    def __init__(self, setup: Setup) -> None:
        super().__init__()
        self.ops = fla_ops()
        p, d = setup.ssm, setup.d_model
        self.inner = p["expand"] * d
        self.head_dim, self.d_state, self.groups = p["head_dim"], p["d_state"], p["n_groups"]
        self.heads = self.inner // self.head_dim
        self.bc = self.groups * self.d_state
        self.conv_dim = self.inner + 2 * self.bc
        self.kernel, self.eps = p["conv_kernel"], setup.norm_eps
        self.in_proj = nn.Linear(d, 2 * self.inner + 2 * self.bc + self.heads, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, self.kernel, groups=self.conv_dim, bias=True
        )
        self.dt_bias = nn.Parameter(torch.zeros(self.heads))
        self.A_log = nn.Parameter(torch.zeros(self.heads))
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm = _NormWeight(self.inner)
        self.out_proj = nn.Linear(self.inner, d, bias=False)
        self.variants = ["fla kernels, eager glue"]
        self.variant = 0

    @property
    def impl(self) -> str:
        train = "chunk_gla" if self.ops["simple_gla_bwd_refused"] else "chunk_simple_gla"
        return (
            f"Mamba-2 on fla-core (causal_conv1d, chunk_simple_gla; training: {train}; "
            "gated rmsnorm_fn; decode: causal_conv1d_update + fused_recurrent_simple_gla)"
        )

    def next_variant(self) -> bool:
        return False

    def _split(self, zxbcdt):
        return zxbcdt.split([self.inner, self.conv_dim, self.heads], dim=-1)

    def _ssm_inputs(self, xBC, dt_raw):
        """x [..., H, P]; q = C, k = B [..., H, N]; dt [..., H] float32."""
        x, Bm, Cm = xBC.split([self.inner, self.bc, self.bc], dim=-1)
        dt = F.softplus(dt_raw.float() + self.dt_bias.float())
        x = x.unflatten(-1, (self.heads, self.head_dim))
        rep = self.heads // self.groups
        k = Bm.unflatten(-1, (self.groups, self.d_state)).repeat_interleave(rep, dim=-2)
        q = Cm.unflatten(-1, (self.groups, self.d_state)).repeat_interleave(rep, dim=-2)
        return x, q, k, dt

    def _out(self, o, x, z):
        y = o + x * self.D[:, None].to(o.dtype)
        y = self.ops["rmsnorm_fn"](
            y.flatten(-2),
            self.norm.weight,
            None,
            z=z,
            eps=self.eps,
            group_size=self.inner // self.groups,
            norm_before_gate=False,
        )
        return self.out_proj(y)

    def _sequence(self, u, cache=None):
        z, xBC, dt_raw = self._split(self.in_proj(u))
        keep = cache is not None
        xBC, conv_state = self.ops["causal_conv1d"](
            xBC,
            weight=self.conv1d.weight[:, 0],
            bias=self.conv1d.bias,
            activation="silu",
            output_final_state=keep,
        )
        x, q, k, dt = self._ssm_inputs(xBC, dt_raw)
        g = dt * -torch.exp(self.A_log.float())
        v = (x.float() * dt[..., None]).to(x.dtype)
        grad = torch.is_grad_enabled() and self.in_proj.weight.requires_grad
        if grad and self.ops["simple_gla_bwd_refused"]:
            o, final = self.ops["chunk_gla"](
                q,
                k,
                v,
                g=g[..., None].expand(q.shape).contiguous(),
                scale=1.0,
                output_final_state=keep,
            )
        else:
            o, final = self.ops["chunk_simple_gla"](
                q, k, v, g=g, scale=1.0, output_final_state=keep
            )
        if keep:
            cache["conv"].copy_(conv_state)
            cache["ssm"].copy_(final)
        return self._out(o, x, z)

    def forward(self, u):
        return self._sequence(u)

    def allocate_cache(self, batch: int, max_len: int) -> dict:
        w = self.in_proj.weight
        conv = torch.zeros(batch, self.conv_dim, self.kernel, device=w.device, dtype=w.dtype)
        ssm = torch.zeros(
            batch, self.heads, self.d_state, self.head_dim, device=w.device, dtype=torch.float32
        )
        return {"conv": conv, "ssm": ssm}

    def prefill(self, u, cache):
        return self._sequence(u, cache)

    @torch.no_grad()
    def step(self, u_B1D, cache, pos):
        z, xBC, dt_raw = self._split(self.in_proj(u_B1D[:, 0]))
        xBC, _ = self.ops["causal_conv1d_update"](
            xBC,
            cache["conv"],
            weight=self.conv1d.weight[:, 0],
            bias=self.conv1d.bias,
            activation="silu",
        )
        x, q, k, dt = self._ssm_inputs(xBC, dt_raw)
        g = dt * -torch.exp(self.A_log.float())
        v = (x.float() * dt[..., None]).to(x.dtype)
        o, final = self.ops["fused_recurrent_simple_gla"](
            q[:, None],
            k[:, None],
            v[:, None],
            g=g[:, None],
            scale=1.0,
            initial_state=cache["ssm"],
            output_final_state=True,
        )
        cache["ssm"].copy_(final)
        return self._out(o[:, 0], x, z)[:, None]


def load_ssm(peer: FlaMamba2Peer, block: nn.Module) -> None:
    """mamba's names on both sides: in_proj, conv1d (weight [C, 1, K], bias), dt_bias,
    A_log, D, norm.weight, out_proj."""
    mixer, _ = _wrap("ssm", block)
    _copy_named(peer, mixer, {n: n for n in peer.state_dict()})


# ---- rat: the published layer -------------------------------------------------------------


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


class PublishedRATPeer(nn.Module):
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
        self.compile = setup.compile
        self.variants = ["torch.compile(layer), static shapes (as published)", "eager layer"]
        if setup.compile == "none":
            self.variants = ["eager layer"]
        self.variant = 0
        self._ropes: dict = {}
        self._build()

    @property
    def impl(self) -> str:
        return f"RAT paper's layer (CLAIRE-Labo/RAT), {self.variants[self.variant]}"

    def next_variant(self) -> bool:
        if self.variant + 1 >= len(self.variants):
            return False
        self.variant += 1
        self._build()
        return True

    def _build(self) -> None:
        name = self.variants[self.variant]
        self._fn = self.layer if name == "eager layer" else torch.compile(self.layer, dynamic=False)

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


# ---- the kinds ----------------------------------------------------------------------------


RESIDUAL_INPUT_SCALE = 0.02
"""rat rows compare x + mixer(norm(x)), both sides rounded to bf16; with x ~ N(0, 1) that
rounding of the residual sum swamps the mixer's part in the check (the first GPU run saw
3.2e-2 train/prefill and 9.1e-2 decode, at the bf16 ulp of |x|). The published benchmark's
inputs are randn * 0.02, and the norm makes the mixer's output independent of the scale:
rat rows use them (the timings do not depend on it)."""

SAME = {
    "attention": (
        True,
        "same projections, rotate-half RoPE (theta 10000, float32, cast back), "
        "causal softmax with scale head_dim**-0.5; no biases, no qk-norm",
    ),
    "local_attention": (
        True,
        "as attention; a key is visible from itself and the window - 1 "
        "tokens before it (archlab's convention); decode: a ring buffer of "
        "window slots",
    ),
    "ssm": (
        True,
        "mamba's Mamba-2 parameterisation on both sides (weights map one to one); "
        "the peer rounds y + D x to the compute dtype before the gated RMSNorm (archlab: "
        "float32). Not fla.layers.Mamba2: that layer is not in fla-core (it ships in "
        "flash-linear-attention), and without mamba_ssm (absent here) it runs a naive "
        "PyTorch SSD that materialises [B, chunks, L, L, H, N]",
    ),
    "rnn": (True, "same gates and recurrence (float32 scan, output gate in the compute dtype)"),
    "mlp": (True, "same projections, exact-erf GELU"),
    "rat": (
        True,
        "the published layer includes its input RMSNorm (eps 1e-6) and the "
        "residual: archlab is timed as x + mixer(norm(x)) of the same block; the published "
        "layer keeps float32 weights under bf16 autocast and rounds the running keys and "
        "values to bf16 before attending (archlab's kernels: float32 scan)",
    ),
}


def make_peer(kind: str, setup: Setup, rat_repo: str | None) -> nn.Module:
    device, dtype = setup.device, setup.dtype
    if kind == "attention":
        peer = AttentionPeer(setup)
    elif kind == "local_attention":
        peer = AttentionPeer(setup, window=setup.window)
    elif kind == "mlp":
        peer = MLPPeer(setup, 4 * setup.d_model, "gelu")
    elif kind == "rnn":
        peer = RNNPeer(setup)
    elif kind == "ssm":
        if device.type != "cuda":
            raise PeerUnavailable("not available: fla-core's Triton kernels need CUDA")
        peer = FlaMamba2Peer(setup)
    elif kind == "rat":
        return PublishedRATPeer(setup, rat_repo)  # float32 weights (autocast), on CUDA
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return peer.to(device=device, dtype=dtype)


LOADERS = {
    "attention": load_attention,
    "local_attention": load_attention,
    "mlp": load_mlp,
    "rnn": load_rnn,
    "ssm": load_ssm,
    "rat": load_rat,
}


def load_weights(peer: nn.Module, archlab_block: nn.Module, kind: str | None = None) -> None:
    """Copy archlab's parameters into the peer, so that both compute the same function.
    `archlab_block` is `model.blocks[i]` (its `.mixer`, and `.norm` for rat) or a bare mixer
    (every kind but rat)."""
    if kind is None:
        kind = {
            AttentionPeer: "attention",
            MLPPeer: "mlp",
            RNNPeer: "rnn",
            FlaMamba2Peer: "ssm",
            PublishedRATPeer: "rat",
        }[type(peer)]
    LOADERS[kind](peer, archlab_block)


def build_archlab(kind: str, setup: Setup):
    """(model, block) of a one-block archlab model of `kind` (public API only)."""
    model = archlab.build(setup.spec(kind), device=setup.device)
    block = model.blocks[0]
    block.mixer.select_backend(setup.device)
    return model, block


class ArchlabSide:
    """archlab's block as a layer: the mixer alone, or for rat x + mixer(norm(x))."""

    def __init__(self, kind: str, block: nn.Module) -> None:
        self.kind, self.block = kind, block
        self.mixer, self.norm = block.mixer, block.norm
        self.residual = kind == "rat"

    @property
    def backend(self) -> str | None:
        b = getattr(self.mixer, "backend", None)
        return None if b is None else str(b)

    def parameters(self):
        return self.block.parameters() if self.residual else self.mixer.parameters()

    def forward(self, x):
        return x + self.mixer(self.norm(x)) if self.residual else self.mixer(x)

    def allocate_cache(self, batch: int, max_len: int):
        return self.mixer.allocate_cache(batch, max_len)

    def prefill(self, x, cache):
        _set_length(cache, 0)
        return self._prefill(x, cache)

    def step(self, x, cache, pos):
        _set_length(cache, pos)
        with torch.no_grad():
            return self._step(x, cache)

    def _prefill(self, x, cache):
        if self.residual:
            return x + self.mixer.prefill(self.norm(x), cache)
        return self.mixer.prefill(x, cache)

    def _step(self, x, cache):
        return (
            x + self.mixer.step(self.norm(x), cache) if self.residual else self.mixer.step(x, cache)
        )


class ArchlabCompiledSide(ArchlabSide):
    """archlab's layer as `archlab profile --compile` runs it: the forward (train), the
    prefill and the decode step each under torch.compile with static shapes (the run's
    --compile backend); the cache's length is set outside the compiled code."""

    def __init__(self, kind: str, block: nn.Module, mode: str) -> None:
        super().__init__(kind, block)
        self._forward = compiled(super().forward, mode, False)
        self._prefill = compiled(self._prefill, mode, False)
        self._step = compiled(self._step, mode, False)

    def forward(self, x):
        return self._forward(x)


def _set_length(cache, n: int) -> None:
    if hasattr(cache, "set_length"):
        cache.set_length(n)
    else:
        cache.length = n


# ---- timing ---------------------------------------------------------------------------------


def is_oom(e: BaseException) -> bool:
    if isinstance(e, torch.cuda.OutOfMemoryError):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "cudaerrormemory" in text)


def free_memory(collect: bool = False) -> None:
    """Return cached CUDA blocks; `collect` also runs the garbage collector (slow with
    torch imported: after failures and between kinds only)."""
    if collect:
        gc.collect()
    if torch.cuda.is_available():
        try:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        except RuntimeError:
            pass


def _short(e: BaseException) -> str:
    line = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {line[:240]}"


def time_reps(fn: Callable[[], object], device, budget_s: float, max_reps: int) -> list[float]:
    """Milliseconds of each repetition after one warm-up run (that also sizes the count)."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        est = start.elapsed_time(end)
    else:
        t0 = time.perf_counter()
        fn()
        est = (time.perf_counter() - t0) * 1e3
    reps = max(3, min(max_reps, int(budget_s * 1e3 / max(est, 1e-3))))
    samples = []
    for _ in range(reps):
        if device.type == "cuda":
            start.record()
            fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def write_trace(fn: Callable[[], object], device, path: str, reps: int = 3) -> None:
    """`reps` calls of `fn` under torch.profiler: the kernels by total device time, and the
    device time summed over kernels against the wall time (what is left is the device
    idling, waiting for the host), written to `path`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    synchronize(device)
    t0 = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(reps):
            fn()
        synchronize(device)
    wall_ms = (time.perf_counter() - t0) * 1e3 / reps
    events = prof.key_averages()
    device_us = sum(getattr(e, "self_device_time_total", 0) for e in events) / reps
    sort = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        f.write(f"per call: wall {wall_ms:.3f} ms, kernels {device_us / 1e3:.3f} ms\n")
        f.write(events.table(sort_by=sort, row_limit=30, max_name_column_width=90))


def run_side(side, mode: str, x: torch.Tensor, T: int, setup: Setup, label: str = "") -> dict:
    """Time one side (archlab's layer or a peer) in one mode on input x. Returns a dict
    with status, ms, first_call_s, reps, cuda_graph, note, and `sample` (a slice of the
    output of the first call, for the check). With `setup.trace_dir`, a profile of a few
    calls is written there as `label`.txt."""
    device = setup.device
    r: dict = {"status": "ok", "ms": None, "first_call_s": None, "reps": 0, "note": ""}
    cache = fn = None
    try:
        if mode == "train":
            xg = x.detach().clone().requires_grad_()
            grad = torch.randn_like(x)
            params = [p for p in side.parameters() if p.requires_grad]

            def fn():
                out = side.forward(xg)
                out.backward(grad)
                for p in params:
                    p.grad = None
                xg.grad = None
                return out.detach()

        elif mode == "prefill":
            cache = side.allocate_cache(x.shape[0], T)

            def fn():
                with torch.no_grad():
                    return side.prefill(x, cache)

        else:
            cache = side.allocate_cache(x.shape[0], T + 1)

            def fn():
                return side.step(x, cache, T)

        out, r["first_call_s"] = _first_call(side, fn, device)
        r["sample"] = _sample(out, mode)
        del out
        if mode == "decode" and device.type == "cuda":
            fn, why = graph_of(fn, device)
            r["cuda_graph"] = not why
            if why:
                r["note"] = f"no CUDA graph: {why}; timed eagerly"
        samples = time_reps(fn, device, setup.row_budget_s, setup.max_reps)
        r["ms"], r["reps"] = statistics.median(samples), len(samples)
        r["spread"] = (max(samples) - min(samples)) / r["ms"] if r["ms"] else None
        if setup.trace_dir and label:
            write_trace(fn, device, os.path.join(setup.trace_dir, f"{label}.txt"))
    except PeerUnavailable as e:
        r.update(status="n/a", note=str(e), ms=None)
        r.pop("sample", None)
    except Exception as e:  # noqa: BLE001 - OOM and failures are rows
        r["status"] = "oom" if is_oom(e) else "error"
        r["error"] = _short(e)
        r["ms"] = None
        r.pop("sample", None)
        for p in side.parameters():  # a backward cut short leaves gradients
            p.grad = None
    finally:
        cache = fn = None  # noqa: F841 - drops the cache, the graph and its pool
        free_memory(collect=r["status"] != "ok")
    return r


def _first_call(side, fn, device):
    """The first call (compilation, autotuning), timed apart; a peer whose compiled
    variant fails takes its next variant (noted on the row by the caller)."""
    while True:
        synchronize(device)
        t0 = time.perf_counter()
        try:
            out = fn()
            synchronize(device)
            return out, time.perf_counter() - t0
        except Exception as e:  # noqa: BLE001
            if is_oom(e) or isinstance(e, PeerUnavailable):
                raise
            nxt = getattr(side, "next_variant", None)
            failed = getattr(side, "impl", "")
            if nxt is None or not nxt():
                raise
            side.fallbacks = [*getattr(side, "fallbacks", []), f"{failed}: {_short(e)}"]
            free_memory(collect=True)


def _sample(out: torch.Tensor, mode: str) -> torch.Tensor:
    """What the check compares: the first sequence's last 4096 positions (train, prefill)
    or the first 64 sequences (decode)."""
    out = out.detach()
    s = out[:64] if mode == "decode" else out[:1, -4096:]
    return s.clone()


def compare(a: torch.Tensor, p: torch.Tensor, dtype: torch.dtype) -> dict:
    """Relative Frobenius error and max abs difference of two outputs."""
    a, p = a.float(), p.float()
    rel = ((a - p).norm() / a.norm().clamp_min(1e-30)).item()
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    return {"rel_err": rel, "max_abs": (a - p).abs().max().item(), "match": rel <= tol, "tol": tol}


# ---- the run ----------------------------------------------------------------------------------


def cases(setup: Setup, modes: list[str]) -> list[tuple[str, int, int]]:
    """(mode, B, T) of one kind, the modes interleaved shape by shape (train, prefill and
    decode of the first shapes first), so that a run cut by its time budget has every mode."""
    per_mode = [
        [(mode, B, T) for B, T in (setup.decode if mode == "decode" else setup.shapes)]
        for mode in modes
    ]
    longest = max((len(c) for c in per_mode), default=0)
    return [c[i] for i in range(longest) for c in per_mode if i < len(c)]


def run_kind(kind, setup, args, deadline, save) -> list[dict]:
    """Every (mode, shape) row of one kind: archlab's block and its peer on the same input."""
    rows: list[dict] = []
    same, why = SAME[kind]
    base = {"kind": kind, "same_function": same, "same_function_note": why}
    try:
        model, block = build_archlab(kind, setup)
    except Exception as e:  # noqa: BLE001
        row = {**base, "status": "error", "error": f"archlab block: {_short(e)}"}
        save(row)
        return [row]
    archlab_side = ArchlabSide(kind, block)
    fast_side = ArchlabCompiledSide(kind, block, setup.compile) if setup.compile != "none" else None
    peer, peer_error = None, ""
    try:
        peer = make_peer(kind, setup, args.rat_repo)
        load_weights(peer, block, kind)
    except PeerUnavailable as e:
        peer_error = str(e) if str(e).startswith("not available") else f"not available: {e}"
    except Exception as e:  # noqa: BLE001
        peer_error = f"peer error: {_short(e)}"
        peer = None
    if peer is None:
        base["same_function"], base["same_function_note"] = None, peer_error
    elif kind == "rat":
        base["peer_patches"] = list(peer.m["patches"])
    for mode, B, T in cases(setup, args.modes):
        row = {
            **base,
            "mode": mode,
            "batch": B,
            "seq_len": T,
            "archlab_backend": archlab_side.backend,
        }
        if deadline and time.monotonic() > deadline:
            row.update(status="skipped", note="time budget of the run spent")
            save(row)
            rows.append(row)
            continue
        torch.manual_seed(0)
        shape = (B, 1 if mode == "decode" else T, setup.d_model)
        x = torch.randn(shape, device=setup.device, dtype=setup.dtype)
        if kind == "rat":  # as the published benchmark's inputs; see RESIDUAL_INPUT_SCALE
            x *= RESIDUAL_INPUT_SCALE
        label = f"{kind}_{mode}_{B}x{T}"
        a = run_side(archlab_side, mode, x, T, setup, f"{label}_archlab")
        c = SKIPPED
        if fast_side is not None:
            c = run_side(fast_side, mode, x, T, setup, f"{label}_archlab_compiled")
        p = {"status": "n/a"}
        if peer is not None:
            p = run_side(peer, mode, x, T, setup, f"{label}_peer")
        _fill(row, a, p, peer, peer_error, kind, x, setup, mode)
        _fill_compiled(row, a, c, p, setup)
        del x
        free_memory()
        save(row)
        rows.append(row)
    del peer, archlab_side, fast_side, block, model
    free_memory(collect=True)
    return rows


def _fill(row, a, p, peer, peer_error, kind, x, setup, mode) -> None:
    row["archlab_ms"], row["archlab_status"] = a["ms"], a["status"]
    row["archlab_first_call_s"] = a["first_call_s"]
    row["archlab_reps"], row["archlab_cuda_graph"] = a["reps"], a.get("cuda_graph")
    row["archlab_spread"], row["peer_spread"] = a.get("spread"), p.get("spread")
    if a.get("error"):
        row["archlab_error"] = a["error"]
    if peer is None:
        row.update(peer_status="n/a", peer_ms=None, peer_impl=None, note=peer_error)
    else:
        row["peer_ms"], row["peer_status"] = p["ms"], p["status"]
        row["peer_first_call_s"], row["peer_reps"] = p["first_call_s"], p["reps"]
        row["peer_cuda_graph"], row["peer_impl"] = p.get("cuda_graph"), peer.impl
        if p.get("error"):
            row["peer_error"] = p["error"]
        if getattr(peer, "fallbacks", None):
            row["peer_fallbacks"] = list(peer.fallbacks)
    notes = [n for n in (a.get("note"), p.get("note")) if n]
    if notes:
        row["note"] = "; ".join([row.get("note") or "", *notes]).strip("; ")
    row["speed_ratio"] = (
        p["ms"] / a["ms"] if a.get("ms") and p.get("ms") else None
    )  # > 1: archlab faster
    if "sample" in a and "sample" in p:
        sa, sp = a["sample"], p["sample"]
        if kind == "rat" and mode != "decode":  # compare the mixer part, not the residual
            xs = x[:1, -4096:]
            sa, sp = sa - xs, sp - xs
        elif kind == "rat":
            sa, sp = sa - x[:64], sp - x[:64]
        row["check"] = compare(sa, sp, setup.dtype)
    row["status"] = "ok" if a["status"] == "ok" and p.get("status") in ("ok", "n/a") else "partial"


SKIPPED = {"status": "skipped", "ms": None, "first_call_s": None, "reps": 0}


def compiled_skip_note(setup: Setup) -> str | None:
    """Why the archlab-compiled rows are not timed (None when they are)."""
    if setup.compile != "none":
        return None
    why = "the --small default" if setup.small else "--compile none"
    return f"archlab compiled: not timed ({why}; --compile inductor times it)"


def _fill_compiled(row, a, c, p, setup) -> None:
    """archlab's layer under torch.compile (ArchlabCompiledSide): its time, first call
    (the compile), status, and its output against archlab's eager output."""
    row["archlab_compiled_ms"], row["archlab_compiled_status"] = c["ms"], c["status"]
    row["archlab_compiled_first_call_s"] = c["first_call_s"]
    row["archlab_compiled_reps"], row["archlab_compiled_spread"] = c["reps"], c.get("spread")
    row["archlab_compiled_cuda_graph"] = c.get("cuda_graph")
    if c.get("error"):
        row["archlab_compiled_error"] = c["error"]
    if c.get("note"):
        row["archlab_compiled_note"] = c["note"]
    row["compiled_speed_ratio"] = (
        p["ms"] / c["ms"] if c.get("ms") and p.get("ms") else None
    )  # > 1: compiled archlab faster than the peer
    if "sample" in a and "sample" in c:
        row["compiled_check"] = compare(a["sample"], c["sample"], setup.dtype)
    if c["status"] not in ("ok", "skipped"):
        row["status"] = "partial"


def fmt_ms(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _ms_cell(r: dict, side: str) -> str:
    """A side's time, or its status (OOM, ERROR, N/A...); '-' for a side not timed."""
    if r.get(f"{side}_ms"):
        return fmt_ms(r[f"{side}_ms"])
    status = r.get(f"{side}_status") or r.get("status", "")
    return "-" if status == "skipped" and side == "archlab_compiled" else status.upper()


def table(rows: list[dict]) -> str:
    """archlab eager, archlab compiled (its layer under torch.compile) and the peer, each
    row's ratios peer ms / archlab ms (above 1: archlab faster)."""
    head = ["kind", "mode", "BxT", "archlab ms", "compiled ms", "peer ms", "archlab/peer"]
    head += ["compiled/peer", "backend", "check", "note"]
    lines = []
    for r in rows:
        if "mode" not in r:
            lines.append([r["kind"], *["-"] * 9, r.get("error", "")])
            continue
        ratio = f"x{r['speed_ratio']:.2f}" if r.get("speed_ratio") else ""
        cratio = f"x{r['compiled_speed_ratio']:.2f}" if r.get("compiled_speed_ratio") else ""
        check = r.get("check")
        chk = f"{check['rel_err']:.1e}{'' if check['match'] else ' !'}" if check else ""
        if r.get("compiled_check") and not r["compiled_check"]["match"]:
            chk += " (compiled !)"
        note = (
            r.get("note")
            or r.get("archlab_error")
            or r.get("archlab_compiled_error")
            or r.get("peer_error")
            or ""
        )
        lines.append(
            [
                r["kind"],
                r["mode"],
                f"{r['batch']}x{r['seq_len']}",
                _ms_cell(r, "archlab"),
                _ms_cell(r, "archlab_compiled"),
                _ms_cell(r, "peer"),
                ratio,
                cratio,
                str(r.get("archlab_backend")),
                chk,
                note[:90],
            ]
        )
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines, strict=False)]
    right = {3, 4, 5, 6, 7}
    out = []
    for i, line in enumerate([head, *lines]):
        cells = [
            str(c).rjust(w) if j in right else str(c).ljust(w)
            for j, (c, w) in enumerate(zip(line, widths, strict=True))
        ]
        out.append("  ".join(cells).rstrip())
        if i == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def environment(setup: Setup) -> dict:
    cuda = setup.device.type == "cuda"
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else (platform.processor() or "cpu"),
        "torch": torch.__version__,
        "triton": triton_version,
        "fla": fla_version(),
        "archlab": getattr(archlab, "__version__", None),
        "python": platform.python_version(),
        "setup": {
            "d_model": setup.d_model,
            "heads": setup.heads,
            "dtype": setup.dtype_name,
            "window": setup.window,
            "rat_chunk_size": setup.chunk,
            "ssm": setup.ssm,
            "shapes": setup.shapes,
            "decode": setup.decode,
            "compile": setup.compile,
            "row_budget_s": setup.row_budget_s,
        },
    }


def small_setup() -> Setup:
    """The --small setup on the CPU (for tests)."""
    return Setup(build_parser().parse_args(["--small", "--cpu"]))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kinds", default=",".join(KINDS), help="comma-separated, run in this order"
    )
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--shapes", help="train/prefill shapes, e.g. 64x4096,16x16k")
    parser.add_argument("--decode", help="decode shapes (batch x position), e.g. 512x4096")
    parser.add_argument("--out", help="write the JSON here (rewritten after every row)")
    parser.add_argument("--small", action="store_true", help="tiny sizes on the CPU (CI)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even with CUDA")
    parser.add_argument("--rat-repo", help="a checkout of github.com/CLAIRE-Labo/RAT")
    parser.add_argument(
        "--compile",
        choices=["inductor", "eager", "none"],
        help="how the peers and archlab's compiled side compile (default: inductor; "
        "--small: none, which also skips archlab's compiled side)",
    )
    parser.add_argument("--row-budget", type=float, help="seconds of timed repetitions per side")
    parser.add_argument(
        "--trace",
        metavar="DIR",
        help="also profile a few calls of each side of each row (torch.profiler) and "
        "write their kernel tables to DIR",
    )
    parser.add_argument(
        "--time-budget",
        type=float,
        default=0.0,
        help="seconds for the whole run; later rows are skipped with a note",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(KINDS) | set(args.modes) - set(MODES)
    if unknown:
        parser.error(f"unknown kinds or modes: {sorted(unknown)}")
    setup = Setup(args)
    if setup.compile != "none" or "rat" in kinds:
        dyn = torch._dynamo.config
        for name in ("recompile_limit", "cache_size_limit"):  # a graph per shape and mode
            if hasattr(dyn, name):
                setattr(dyn, name, max(getattr(dyn, name), 64))
    began = time.monotonic()
    doc = {**environment(setup), "rows": []}

    def save(row: dict) -> None:
        doc["rows"].append(row)
        doc["elapsed_s"] = round(time.monotonic() - began, 1)
        print(table([row]).splitlines()[-1], flush=True)
        sides = ("archlab", "archlab_compiled", "peer")
        firsts = [row.get(f"{side}_first_call_s") for side in sides]
        firsts = ", ".join("-" if f is None else f"{f:.1f}" for f in firsts)
        keys = ("archlab_error", "archlab_compiled_error", "peer_error", "peer_fallbacks")
        extra = [row[k] for k in keys if row.get(k)]
        elapsed = time.monotonic() - began
        print(
            f"    first calls (archlab, compiled, peer) {firsts} s; at {elapsed:.0f} s; "
            f"{extra or ''}",
            flush=True,
        )
        if args.out:
            with open(args.out, "w") as f:
                json.dump(doc, f, indent=1, default=str)

    print(
        f"# {doc['device']}, torch {doc['torch']}, triton {doc['triton']}, {doc['fla']}", flush=True
    )
    skipped = compiled_skip_note(setup)
    if skipped:
        doc["notes"] = [skipped]
        print(f"# {skipped}", flush=True)
    for i, kind in enumerate(kinds):
        deadline = None
        if args.time_budget:
            left = args.time_budget - (time.monotonic() - began)
            deadline = time.monotonic() + max(left, 0) / (len(kinds) - i)  # fair share, rolls over
        print(f"# {kind}", flush=True)
        run_kind(kind, setup, args, deadline, save)
    print()
    order = {m: i for i, m in enumerate(MODES)}
    by_mode = sorted(
        doc["rows"],
        key=lambda r: (kinds.index(r["kind"]), order.get(r.get("mode"), 9), r.get("seq_len", 0)),
    )
    print(table(by_mode))
    slower = [
        r
        for r in doc["rows"]
        if any(r.get(k) and r[k] < 1 for k in ("speed_ratio", "compiled_speed_ratio"))
    ]
    if slower:
        print("\narchlab slower than its peer (eager; compiled):")
        for r in slower:
            ratios = "; ".join(
                f"x{r[k]:.2f}" if r.get(k) else "-" for k in ("speed_ratio", "compiled_speed_ratio")
            )
            print(f"  {r['kind']} {r['mode']} {r['batch']}x{r['seq_len']}: {ratios}")
    doc["elapsed_s"] = round(time.monotonic() - began, 1)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(doc, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
