"""Triton kernels of the `rnn` block's core: fused gates and the gated linear recurrence.

Given the in_proj output u = [z | v | gpre] [B, T, 3D] (any float dtype) and gate_bias [D]:
    g_t = sigmoid(gpre_t + gate_bias), s_t = g_t * s_{t-1} + (1 - g_t) * v_t, y_t =
    sigmoid(z_t) * s_t,
all in float32 in registers; y is stored in u's dtype (`reference.rnn_core_reference`).

Layout: a program owns BD channels of one batch row (grid (cdiv(D, BD), B)) and walks time
in tiles of BT tokens; a tile [BT, BD] is loaded coalesced along channels, the recurrence
inside it runs as one `tl.associative_scan` over the token axis on the affine maps
s -> a * s + b, and the state before the tile is carried in registers.

Backward: the adjoint a_t = dL/ds_t = dy_t * sigmoid(z_t) + g_{t+1} a_{t+1} (a reverse scan),
then dv_t = (1 - g_t) a_t, dgpre_t = (1 - g_t) a_t (s_t - v_t), dz_t = dy_t s_t sigmoid'(z_t),
d(initial state) = g_0 a_0, and dgate_bias = sum over B, T of dgpre (per-program sums over T
in float32, then a torch sum over B: deterministic, no atomics). The program walks its tiles
from last to first; for each it recomputes the tile's states in float32 from a checkpoint.
What the forward saves: u itself and the state before every tile (float32 [B, cdiv(T, BT),
D], 1/BT of a float32 copy of s: 67 MB at 64 x 4096 x 2048 with BT = 32, where saving s
would cost 2.1 GB per layer). The recomputation reads v and gpre, which the backward needs
anyway, and costs one extra in-register scan per tile. The reverse scan runs as a forward
scan over the tile in reversed token order (`tl.flip`), as in kernels/rat/triton_scan.py
(`associative_scan(reverse=True)` has been reported wrong for non-commutative combines,
triton-lang/triton#4362).

Tiles: a forward that a backward will follow (grad enabled and an input requiring grad)
uses the training tile (`GPU_TILES`), whose BT the backward's checkpoints need; a forward
alone (inference, prefill) picks its own BT, BD and warps (`GPU_FORWARD_TILES`). The
tile is chosen in `rnn_core_triton` and passed to the forward op as ints, so that
`torch.compile` traces it as a constant (dynamo guards on the grad mode and requires_grad).

Entry points (torch custom ops in the `archlab` namespace, with fake implementations; the
core's backward is attached with `register_autograd`, so `torch.compile` traces forward and
backward without a graph break):
- `rnn_core_triton(u, gate_bias, state=None) -> (y, last_state)`: differentiable in u,
  gate_bias and state (also through last_state).
- `rnn_step_triton(u, gate_bias, state, has_state) -> y`: one decode step, state updated
  in place.

Without a GPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before
this module is imported) with small tiles.
"""

# fmt: off
from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from archlab.kernels.runtime import triton_interpreted as _interpret

Tensor = torch.Tensor

# GPU tiles (tokens per tile, channels per program, warps) by batch: the first entry whose
# minimum batch the batch reaches. A module global, read at each launch, so that a
# benchmark can sweep it (`benchmarks/rnn_scan.py --sweep`). BT is also the checkpoint
# interval. Chosen from that sweep on an H200 (2026-11-30, D = 2048, bf16, forward +
# backward of the core): with 16 or more rows one warp per program of 16 channels trained
# fastest (9.9 ms at 64 x 4096 and 10.5 ms at 16 x 16384, against 17.5 and 18.4 ms with
# the former (32, 32, 4)); with 4 rows so few warps leave the GPU idle and (64, 16, 2) was
# fastest (17.1 ms at 4 x 65536, against 24.0).
GPU_TILES = ((16, (32, 16, 1)), (0, (64, 16, 2)))
# The forward alone (no backward follows, so no checkpoint interval to keep), by batch as
# above, from the same sweep timing the forward alone (2026-11-30, eleven tiles): with 16
# or more rows the training tile was fastest too (2.04 ms at 64 x 4096, 2.45 at
# 16 x 16384); with 4 rows (64, 32, 8) (3.94 ms at 4 x 65536, against 4.28 with the
# training tile); with 2 rows (128, 32, 8) (5.05 ms at 2 x 131072, against 7.63).
GPU_FORWARD_TILES = ((16, (32, 16, 1)), (4, (64, 32, 8)), (0, (128, 32, 8)))
BD_STEP_GPU, WARPS_STEP_GPU = 256, 2
# the interpreter: small tiles, so that the CPU tests cover several tiles and channel
# blocks; the forward-only tile differs, so that they cover both paths
BT_CPU, BD_CPU = 16, 16
CPU_FORWARD_TILES = (32, 8, 1)


def tiles(device: torch.device, batch: int, forward_only: bool = False
          ) -> tuple[int, int, int]:
    """(BT, BD, num_warps) of the scan kernels on `device` for `batch` rows: the training
    tile, or with `forward_only` (no backward will follow) the forward's own."""
    if device.type == "cuda" and not _interpret():
        table = GPU_FORWARD_TILES if forward_only else GPU_TILES
        return next(tile for least, tile in table if batch >= least)
    return CPU_FORWARD_TILES if forward_only else (BT_CPU, BD_CPU, 1)


def needs_backward(*inputs: Tensor | None) -> bool:
    """Whether autograd will record the core: grad enabled and an input requiring grad."""
    return torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in inputs)


@triton.jit
def _combine(a1, b1, a2, b2):
    # composition of the affine maps s -> a * s + b (left first, then right)
    return a1 * a2, a2 * b1 + b2


@triton.jit
def _last_row(x, rows, BT: tl.constexpr):
    return tl.sum(tl.where(rows[:, None] == BT - 1, x, 0.0), axis=0)


@triton.jit
def _tile_states(U, bias, t, m, cols, c, b, T, D):
    """z, v, g and the states s [BT, BD] (float32) of the tile at tokens t, continuing from
    the state c before it. Padded rows and channels get a = 1, b = 0, so the tile's last
    row holds the state of its last real token."""
    ptr = U + (b * T + t)[:, None] * (3 * D) + cols[None, :]
    z = tl.load(ptr, mask=m, other=0.0).to(tl.float32)
    v = tl.load(ptr + D, mask=m, other=0.0).to(tl.float32)
    gpre = tl.load(ptr + 2 * D, mask=m, other=0.0).to(tl.float32)
    g = tl.sigmoid(gpre + bias[None, :])
    A, S = tl.associative_scan(
        (tl.where(m, g, 1.0), tl.where(m, (1.0 - g) * v, 0.0)), 0, _combine)
    return z, v, g, S + A * c[None, :]


@triton.jit
def rnn_fwd_kernel(U, BIAS, S0, Y, SLAST, CKPT, T, D, n_tiles,
                   HAS_S0: tl.constexpr, BT: tl.constexpr, BD: tl.constexpr):
    """Grid (cdiv(D, BD), B). u [B,T,3D], y [B,T,D] contiguous; writes y, the last state
    SLAST [B,D] and the state before every tile CKPT [B,n_tiles,D] (float32)."""
    b = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BT)
    cols = tl.program_id(0) * BD + tl.arange(0, BD)
    cmask = cols < D
    bias = tl.load(BIAS + cols, mask=cmask, other=0.0).to(tl.float32)
    c = tl.zeros([BD], tl.float32)
    if HAS_S0:
        c = tl.load(S0 + b * D + cols, mask=cmask, other=0.0).to(tl.float32)
    for j in range(n_tiles):
        tl.store(CKPT + (b * n_tiles + j) * D + cols, c, mask=cmask)
        t = j * BT + rows
        m = (t < T)[:, None] & cmask[None, :]
        z, v, g, s = _tile_states(U, bias, t, m, cols, c, b, T, D)
        y = tl.sigmoid(z) * s
        tl.store(Y + (b * T + t)[:, None] * D + cols[None, :], y.to(Y.dtype.element_ty), mask=m)
        c = _last_row(s, rows, BT)
    tl.store(SLAST + b * D + cols, c, mask=cmask)


@triton.jit
def rnn_bwd_kernel(U, BIAS, CKPT, DY, DLAST, DU, DBP, DS0, T, D, n_tiles,
                   HAS_DY: tl.constexpr, HAS_DLAST: tl.constexpr, HAS_S0: tl.constexpr,
                   BT: tl.constexpr, BD: tl.constexpr):
    """Grid (cdiv(D, BD), B), tiles from last to first. Writes du [B,T,3D] (u's dtype), the
    per-row bias-gradient sums DBP [B,D] and, with HAS_S0, d(initial state) DS0 [B,D]
    (float32). dy [B,T,D] and dlast [B,D] are read only when given."""
    b = tl.program_id(1).to(tl.int64)
    rows = tl.arange(0, BT)
    cols = tl.program_id(0) * BD + tl.arange(0, BD)
    cmask = cols < D
    bias = tl.load(BIAS + cols, mask=cmask, other=0.0).to(tl.float32)
    dlast = tl.zeros([BD], tl.float32)
    if HAS_DLAST:
        dlast = tl.load(DLAST + b * D + cols, mask=cmask, other=0.0).to(tl.float32)
    carry = tl.zeros([BD], tl.float32)  # the adjoint at the first token of the next tile
    dbias = tl.zeros([BD], tl.float32)
    ty = DU.dtype.element_ty
    for jj in range(n_tiles):
        j = n_tiles - 1 - jj
        # natural order: the tile's states, dz and the direct gradient into s
        t = j * BT + rows
        m = (t < T)[:, None] & cmask[None, :]
        c = tl.load(CKPT + (b * n_tiles + j) * D + cols, mask=cmask, other=0.0)
        z, v, g, s = _tile_states(U, bias, t, m, cols, c, b, T, D)
        sz = tl.sigmoid(z)
        du = DU + (b * T + t)[:, None] * (3 * D) + cols[None, :]
        direct = tl.zeros([BT, BD], tl.float32)
        if HAS_DY:
            dy = tl.load(DY + (b * T + t)[:, None] * D + cols[None, :], mask=m, other=0.0)
            dy = dy.to(tl.float32)
            tl.store(du, (dy * s * sz * (1.0 - sz)).to(ty), mask=m)
            direct = dy * sz
        else:
            tl.store(du, tl.zeros([BT, BD], tl.float32).to(ty), mask=m)
        if HAS_DLAST:
            direct += tl.where((t == T - 1)[:, None], dlast[None, :], 0.0)
        # reversed order: a_t = direct_t + g_{t+1} a_{t+1}, carried in from the next tile
        t1 = j * BT + (BT - 1 - rows) + 1
        m1 = (t1 < T)[:, None] & cmask[None, :]
        gpre1 = tl.load(U + (b * T + t1)[:, None] * (3 * D) + 2 * D + cols[None, :], mask=m1,
                        other=0.0).to(tl.float32)
        g1 = tl.where(m1, tl.sigmoid(gpre1 + bias[None, :]), 0.0)
        A, S = tl.associative_scan((g1, tl.flip(direct, 0)), 0, _combine)
        adj_r = S + A * carry[None, :]
        carry = _last_row(adj_r, rows, BT)
        adj = tl.flip(adj_r, 0)
        dv = (1.0 - g) * adj
        dgpre = tl.where(m, dv * (s - v), 0.0)
        tl.store(du + D, dv.to(ty), mask=m)
        tl.store(du + 2 * D, dgpre.to(ty), mask=m)
        dbias += tl.sum(dgpre, axis=0)
    tl.store(DBP + b * D + cols, dbias, mask=cmask)
    if HAS_S0:
        gpre0 = tl.load(U + b * T * 3 * D + 2 * D + cols, mask=cmask, other=0.0).to(tl.float32)
        tl.store(DS0 + b * D + cols, tl.sigmoid(gpre0 + bias) * carry, mask=cmask)


@triton.jit
def rnn_step_kernel(U, BIAS, S, Y, D, s_stride, HAS_STATE: tl.constexpr, BD: tl.constexpr):
    """Grid (cdiv(D, BD), B). u [B,3D] and y [B,D] contiguous; the state rows [B,D] (row
    stride s_stride) are read when HAS_STATE and overwritten with the new state."""
    b = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0) * BD + tl.arange(0, BD)
    m = cols < D
    ptr = U + b * 3 * D + cols
    z = tl.load(ptr, mask=m, other=0.0).to(tl.float32)
    v = tl.load(ptr + D, mask=m, other=0.0).to(tl.float32)
    gpre = tl.load(ptr + 2 * D, mask=m, other=0.0).to(tl.float32)
    g = tl.sigmoid(gpre + tl.load(BIAS + cols, mask=m, other=0.0).to(tl.float32))
    s = (1.0 - g) * v
    if HAS_STATE:
        s += g * tl.load(S + b * s_stride + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(S + b * s_stride + cols, s.to(S.dtype.element_ty), mask=m)
    tl.store(Y + b * D + cols, (tl.sigmoid(z) * s).to(Y.dtype.element_ty), mask=m)


# --- custom ops -------------------------------------------------------------------------------


def _check_device(u: Tensor) -> None:
    if u.device.type != "cuda" and not _interpret():
        raise RuntimeError("the rnn Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1)")


@torch.library.custom_op("archlab::rnn_core_fwd", mutates_args=())
def rnn_core_fwd(u: Tensor, gate_bias: Tensor, state: Optional[Tensor],  # noqa: UP045
                 BT: int, BD: int, warps: int) -> tuple[Tensor, Tensor, Tensor]:
    """u [B,T,3D] contiguous -> y [B,T,D] (u's dtype), last state [B,D] and the
    checkpoints [B,cdiv(T,BT),D] (float32), in tiles of BT tokens and BD channels (powers
    of two) with `warps` warps per program."""
    _check_device(u)
    B, T, D3 = u.shape
    D = D3 // 3
    n_tiles = triton.cdiv(T, BT)
    y = torch.empty(B, T, D, device=u.device, dtype=u.dtype)
    last = torch.empty(B, D, device=u.device, dtype=torch.float32)
    ckpt = torch.empty(B, n_tiles, D, device=u.device, dtype=torch.float32)
    rnn_fwd_kernel[(triton.cdiv(D, BD), B)](
        u, gate_bias, state if state is not None else last, y, last, ckpt, T, D, n_tiles,
        HAS_S0=state is not None, BT=BT, BD=BD, num_warps=warps)
    return y, last, ckpt


@rnn_core_fwd.register_fake
def _(u, gate_bias, state, BT, BD, warps):
    B, T, D3 = u.shape
    D = D3 // 3
    return (u.new_empty(B, T, D), u.new_empty(B, D, dtype=torch.float32),
            u.new_empty(B, (T + BT - 1) // BT, D, dtype=torch.float32))


@torch.library.custom_op("archlab::rnn_core_bwd", mutates_args=())
def rnn_core_bwd(dy: Optional[Tensor], dlast: Optional[Tensor],  # noqa: UP045
                 u: Tensor, gate_bias: Tensor, ckpt: Tensor, has_state: bool, BT: int
                 ) -> tuple[Tensor, Tensor, Tensor]:
    """-> du [B,T,3D] (u's dtype), dgate_bias [D] (gate_bias's dtype), d(initial state)
    [B,D] float32 (empty [0] without `has_state`). ckpt and BT as in and from the forward."""
    _check_device(u)
    B, T, D3 = u.shape
    D = D3 // 3
    _, BD, warps = tiles(u.device, B)
    dy = dy.contiguous() if dy is not None else None
    dlast = dlast.contiguous() if dlast is not None else None
    du = torch.empty_like(u)
    dbp = torch.empty(B, D, device=u.device, dtype=torch.float32)
    ds0 = torch.empty(B if has_state else 0, D, device=u.device, dtype=torch.float32)
    rnn_bwd_kernel[(triton.cdiv(D, BD), B)](
        u, gate_bias, ckpt, dy if dy is not None else u, dlast if dlast is not None else u,
        du, dbp, ds0, T, D, ckpt.shape[1],
        HAS_DY=dy is not None, HAS_DLAST=dlast is not None, HAS_S0=has_state, BT=BT, BD=BD,
        num_warps=warps)
    return du, dbp.sum(0).to(gate_bias.dtype), ds0 if has_state else ds0.view(0)


@rnn_core_bwd.register_fake
def _(dy, dlast, u, gate_bias, ckpt, has_state, BT):
    B, _, D3 = u.shape
    ds0 = u.new_empty(B, D3 // 3, dtype=torch.float32) if has_state else u.new_empty(0)
    return u.new_empty(u.shape), gate_bias.new_empty(gate_bias.shape), ds0.float()


def _setup_context(ctx, inputs, output):
    u, gate_bias, state, BT, _, _ = inputs
    ctx.save_for_backward(u, gate_bias, output[2])
    ctx.BT = BT
    ctx.state_dtype = state.dtype if state is not None else None
    ctx.mark_non_differentiable(output[2])
    ctx.set_materialize_grads(False)  # an unused output's gradient comes as None


def _backward(ctx, dy, dlast, _dckpt):
    u, gate_bias, ckpt = ctx.saved_tensors
    has_state = ctx.state_dtype is not None
    du, dbias, ds0 = torch.ops.archlab.rnn_core_bwd(dy, dlast, u, gate_bias, ckpt, has_state,
                                                    ctx.BT)
    return du, dbias, ds0.to(ctx.state_dtype) if has_state else None, None, None, None


rnn_core_fwd.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("archlab::rnn_step", mutates_args=("state",))
def rnn_step(u: Tensor, gate_bias: Tensor, state: Tensor, has_state: bool) -> Tensor:
    """u [B,3D] contiguous, state [B,D] with unit channel stride -> y [B,D] (u's dtype)."""
    _check_device(u)
    B, D = state.shape
    y = torch.empty(B, D, device=u.device, dtype=u.dtype)
    gpu = u.device.type == "cuda" and not _interpret()
    BD = BD_STEP_GPU if gpu else BD_CPU
    rnn_step_kernel[(triton.cdiv(D, BD), B)](
        u, gate_bias, state, y, D, state.stride(0), HAS_STATE=has_state, BD=BD,
        num_warps=WARPS_STEP_GPU if gpu else 1)
    return y


@rnn_step.register_fake
def _(u, gate_bias, state, has_state):
    return u.new_empty(state.shape)


# --- public functions -------------------------------------------------------------------------


def rnn_core_triton(u_BT3D: Tensor, gate_bias_D: Tensor, state_BD: Tensor | None = None
                    ) -> tuple[Tensor, Tensor]:
    """The `rnn` core: u = [z | v | gpre] [B, T, 3D], gate_bias [D], optional initial state
    [B, D] (any dtype) -> (y [B, T, D] in u's dtype, last state [B, D] float32). Same maths
    as `reference.rnn_core_reference`; differentiable in u, gate_bias and the state."""
    if u_BT3D.dim() != 3 or u_BT3D.shape[-1] % 3:
        raise ValueError(f"u must be [B, T, 3D], got {tuple(u_BT3D.shape)}")
    B, T, D3 = u_BT3D.shape
    D = D3 // 3
    if gate_bias_D.shape != (D,):
        raise ValueError(f"gate_bias must be [{D}], got {tuple(gate_bias_D.shape)}")
    if state_BD is not None and state_BD.shape != (B, D):
        raise ValueError(f"state must be [{B}, {D}], got {tuple(state_BD.shape)}")
    if T == 0:  # no kernel: nothing to scan
        last = (state_BD.float() if state_BD is not None
                else u_BT3D.new_zeros(B, D, dtype=torch.float32))
        return u_BT3D.new_empty(B, 0, D), last
    state = state_BD.contiguous() if state_BD is not None else None
    forward_only = not needs_backward(u_BT3D, gate_bias_D, state_BD)
    BT, BD, warps = tiles(u_BT3D.device, B, forward_only)
    y, last, _ = torch.ops.archlab.rnn_core_fwd(u_BT3D.contiguous(), gate_bias_D.contiguous(),
                                               state, BT, BD, warps)
    return y, last


def rnn_step_triton(u_B3D: Tensor, gate_bias_D: Tensor, state_BD: Tensor, has_state: bool
                    ) -> Tensor:
    """One decode step (`reference.rnn_step_reference`) in one kernel: u [B, 3D], gate_bias
    [D], state [B, D] (the cache, any float dtype) -> y [B, D] in u's dtype. The state is
    read only when `has_state` (else s_{-1} = 0) and overwritten in place with the new
    state (computed in float32, stored in the state's dtype; y uses the float32 one).
    No autograd."""
    B, D = state_BD.shape
    if tuple(u_B3D.shape) != (B, 3 * D):
        raise ValueError(f"u must be [{B}, {3 * D}], got {tuple(u_B3D.shape)}")
    if state_BD.stride(-1) == 1:
        return torch.ops.archlab.rnn_step(u_B3D.contiguous(), gate_bias_D.contiguous(),
                                          state_BD, has_state)
    tmp = state_BD.contiguous()
    y = torch.ops.archlab.rnn_step(u_B3D.contiguous(), gate_bias_D.contiguous(), tmp, has_state)
    state_BD.copy_(tmp)
    return y
