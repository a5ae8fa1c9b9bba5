"""RAT's inter-chunk attention in Triton: flash-attention over the compact chunk-end buffer.

A query at token t (chunk t // L) sees the chunk ends j < t // L, and its own running key.
The own key enters the online softmax as its initial state (m = own score, l = 1,
acc = own running value), so no second pass merges two softmaxes and no T x C mask exists:
key blocks wholly visible to a query tile run unmasked, and only the blocks that straddle
the tile's chunks compare indices. The softmax runs in base 2 (scale * log2(e) folded in);
lse is stored in base 2 for the backward. With the rat block's output gate (`GATED`) the
epilogue writes o = sigmoid(z) * y, and y itself only when asked (`WRITE_Y`); the gate's
backward and delta then take one pass (`rat_gate_bwd_kernel`).

Backward: delta = rowsum(dy * y); one kernel per key block gives the chunk-end gradients
(summed over all later queries, of one head); one kernel per query tile and qk group gives
dq summed over the group's heads (q is loaded once per group). The own-key terms of the
backward are per-token and live in the scan's backward (triton_scan.py).
"""

# fmt: off
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _fwd_block(acc, l_i, m_i, q, k_base, v_base, start_n, offs_n, offs_d, n_hi, chunk_m,
               scale_log2, s_kc, s_vc, MASK: tl.constexpr, DOT_PREC: tl.constexpr):
    # k_base/v_base: scalar pointers; tile offsets stay 32-bit (fewer registers)
    offs = start_n + offs_n
    if MASK:
        k = tl.load(k_base + (offs[:, None] * s_kc + offs_d[None, :]),
                    mask=(offs < n_hi)[:, None], other=0.0)
    else:
        k = tl.load(k_base + (offs[:, None] * s_kc + offs_d[None, :]))
    s = tl.dot(q, tl.trans(k.to(q.dtype)), input_precision=DOT_PREC) * scale_log2
    if MASK:
        s = tl.where(offs[None, :] < chunk_m[:, None], s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if MASK:
        v = tl.load(v_base + (offs[:, None] * s_vc + offs_d[None, :]),
                    mask=(offs < n_hi)[:, None], other=0.0)
    else:
        v = tl.load(v_base + (offs[:, None] * s_vc + offs_d[None, :]))
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, l_i, m_new


@triton.jit
def rat_attn_fwd_kernel(
    QR, KE, VE, VR, SS, Y, LSE, Z, O,
    s_ke_b, s_ke_c, s_ke_h, s_ve_b, s_ve_c, s_ve_h, s_y_b, s_y_t, s_y_h, s_z_b, s_z_t,
    T, L, C, scale_log2,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, DOT_PREC: tl.constexpr,
    GATED: tl.constexpr, WRITE_Y: tl.constexpr,
):
    """Grid (cdiv(T, BM), B * H). QR [B,T,G,D] and VR [B,T,H,D] contiguous, SS/LSE [B,H,T]
    float32; KE/VE [B, C, H, D] strided; Y [B,T,H,D] strided (written with WRITE_Y). With
    GATED also O = sigmoid(Z) * y, [B, T, H*D]: Z strided by (s_z_b, s_z_t), O contiguous."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)  # the longest rows first
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    g = h % G
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    m_valid = offs_m < T
    q = tl.load(QR + (b * T * G + g) * D + (offs_m[:, None] * (G * D) + offs_d[None, :]),
                mask=m_valid[:, None], other=0.0)
    if GATED:  # loaded before the key loop, whose work hides its latency
        z = tl.load(Z + b * s_z_b + (offs_m[:, None] * s_z_t + h * D + offs_d[None, :]),
                    mask=m_valid[:, None], other=0.0)
    bh = b * H + h
    m_i = tl.load(SS + bh * T + offs_m, mask=m_valid, other=0.0) * scale_log2
    l_i = tl.full([BM], 1.0, tl.float32)
    acc = tl.load(VR + (b * T * H + h) * D + (offs_m[:, None] * (H * D) + offs_d[None, :]),
                  mask=m_valid[:, None], other=0.0).to(tl.float32)
    chunk_m = offs_m // L
    m0 = pid_m * BM
    n_hi = tl.minimum((tl.minimum(m0 + BM, T) - 1) // L, C)  # keys seen by some row
    n_full = (tl.minimum(m0 // L, C) // BN) * BN  # blocks seen by every row
    k_base = KE + b * s_ke_b + h * s_ke_h
    v_base = VE + b * s_ve_b + h * s_ve_h
    for start_n in range(0, n_full, BN):
        acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, k_base, v_base, start_n, offs_n, offs_d,
                                   n_hi, chunk_m, scale_log2, s_ke_c, s_ve_c, False, DOT_PREC)
    for start_n in range(n_full, n_hi, BN):
        acc, l_i, m_i = _fwd_block(acc, l_i, m_i, q, k_base, v_base, start_n, offs_n, offs_d,
                                   n_hi, chunk_m, scale_log2, s_ke_c, s_ve_c, True, DOT_PREC)
    y = acc / l_i[:, None]
    if WRITE_Y:
        tl.store(Y + b * s_y_b + h * s_y_h + (offs_m[:, None] * s_y_t + offs_d[None, :]),
                 y.to(Y.dtype.element_ty), mask=m_valid[:, None])
    if GATED:
        tl.store(O + b * T * H * D + (offs_m[:, None] * (H * D) + h * D + offs_d[None, :]),
                 (tl.sigmoid(z.to(tl.float32)) * y).to(O.dtype.element_ty),
                 mask=m_valid[:, None])
    tl.store(LSE + bh * T + offs_m, m_i + tl.log2(l_i), mask=m_valid)


@triton.jit
def rat_delta_kernel(Y, DY, DELTA, s_y_b, s_y_t, s_y_h, s_dy_b, s_dy_t, s_dy_h, T,
                     H: tl.constexpr, D: tl.constexpr, BM: tl.constexpr):
    """delta [B,H,T] = rowsum(dy * y) in float32. Grid (cdiv(T, BM), B * H)."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    mask = (offs_m < T)[:, None]
    y = tl.load(Y + b * s_y_b + offs_m[:, None] * s_y_t + h * s_y_h + offs_d[None, :],
                mask=mask, other=0.0).to(tl.float32)
    dy = tl.load(DY + b * s_dy_b + offs_m[:, None] * s_dy_t + h * s_dy_h + offs_d[None, :],
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + (b * H + h) * T + offs_m, tl.sum(y * dy, axis=1), mask=offs_m < T)


@triton.jit
def rat_gate_bwd_kernel(DO, Z, O, DY, DZ, DELTA, s_z_b, s_z_t, s_dz_b, s_dz_t, s_dy_b, s_dy_t,
                        T, H: tl.constexpr, D: tl.constexpr, BM: tl.constexpr):
    """The backward of o = sigmoid(z) * y with the attention's delta, one pass, from o (y is
    never stored: sigmoid(z) * y = o gives dz = do * o * (1 - sigmoid(z)) and
    delta = rowsum(dy * y) = rowsum(do * o)). Grid (cdiv(T, BM), B * H). DO, O [B, T, H*D]
    contiguous (DO the gradient of o); Z, DZ, DY [B, T, H*D] strided by rows; writes
    DY = DO * sigmoid(z), DZ, and DELTA [B,H,T] in float32."""
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_d = tl.arange(0, D)
    mask = (offs_m < T)[:, None]
    cols = h * D + offs_d[None, :]
    row = b * T * H * D + offs_m[:, None] * (H * D) + cols
    do = tl.load(DO + row, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(O + row, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(Z + b * s_z_b + offs_m[:, None] * s_z_t + cols, mask=mask, other=0.0)
    sig = tl.sigmoid(z.to(tl.float32))
    tl.store(DY + b * s_dy_b + offs_m[:, None] * s_dy_t + cols, (do * sig).to(DY.dtype.element_ty),
             mask=mask)
    tl.store(DZ + b * s_dz_b + offs_m[:, None] * s_dz_t + cols,
             (do * o * (1.0 - sig)).to(DZ.dtype.element_ty), mask=mask)
    tl.store(DELTA + (b * H + h) * T + offs_m, tl.sum(do * o, axis=1), mask=offs_m < T)


@triton.jit
def _dkv_block(dk, dv, k, v, q_base, dy_base, lse_base, delta_base, start_m, offs_n, offs_d, T, L,
               scale_log2, s_dy_t, GD: tl.constexpr, BM: tl.constexpr,
               MASK: tl.constexpr, DOT_PREC: tl.constexpr):
    offs_m = start_m + tl.arange(0, BM)
    m_valid = offs_m < T
    q = tl.load(q_base + (offs_m[:, None] * GD + offs_d[None, :]), mask=m_valid[:, None], other=0.0)
    dy = tl.load(dy_base + (offs_m[:, None] * s_dy_t + offs_d[None, :]), mask=m_valid[:, None],
                 other=0.0)
    lse = tl.load(lse_base + offs_m, mask=m_valid, other=float("inf"))
    delta = tl.load(delta_base + offs_m, mask=m_valid, other=0.0)
    s_t = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * scale_log2  # [BN, BM]
    p_t = tl.exp2(s_t - lse[None, :])
    if MASK:
        p_t = tl.where(offs_n[:, None] < (offs_m // L)[None, :], p_t, 0.0)
    dv += tl.dot(p_t.to(dy.dtype), dy, input_precision=DOT_PREC)
    dp_t = tl.dot(v, tl.trans(dy), input_precision=DOT_PREC)
    ds_t = p_t * (dp_t - delta[None, :])
    dk += tl.dot(ds_t.to(q.dtype), q, input_precision=DOT_PREC)
    return dk, dv


@triton.jit
def rat_attn_bwd_dkv_kernel(
    QR, KE, VE, DY, LSE, DELTA, DKE, DVE,
    s_ke_b, s_ke_c, s_ke_h, s_ve_b, s_ve_c, s_ve_h, s_dy_b, s_dy_t, s_dy_h,
    T, L, C, C_alloc, scale, scale_log2,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Grid (cdiv(C, BN), B * H). Writes DKE/DVE [B, H, C_alloc, D] float32 (rotated frame)."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    g = h % G
    bh = b * H + h
    offs_n = pid_n * BN + tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    n_valid = offs_n < C
    k = tl.load(KE + b * s_ke_b + h * s_ke_h + (offs_n[:, None] * s_ke_c + offs_d[None, :]),
                mask=n_valid[:, None], other=0.0)
    v = tl.load(VE + b * s_ve_b + h * s_ve_h + (offs_n[:, None] * s_ve_c + offs_d[None, :]),
                mask=n_valid[:, None], other=0.0)
    k = k.to(QR.dtype.element_ty)
    v = v.to(DY.dtype.element_ty)
    dk = tl.zeros([BN, D], tl.float32)
    dv = tl.zeros([BN, D], tl.float32)
    q_base = QR + (b * T * G + g) * D
    dy_base = DY + b * s_dy_b + h * s_dy_h
    lse_base = LSE + bh * T
    delta_base = DELTA + bh * T
    first_m = (((pid_n * BN + 1) * L) // BM) * BM  # first query tile that sees a key here
    # one loop, masked throughout (an unmasked second loop made ptxas spill registers)
    for start_m in range(first_m, T, BM):
        dk, dv = _dkv_block(dk, dv, k, v, q_base, dy_base, lse_base, delta_base, start_m,
                            offs_n, offs_d, T, L, scale_log2, s_dy_t, G * D, BM, True, DOT_PREC)
    out = bh * C_alloc * D + (offs_n[:, None] * D + offs_d[None, :])
    tl.store(DKE + out, dk * scale, mask=n_valid[:, None])
    tl.store(DVE + out, dv, mask=n_valid[:, None])


@triton.jit
def _dq_block(dq, q, dy, lse, delta, k_base, v_base, start_n, offs_n, offs_d, n_hi, chunk_m,
              scale_log2, s_kc, s_vc, MASK: tl.constexpr, DOT_PREC: tl.constexpr):
    offs = start_n + offs_n
    if MASK:
        k = tl.load(k_base + (offs[:, None] * s_kc + offs_d[None, :]),
                    mask=(offs < n_hi)[:, None], other=0.0)
        v = tl.load(v_base + (offs[:, None] * s_vc + offs_d[None, :]),
                    mask=(offs < n_hi)[:, None], other=0.0)
    else:
        k = tl.load(k_base + (offs[:, None] * s_kc + offs_d[None, :]))
        v = tl.load(v_base + (offs[:, None] * s_vc + offs_d[None, :]))
    k = k.to(q.dtype)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * scale_log2
    p = tl.exp2(s - lse[:, None])
    if MASK:
        p = tl.where(offs[None, :] < chunk_m[:, None], p, 0.0)
    dp = tl.dot(dy, tl.trans(v.to(dy.dtype)), input_precision=DOT_PREC)
    ds = p * (dp - delta[:, None])
    dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    return dq


@triton.jit
def rat_attn_bwd_dq_kernel(
    QR, KE, VE, DY, LSE, DELTA, DQI,
    s_ke_b, s_ke_c, s_ke_h, s_ve_b, s_ve_c, s_ve_h, s_dy_b, s_dy_t, s_dy_h,
    T, L, C, scale, scale_log2,
    H: tl.constexpr, G: tl.constexpr, D: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """Grid (cdiv(T, BM), B * G). Writes DQI [B,T,G,D] float32 (rotated frame), the
    inter-chunk part of dq summed over the heads of the group."""
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bg = tl.program_id(1)
    b = (pid_bg // G).to(tl.int64)
    g = pid_bg % G
    offs_m = pid_m * BM + tl.arange(0, BM)
    offs_n = tl.arange(0, BN)
    offs_d = tl.arange(0, D)
    m_valid = offs_m < T
    q_off = (b * T * G + g) * D
    tile = offs_m[:, None] * (G * D) + offs_d[None, :]
    q = tl.load(QR + q_off + tile, mask=m_valid[:, None], other=0.0)
    chunk_m = offs_m // L
    m0 = pid_m * BM
    n_hi = tl.minimum((tl.minimum(m0 + BM, T) - 1) // L, C)
    dq = tl.zeros([BM, D], tl.float32)
    for hh in range(H // G):
        h = g + hh * G
        bh = b * H + h
        dy = tl.load(DY + b * s_dy_b + h * s_dy_h + (offs_m[:, None] * s_dy_t + offs_d[None, :]),
                     mask=m_valid[:, None], other=0.0)
        lse = tl.load(LSE + bh * T + offs_m, mask=m_valid, other=float("inf"))
        delta = tl.load(DELTA + bh * T + offs_m, mask=m_valid, other=0.0)
        k_base = KE + b * s_ke_b + h * s_ke_h
        v_base = VE + b * s_ve_b + h * s_ve_h
        # one loop, masked throughout: two loops (unmasked, then masked) spill registers here
        for start_n in range(0, n_hi, BN):
            dq = _dq_block(dq, q, dy, lse, delta, k_base, v_base, start_n, offs_n, offs_d, n_hi,
                           chunk_m, scale_log2, s_ke_c, s_ve_c, True, DOT_PREC)
    tl.store(DQI + q_off + tile, dq * scale, mask=m_valid[:, None])


# --- launchers ---------------------------------------------------------------------------


def _configs(pairs):
    return [triton.Config({"BM": bm, "BN": bn}, num_warps=w, num_stages=st)
            for bm, bn, w, st in pairs]


# (BM, BN, warps, stages): candidates without (or with few) register spills on sm_90, by
# ptxas's resource report, and the fastest of `benchmarks/rat_attention_tiles.py`'s wider
# lists on an H200 at 16 x 16384 and 2 x 131072 (2026-11-30): the forward's 128 x 128 at 3
# stages (0.7 ms faster at 128K), dK/dV's 64 x 128 at 3 stages (4.7 ms at 128K, 0.6 at
# 16K), dQ's 128 x 64 (5.0 ms at 128K, 0.9 at 16K)
_FWD_CONFIGS = _configs([(128, 64, 8, 3), (64, 64, 8, 3), (128, 32, 8, 3), (64, 32, 4, 3),
                         (128, 128, 8, 3)])
_DKV_CONFIGS = _configs([(64, 64, 8, 3), (64, 64, 8, 2), (32, 64, 4, 3), (64, 128, 8, 2),
                         (64, 128, 8, 3)])
_DQ_CONFIGS = _configs([(64, 64, 4, 3), (64, 64, 8, 3), (64, 128, 8, 2), (64, 32, 8, 3),
                        (128, 64, 8, 3), (128, 64, 8, 2)])
_KEY = ["T", "L", "C", "D"]

fwd_tuned = triton.autotune(_FWD_CONFIGS, key=_KEY)(rat_attn_fwd_kernel)
dkv_tuned = triton.autotune(_DKV_CONFIGS, key=_KEY)(rat_attn_bwd_dkv_kernel)
dq_tuned = triton.autotune(_DQ_CONFIGS, key=_KEY)(rat_attn_bwd_dq_kernel)

# the interpreter and untuned launches: small tiles (tl.dot needs 16 rows at least)
_FIXED = {"BM": 16, "BN": 16, "num_warps": 4}


def gpu_tiles(device) -> bool:
    """Whether launches on `device` take the GPU's tuned tiles (else the interpreter's small
    fixed ones). One seam, so that `benchmarks/compile_check.py` can compile the GPU path
    for sm_90 on a machine without a GPU."""
    return device.type == "cuda"


def _tuned(device, dtype) -> bool:
    """Autotuned tiles for 16-bit inputs on the GPU. float32 (a check path, not a fast one)
    takes the small fixed tiles: its large tiles spill heavily, and ptxas spent minutes on
    them on the H200 machine (Triton 3.6)."""
    import torch

    return gpu_tiles(device) and dtype != torch.float32


def _dot_prec(dtype) -> str:
    import torch

    return "ieee" if dtype == torch.float32 else "tf32"


def attention_forward(q_rot, k_end, v_end, v_run, s_self, chunk_size, out_dtype, z=None,
                      write_y=True):
    """y [B,T,H,D] (out_dtype; None unless `write_y`), lse [B,H,T] (base 2) and, given the
    gate's logits z [B, T, H*D] (rows strided, last dim contiguous), o = sigmoid(z) * y
    [B, T, H*D] (only with z). k_end/v_end: [B, C', H, D] views whose first T // L chunks
    are the complete chunk ends."""
    import torch

    if not write_y and z is None:
        raise ValueError("attention_forward writes y, o or both: pass z or write_y=True")
    B, T, H, D = v_run.shape
    G = q_rot.shape[2]
    L = chunk_size
    C = T // L
    dev = v_run.device
    lse = torch.empty(B, H, T, device=dev, dtype=torch.float32)
    y = torch.empty(B, T, H, D, device=dev, dtype=out_dtype) if write_y else None
    o = torch.empty(B, T, H * D, device=dev, dtype=out_dtype) if z is not None else None
    y_arg = y if y is not None else o  # a pointer the kernel never uses without its flag
    o_arg = o if o is not None else y
    z_arg = z if z is not None else o_arg
    y_strides = (y.stride(0), y.stride(1), y.stride(2)) if y is not None else (0, 0, 0)
    args = (q_rot, k_end, v_end, v_run, s_self, y_arg, lse, z_arg, o_arg,
            k_end.stride(0), k_end.stride(1), k_end.stride(2),
            v_end.stride(0), v_end.stride(1), v_end.stride(2), *y_strides,
            z_arg.stride(0), z_arg.stride(1), T, L, C, D**-0.5 * LOG2E)
    kw = dict(H=H, G=G, D=D, DOT_PREC=_dot_prec(q_rot.dtype), GATED=z is not None,
              WRITE_Y=write_y)
    if _tuned(dev, q_rot.dtype):
        fwd_tuned[lambda m: (triton.cdiv(T, m["BM"]), B * H)](*args, **kw)
    else:
        rat_attn_fwd_kernel[(triton.cdiv(T, 16), B * H)](*args, **kw, **_FIXED)
    if z is None:
        return y, lse
    return y, lse, o


def attention_delta(y, dy):
    import torch

    B, T, H, D = y.shape
    delta = torch.empty(B, H, T, device=y.device, dtype=torch.float32)
    BM = 64 if gpu_tiles(y.device) else 16
    rat_delta_kernel[(triton.cdiv(T, BM), B * H)](
        y, dy, delta, y.stride(0), y.stride(1), y.stride(2), dy.stride(0), dy.stride(1),
        dy.stride(2), T, H=H, D=D, BM=BM, num_warps=4)
    return delta


def gate_backward(do, z, o, dz, dy, heads):
    """The backward of o = sigmoid(z) * y [B, T, H*D] with the attention's delta: writes dz
    and dy (views [B, T, H*D] and [B, T, H, D], rows strided) and returns delta [B,H,T]
    float32. do and o: contiguous."""
    import torch

    B, T, HD = o.shape
    delta = torch.empty(B, heads, T, device=o.device, dtype=torch.float32)
    BM = 32 if gpu_tiles(o.device) else 16  # 64 rows took 199 registers a thread on sm_90
    rat_gate_bwd_kernel[(triton.cdiv(T, BM), B * heads)](
        do, z, o, dy, dz, delta, z.stride(0), z.stride(1), dz.stride(0), dz.stride(1),
        dy.stride(0), dy.stride(1), T, H=heads, D=HD // heads, BM=BM, num_warps=4)
    return delta


def attention_backward(q_rot, k_end, v_end, dy, lse, delta, chunk_size):
    """dk_end, dv_end [B, H, C, D] float32 (C >= 1 rows allocated) and dq_inter [B,T,G,D]
    float32, all in the rotated frame."""
    import torch

    B, T, H, D = dy.shape
    G = q_rot.shape[2]
    L = chunk_size
    C = T // L
    C_alloc = max(C, 1)
    dev = dy.device
    dke = torch.empty(B, H, C_alloc, D, device=dev, dtype=torch.float32)
    dve = torch.empty(B, H, C_alloc, D, device=dev, dtype=torch.float32)
    dqi = torch.empty(B, T, G, D, device=dev, dtype=torch.float32)
    scale = D**-0.5
    strides = (k_end.stride(0), k_end.stride(1), k_end.stride(2),
               v_end.stride(0), v_end.stride(1), v_end.stride(2),
               dy.stride(0), dy.stride(1), dy.stride(2))
    kw = dict(H=H, G=G, D=D, DOT_PREC=_dot_prec(q_rot.dtype))
    if C == 0:
        dqi.zero_()
        return dke, dve, dqi
    dkv_args = (q_rot, k_end, v_end, dy, lse, delta, dke, dve, *strides,
                T, L, C, C_alloc, scale, scale * LOG2E)
    dq_args = (q_rot, k_end, v_end, dy, lse, delta, dqi, *strides, T, L, C, scale, scale * LOG2E)
    if _tuned(dev, q_rot.dtype):
        dkv_tuned[lambda m: (triton.cdiv(C, m["BN"]), B * H)](*dkv_args, **kw)
        dq_tuned[lambda m: (triton.cdiv(T, m["BM"]), B * G)](*dq_args, **kw)
    else:
        rat_attn_bwd_dkv_kernel[(triton.cdiv(C, 16), B * H)](*dkv_args, **kw, **_FIXED)
        rat_attn_bwd_dq_kernel[(triton.cdiv(T, 16), B * G)](*dq_args, **kw, **_FIXED)
    return dke, dve, dqi
