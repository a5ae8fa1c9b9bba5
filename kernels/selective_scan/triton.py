"""Mamba-1's selective scan in Triton, forward and backward (`reference.selective_scan`'s
maths, signature and float32 outputs).

Shapes: B batch, T tokens, E channels (d_inner), N d_state. Per channel e the state h [N]:

    h_t = exp(dt_t A) * h_{t-1} + dt_t x_t B_t,        y_t = <h_t, C_t>

Layout: a program owns BD channels of one batch row (grid (cdiv(E, BD), B)) and walks the
tokens one at a time, the state h [BD, N] in float32 registers; every step loads x_t, dt_t
[BD] and B_t, C_t [N] (any float dtype; the next token's before this token's arithmetic, a
one-token prefetch), computes the decay exp(dt A) on the fly (as exp2(dt * A log2 e)) and
stores y_t. N is padded to a power of two (masked), E to a multiple of BD.

What the forward keeps for backward: its inputs and the state before every chunk of CH
tokens, float32 [B, cdiv(T, CH), E, N] (N / CH of a float32 copy of x: at 16 x 4096 tokens,
E 4096, N 16 and CH 64, 268 MB, where keeping every state would cost 17 GB), and only when
an input needs a gradient. Never every state.

Backward: each program walks its chunks from last to first. For a chunk it (1) recomputes
the chunk's states from the checkpoint, writing the state before each token into its own
scratch slot (a float32 [CH, BD, N] buffer per program, overwritten chunk after chunk) and
computing dC_t = sum_e dy_t h_t; then (2) runs the reverse recurrence over the chunk,
reading h_{t-1} back from the scratch:

    g_t = dy_t C_t + exp(dt_{t+1} A) g_{t+1}           (g = dL/dh_t, float32 registers)
    dx_t = dt_t <g_t, B_t>,    dB_t = sum_e dt_t x_t g_t,
    ddt_t = x_t <g_t, B_t> + <g_t exp(dt_t A) h_{t-1}, A>,
    dA = sum_{b,t} dt_t g_t exp(dt_t A) h_{t-1},     d(initial state) = exp(dt_0 A) g_0.

No division by the decay anywhere (the states are recomputed forward from a checkpoint, never
unwound). The reductions over channels (dB, dC) are per-program partial sums, float32
[cdiv(E, BD), B, T, N], added by a torch sum; dA's over the batch likewise ([B, E, N]):
deterministic, no atomics. A barrier (`tl.debug_barrier`) separates the scratch's writes from
its reads and the next chunk's writes. Backward cost: two passes over the tokens (the
recomputation and the reverse one), each computing the decay; memory traffic: the inputs,
dy, the gradients, and the scratch written and read once per token (8 N bytes per channel).
Its temporary buffers, at the size above with BD 64: the scratch, B E CH N floats (268 MB),
and the dB, dC partials, 2 cdiv(E, BD) B T N floats (537 MB). On an H200 at that size it
took 2.54 ms forward and 23.8 ms forward + backward (benchmarks/selective_scan.py; not yet
checked there against the reference, nor tuned); the block sizes are module globals so that
a GPU session can sweep them.

Entry point: `selective_scan_triton(x, dt, A, B, C, initial_state=None) -> (y, final
state)`, a `torch.autograd.Function`, differentiable in every input. Without a GPU the
kernels run under Triton's interpreter (TRITON_INTERPRET=1, set before this module is
imported) with small blocks.
"""

# fmt: off
from __future__ import annotations

import torch
import triton
import triton.language as tl

from archlab.kernels.runtime import triton_interpreted as _interpret

Tensor = torch.Tensor

# GPU sizes (channels per program, tokens per checkpoint chunk, warps); module globals, read
# at each launch, so that a benchmark can sweep them. BD shrinks for large d_state so that
# the state [BD, N] stays at most MAX_STATE_ELEMS floats per program.
BD_GPU, CH_GPU, WARPS_GPU = 64, 64, 4
MAX_STATE_ELEMS = 1024
# the interpreter: small blocks, so that the CPU tests cover several chunks and channel blocks
BD_CPU, CH_CPU = 16, 16
MAX_D_STATE = 256  # larger states would need a block of fewer than 4 channels


def sizes(device: torch.device, d_state: int) -> tuple[int, int, int]:
    """(BD channels per program, CH tokens per checkpoint, num_warps) on `device`."""
    if device.type == "cuda" and not _interpret():
        n_pad = triton.next_power_of_2(d_state)
        return max(4, min(BD_GPU, MAX_STATE_ELEMS // n_pad)), CH_GPU, WARPS_GPU
    return BD_CPU, CH_CPU, 1


@triton.jit
def _step_inputs(X, DT, BM, CM, row, valid, cols, cmask, ns, nmask, E, N):
    """x_t, dt_t [BD] and B_t, C_t [N] of token `row` (= b * T + t), in float32; zeros
    unless `valid` (a scalar condition). The loops load the next token's inputs before the
    current token's arithmetic (a one-token prefetch), so that the loads' latency overlaps
    it."""
    # tl.where, not `&`: Triton's interpreter turns `vector & scalar` of booleans into int32,
    # which tl.load refuses as a mask
    cm, nm = tl.where(valid, cmask, False), tl.where(valid, nmask, False)
    x = tl.load(X + row * E + cols, mask=cm, other=0.0).to(tl.float32)
    dt = tl.load(DT + row * E + cols, mask=cm, other=0.0).to(tl.float32)
    bt = tl.load(BM + row * N + ns, mask=nm, other=0.0).to(tl.float32)
    ct = tl.load(CM + row * N + ns, mask=nm, other=0.0).to(tl.float32)
    return x, dt, bt, ct


@triton.jit
def selective_scan_fwd_kernel(X, DT, A, BM, CM, H0, Y, HT, CKPT, T, E, N, n_chunks,
                              HAS_H0: tl.constexpr, SAVE: tl.constexpr, CH: tl.constexpr,
                              BD: tl.constexpr, NP: tl.constexpr):
    """Grid (cdiv(E, BD), B). x, dt, y [B,T,E], B, C [B,T,N], A [E,N], h0, hT [B,E,N] and
    CKPT [B,n_chunks,E,N] contiguous; writes y, the final state hT and, with SAVE, the state
    before every chunk of CH tokens (float32)."""
    b = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0) * BD + tl.arange(0, BD)
    ns = tl.arange(0, NP)
    cmask, nmask = cols < E, ns < N
    m2 = cmask[:, None] & nmask[None, :]
    en = cols[:, None] * N + ns[None, :]
    a2 = tl.load(A + en, mask=m2, other=0.0).to(tl.float32) * 1.4426950408889634  # log2(e)
    h = tl.zeros([BD, NP], dtype=tl.float32)
    if HAS_H0:
        h = tl.load(H0 + b * E * N + en, mask=m2, other=0.0).to(tl.float32)
    lo, hi = b * T, b * T + T
    x, dt, bt, ct = _step_inputs(X, DT, BM, CM, lo, lo < hi, cols, cmask, ns, nmask, E, N)
    for t in range(T):
        if SAVE:
            if t % CH == 0:
                tl.store(CKPT + (b * n_chunks + t // CH) * E * N + en, h, mask=m2)
        row = b * T + t
        xn, dtn, bn, cn = _step_inputs(X, DT, BM, CM, row + 1, row + 1 < hi, cols, cmask, ns,
                                       nmask, E, N)
        h = tl.exp2(dt[:, None] * a2) * h + (dt * x)[:, None] * bt[None, :]
        y = tl.sum(h * ct[None, :], axis=1)
        tl.store(Y + row * E + cols, y.to(Y.dtype.element_ty), mask=cmask)
        x, dt, bt, ct = xn, dtn, bn, cn
    tl.store(HT + b * E * N + en, h, mask=m2)


@triton.jit
def selective_scan_bwd_kernel(X, DT, A, BM, CM, DY, DHT, CKPT, SCR, DX, DDT, DAP, DBP, DCP,
                              DH0, Bsz, T, E, N, n_chunks,
                              HAS_DHT: tl.constexpr, HAS_H0: tl.constexpr, CH: tl.constexpr,
                              BD: tl.constexpr, NP: tl.constexpr):
    """Grid (cdiv(E, BD), B), chunks from last to first. Inputs as the forward's, dy [B,T,E]
    and (with HAS_DHT) d(final state) [B,E,N]; SCR [cdiv(E, BD) * B, CH, BD, NP] float32
    scratch. Writes dx, ddt [B,T,E] (their inputs' dtypes), the partial sums DAP [B,E,N],
    DBP and DCP [cdiv(E, BD),B,T,N] (float32) and, with HAS_H0, d(initial state) DH0
    [B,E,N] (float32)."""
    pe = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    cols = pe * BD + tl.arange(0, BD)
    ns = tl.arange(0, NP)
    cmask, nmask = cols < E, ns < N
    m2 = cmask[:, None] & nmask[None, :]
    en = cols[:, None] * N + ns[None, :]
    a_nat = tl.load(A + en, mask=m2, other=0.0).to(tl.float32)
    a2 = a_nat * 1.4426950408889634  # log2(e)
    scr = SCR + (pe * Bsz + b) * (CH * BD * NP) + tl.arange(0, BD)[:, None] * NP + ns[None, :]
    part = (pe * Bsz + b) * T  # the row of token 0 in DBP, DCP
    gn = tl.zeros([BD, NP], dtype=tl.float32)  # exp(dt_{t+1} A) g_{t+1}, then d(h_{-1})
    if HAS_DHT:
        gn = tl.load(DHT + b * E * N + en, mask=m2, other=0.0).to(tl.float32)
    da = tl.zeros([BD, NP], dtype=tl.float32)
    for kk in range(n_chunks):
        k = n_chunks - 1 - kk
        t0 = k * CH
        steps = tl.minimum(T - t0, CH)
        # (1) the chunk's states, forward from the checkpoint; slot i = h_{t0 + i - 1}
        h = tl.load(CKPT + (b * n_chunks + k) * E * N + en, mask=m2, other=0.0)
        lo = b * T + t0
        hi = lo + steps
        x, dt, bt, _ = _step_inputs(X, DT, BM, CM, lo, lo < hi, cols, cmask, ns, nmask, E, N)
        dy = tl.load(DY + lo * E + cols, mask=cmask, other=0.0).to(tl.float32)
        for i in range(steps):
            tl.store(scr + i * (BD * NP), h)
            row = lo + i
            ok = row + 1 < hi
            xn, dtn, bn, _ = _step_inputs(X, DT, BM, CM, row + 1, ok, cols, cmask, ns, nmask, E,
                                          N)
            dy_n = tl.load(DY + (row + 1) * E + cols, mask=tl.where(ok, cmask, False),
                           other=0.0)
            h = tl.exp2(dt[:, None] * a2) * h + (dt * x)[:, None] * bt[None, :]
            tl.store(DCP + (part + t0 + i) * N + ns, tl.sum(dy[:, None] * h, axis=0), mask=nmask)
            x, dt, bt = xn, dtn, bn
            dy = dy_n.to(tl.float32)
        tl.debug_barrier()
        # (2) the reverse recurrence over the chunk
        x, dt, bt, ct = _step_inputs(X, DT, BM, CM, hi - 1, lo < hi, cols, cmask, ns, nmask, E,
                                     N)
        dy = tl.load(DY + (hi - 1) * E + cols, mask=cmask, other=0.0).to(tl.float32)
        hp = tl.load(scr + (steps - 1) * (BD * NP))  # h_{t-1}
        for ii in range(steps):
            i = steps - 1 - ii
            row = lo + i
            ok = row > lo
            xn, dtn, bn, cn = _step_inputs(X, DT, BM, CM, row - 1, ok, cols, cmask, ns, nmask, E,
                                           N)
            dy_n = tl.load(DY + (row - 1) * E + cols, mask=tl.where(ok, cmask, False),
                           other=0.0)
            hp_n = tl.load(scr + tl.maximum(i - 1, 0) * (BD * NP))
            decay = tl.exp2(dt[:, None] * a2)
            g = dy[:, None] * ct[None, :] + gn
            gb = tl.sum(g * bt[None, :], axis=1)
            gah = g * decay * hp  # g_t exp(dt_t A) h_{t-1}
            tl.store(DX + row * E + cols, (dt * gb).to(DX.dtype.element_ty), mask=cmask)
            ddt = x * gb + tl.sum(gah * a_nat, axis=1)
            tl.store(DDT + row * E + cols, ddt.to(DDT.dtype.element_ty), mask=cmask)
            da += gah * dt[:, None]
            db = tl.sum(g * (dt * x)[:, None], axis=0)
            tl.store(DBP + (part + t0 + i) * N + ns, db, mask=nmask)
            gn = decay * g
            x, dt, bt, ct, hp = xn, dtn, bn, cn, hp_n
            dy = dy_n.to(tl.float32)
        tl.debug_barrier()  # the next chunk overwrites the scratch
    tl.store(DAP + b * E * N + en, da, mask=m2)
    if HAS_H0:
        tl.store(DH0 + b * E * N + en, gn, mask=m2)


# --- launchers ---------------------------------------------------------------------------------


def _check_device(x: Tensor) -> None:
    if x.device.type != "cuda" and not _interpret():
        raise RuntimeError(
            "the selective scan's Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1)")


def _forward(x, dt, A, Bm, Cm, h0, save: bool):
    """Contiguous inputs -> y [B,T,E], final state [B,E,N], checkpoints (all float32; none
    without `save`), CH."""
    _check_device(x)
    Bsz, T, E = x.shape
    N = A.shape[1]
    BD, CH, warps = sizes(x.device, N)
    n_chunks = triton.cdiv(T, CH)
    y = torch.empty(Bsz, T, E, device=x.device, dtype=torch.float32)
    hT = torch.empty(Bsz, E, N, device=x.device, dtype=torch.float32)
    ckpt = None
    if save:
        ckpt = torch.empty(Bsz, n_chunks, E, N, device=x.device, dtype=torch.float32)
    selective_scan_fwd_kernel[(triton.cdiv(E, BD), Bsz)](
        x, dt, A, Bm, Cm, h0 if h0 is not None else hT, y, hT, ckpt if save else hT, T, E, N,
        n_chunks,
        HAS_H0=h0 is not None, SAVE=save, CH=CH, BD=BD, NP=triton.next_power_of_2(N),
        num_warps=warps)
    return y, hT, ckpt, CH


def _backward(dy, dhT, x, dt, A, Bm, Cm, ckpt, CH, has_h0):
    """-> dx, ddt (their inputs' dtypes), dA, dB, dC, d(initial state) (float32; None
    without an initial state). dy [B,T,E] contiguous; dhT [B,E,N] or None."""
    Bsz, T, E = x.shape
    N = A.shape[1]
    BD, _, warps = sizes(x.device, N)
    NP, n_blocks = triton.next_power_of_2(N), triton.cdiv(E, BD)
    f32 = {"device": x.device, "dtype": torch.float32}
    scratch = torch.empty(n_blocks * Bsz, CH, BD, NP, **f32)
    dx, ddt = torch.empty_like(x), torch.empty_like(dt)
    dap = torch.empty(Bsz, E, N, **f32)
    dbp, dcp = torch.empty(n_blocks, Bsz, T, N, **f32), torch.empty(n_blocks, Bsz, T, N, **f32)
    dh0 = torch.empty(Bsz, E, N, **f32) if has_h0 else None
    selective_scan_bwd_kernel[(n_blocks, Bsz)](
        x, dt, A, Bm, Cm, dy, dhT if dhT is not None else dap, ckpt, scratch, dx, ddt, dap,
        dbp, dcp, dh0 if has_h0 else dap, Bsz, T, E, N, ckpt.shape[1],
        HAS_DHT=dhT is not None, HAS_H0=has_h0, CH=CH, BD=BD, NP=NP, num_warps=warps)
    return dx, ddt, dap.sum(0), dbp.sum(0), dcp.sum(0), dh0


class SelectiveScanFn(torch.autograd.Function):
    """The Triton selective scan under autograd: saves the inputs and the chunk checkpoints;
    the backward recomputes (module docstring)."""

    @staticmethod
    def forward(ctx, x, dt, A, Bm, Cm, h0):
        inputs = [t.contiguous() for t in (x, dt, A, Bm, Cm)]
        h0c = h0.contiguous() if h0 is not None else None
        y, hT, ckpt, CH = _forward(*inputs, h0c, save=any(ctx.needs_input_grad))
        ctx.save_for_backward(*inputs, ckpt)
        ctx.CH = CH
        ctx.h0_dtype = h0.dtype if h0 is not None else None
        ctx.set_materialize_grads(False)  # an unused output's gradient comes as None
        return y, hT

    @staticmethod
    def backward(ctx, dy, dhT):
        x, dt, A, Bm, Cm, ckpt = ctx.saved_tensors
        dy = dy.contiguous() if dy is not None else torch.zeros_like(x, dtype=torch.float32)
        dhT = dhT.contiguous() if dhT is not None else None
        has_h0 = ctx.h0_dtype is not None
        dx, ddt, dA, dB, dC, dh0 = _backward(dy, dhT, x, dt, A, Bm, Cm, ckpt, ctx.CH, has_h0)
        dh0 = dh0.to(ctx.h0_dtype) if has_h0 else None
        return dx, ddt, dA.to(A.dtype), dB.to(Bm.dtype), dC.to(Cm.dtype), dh0


# torch.compile runs the scan as it is (a graph break), rather than tracing into the launches
@torch.compiler.disable
def selective_scan_triton(
    x_BTE: Tensor, dt_BTE: Tensor, A_EN: Tensor, B_BTN: Tensor, C_BTN: Tensor,
    initial_state_BEN: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The scan over T tokens -> (y [B, T, E], final state [B, E, N]), both float32: the
    maths and signature of `reference.selective_scan`, differentiable in x, dt, A, B, C and
    the initial state (gradients in their dtypes). Inputs in any float dtype (computed in
    float32); CUDA tensors, or CPU ones under TRITON_INTERPRET=1. Under torch.compile it
    runs eagerly (a graph break)."""
    if x_BTE.dim() != 3:
        raise ValueError(f"x must be [B, T, E], got {tuple(x_BTE.shape)}")
    Bsz, T, E = x_BTE.shape
    if A_EN.dim() != 2 or A_EN.shape[0] != E:
        raise ValueError(f"A must be [{E}, N], got {tuple(A_EN.shape)}")
    N = A_EN.shape[1]
    if N > MAX_D_STATE:
        raise ValueError(f"the Triton selective scan takes d_state <= {MAX_D_STATE} (got {N})")
    for name, t, want in (("dt", dt_BTE, (Bsz, T, E)), ("B", B_BTN, (Bsz, T, N)),
                          ("C", C_BTN, (Bsz, T, N)), ("initial_state", initial_state_BEN,
                                                      (Bsz, E, N))):
        if t is not None and tuple(t.shape) != want:
            raise ValueError(f"{name} must be {list(want)}, got {tuple(t.shape)}")
    if T == 0:  # no kernel: nothing to scan
        h = initial_state_BEN
        last = h.float() if h is not None else x_BTE.new_zeros(Bsz, E, N, dtype=torch.float32)
        return x_BTE.new_zeros(Bsz, 0, E, dtype=torch.float32), last
    return SelectiveScanFn.apply(x_BTE, dt_BTE, A_EN, B_BTN, C_BTN, initial_state_BEN)
