"""RAT's memory-bound passes in Triton: gates, the intra-chunk scans of k and v, RoPE at the
chunk index, the token's own score, and the chunk ends; and their backward (reverse scan).

Layout: a program owns a segment of whole chunks (SEG tokens) of one batch row and one qk
group, and loops over the heads of that group (so q and k are read once per group and dq, dk
are summed over the group's heads in registers). A segment is cut into tiles of BT tokens;
inside a tile the gated recurrence runs as one `tl.associative_scan` over the token axis,
and a carry links the tiles of a chunk longer than BT. Channels are held as two halves
(lo = [0, D/2), hi = [D/2, D)), which makes the rotate-half RoPE an elementwise operation.

The backward needs the adjoint recurrence a_t = ds_t + g_{t+1} a_{t+1}, a reverse scan.
`associative_scan(reverse=True)` has been reported wrong for non-commutative combines
(triton-lang/triton#4362), so the reverse scan runs as a forward scan over the tile read in
reversed token order; the few per-token quantities computed in natural order are flipped.
With a_t, the gate-logit gradient needs only s_t (no shifted state):
dlogit_t = (1 - g_t) a_t (s_t - x_t), summed over the key and value scans.
"""

# fmt: off
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _combine(al1, ah1, kl1, kh1, vl1, vh1, al2, ah2, kl2, kh2, vl2, vh2):
    # composition of the affine maps s -> a * s + b (left first, then right)
    return al1 * al2, ah1 * ah2, al2 * kl1 + kl2, ah2 * kh1 + kh2, al2 * vl1 + vl2, ah2 * vh1 + vh2


@triton.jit
def _last_row(x, rows, BT: tl.constexpr):
    return tl.sum(tl.where(rows[:, None] == BT - 1, x, 0.0), axis=0)


@triton.jit
def _carries(sk_lo, sk_hi, sv_lo, sv_hi, rows, BT: tl.constexpr):
    # the states of a tile's last row: the carries into the next tile
    return (_last_row(sk_lo, rows, BT), _last_row(sk_hi, rows, BT),
            _last_row(sv_lo, rows, BT), _last_row(sv_hi, rows, BT))


@triton.jit
def _load_halves(ptr_rows, cols, mask, D2: tl.constexpr):
    lo = tl.load(ptr_rows[:, None] + cols[None, :], mask=mask[:, None], other=0.0).to(tl.float32)
    hi = tl.load(ptr_rows[:, None] + D2 + cols[None, :], mask=mask[:, None], other=0.0)
    return lo, hi.to(tl.float32)


@triton.jit
def _store_halves(ptr_rows, cols, lo, hi, mask, D2: tl.constexpr):
    ty = ptr_rows.dtype.element_ty
    tl.store(ptr_rows[:, None] + cols[None, :], lo.to(ty), mask=mask[:, None])
    tl.store(ptr_rows[:, None] + D2 + cols[None, :], hi.to(ty), mask=mask[:, None])


@triton.jit
def _gate(GL, BIAS, b, h, t, mask, cols, s_gl_b, s_gl_t, s_gl_h, D2: tl.constexpr):
    gl_lo, gl_hi = _load_halves(GL + b * s_gl_b + t * s_gl_t + h * s_gl_h, cols, mask, D2)
    bias_lo = tl.load(BIAS + h * 2 * D2 + cols).to(tl.float32)
    bias_hi = tl.load(BIAS + h * 2 * D2 + D2 + cols).to(tl.float32)
    return tl.sigmoid(gl_lo + bias_lo[None, :]), tl.sigmoid(gl_hi + bias_hi[None, :])


@triton.jit
def _cos_sin(COS, SIN, t, L, mask, cols, D2: tl.constexpr, ROPE: tl.constexpr):
    # RoPE angles at the chunk index t // L, from a [C, D/2] float32 table
    if ROPE:
        c = t // L
        cos = tl.load(COS + c[:, None] * D2 + cols[None, :], mask=mask[:, None], other=1.0)
        sin = tl.load(SIN + c[:, None] * D2 + cols[None, :], mask=mask[:, None], other=0.0)
    else:
        cos = tl.full([t.shape[0], cols.shape[0]], 1.0, tl.float32)
        sin = tl.zeros([t.shape[0], cols.shape[0]], tl.float32)
    return cos, sin


@triton.jit
def _scan_tile(GL, BIAS, K, V, b, g, h, t, valid, L, cols,
               s_k_b, s_k_t, s_k_g, s_v_b, s_v_t, s_v_h, s_gl_b, s_gl_t, s_gl_h,
               ck_lo, ck_hi, cv_lo, cv_hi, D2: tl.constexpr):
    """Forward scan of one tile in natural token order, continuing from the carries."""
    gate_lo, gate_hi = _gate(GL, BIAS, b, h, t, valid, cols, s_gl_b, s_gl_t, s_gl_h, D2)
    k_lo, k_hi = _load_halves(K + b * s_k_b + t * s_k_t + g * s_k_g, cols, valid, D2)
    v_lo, v_hi = _load_halves(V + b * s_v_b + t * s_v_t + h * s_v_h, cols, valid, D2)
    keep = ((t % L) != 0) & valid  # the state resets at every chunk start
    a_lo = tl.where(keep[:, None], gate_lo, 0.0)
    a_hi = tl.where(keep[:, None], gate_hi, 0.0)
    A_lo, A_hi, sk_lo, sk_hi, sv_lo, sv_hi = tl.associative_scan(
        (a_lo, a_hi, (1.0 - gate_lo) * k_lo, (1.0 - gate_hi) * k_hi,
         (1.0 - gate_lo) * v_lo, (1.0 - gate_hi) * v_hi),
        0, _combine)
    sk_lo += A_lo * ck_lo[None, :]
    sk_hi += A_hi * ck_hi[None, :]
    sv_lo += A_lo * cv_lo[None, :]
    sv_hi += A_hi * cv_hi[None, :]
    return sk_lo, sk_hi, sv_lo, sv_hi, k_lo, k_hi, v_lo, v_hi


@triton.jit
def _rot(x_lo, x_hi, cos, sin, ROPE: tl.constexpr):
    if ROPE:
        y_lo = x_lo * cos - x_hi * sin
        y_hi = x_hi * cos + x_lo * sin
    else:
        y_lo = x_lo
        y_hi = x_hi
    return y_lo, y_hi


@triton.jit
def _unrot(x_lo, x_hi, cos, sin, ROPE: tl.constexpr):
    # the transpose of _rot
    if ROPE:
        y_lo = x_lo * cos + x_hi * sin
        y_hi = x_hi * cos - x_lo * sin
    else:
        y_lo = x_lo
        y_hi = x_hi
    return y_lo, y_hi


@triton.jit
def rat_scan_fwd_kernel(
    Q, K, V, GL, BIAS, COS, SIN,
    QR, VR, SS, KE, VE,
    s_q_b, s_q_t, s_q_g, s_k_b, s_k_t, s_k_g, s_v_b, s_v_t, s_v_h, s_gl_b, s_gl_t, s_gl_h,
    s_ke_b, s_ke_c, s_ke_h, s_ve_b, s_ve_c, s_ve_h,
    T, L, SEG, n_tiles,
    H: tl.constexpr, G: tl.constexpr, D2: tl.constexpr, BT: tl.constexpr,
    ROPE: tl.constexpr, CORE: tl.constexpr, PARTIAL: tl.constexpr,
):
    """Grid (segments, B * G). Writes q_rot [B,T,G,D], v_run [B,T,H,D], the own score
    q_rot . k_rot [B,H,T] (CORE), the chunk ends (rotated k, v) into KE/VE, and with PARTIAL
    the running un-rotated state of an incomplete last chunk into its slot (cache layout)."""
    pid_s = tl.program_id(0)
    pid_bg = tl.program_id(1)
    b = (pid_bg // G).to(tl.int64)
    g = pid_bg % G
    D: tl.constexpr = 2 * D2
    rows = tl.arange(0, BT)
    cols = tl.arange(0, D2)
    seg0 = pid_s * SEG
    for hh in range(H // G):
        h = g + hh * G
        ck_lo = tl.zeros([D2], tl.float32)
        ck_hi = tl.zeros([D2], tl.float32)
        cv_lo = tl.zeros([D2], tl.float32)
        cv_hi = tl.zeros([D2], tl.float32)
        for j in range(n_tiles):
            r = j * BT + rows
            t = seg0 + r
            valid = (r < SEG) & (t < T)
            sk_lo, sk_hi, sv_lo, sv_hi, k_lo, k_hi, v_lo, v_hi = _scan_tile(
                GL, BIAS, K, V, b, g, h, t, valid, L, cols,
                s_k_b, s_k_t, s_k_g, s_v_b, s_v_t, s_v_h, s_gl_b, s_gl_t, s_gl_h,
                ck_lo, ck_hi, cv_lo, cv_hi, D2)
            cos, sin = _cos_sin(COS, SIN, t, L, valid, cols, D2, ROPE)
            kr_lo, kr_hi = _rot(sk_lo, sk_hi, cos, sin, ROPE)
            c = t // L
            is_end = valid & ((t + 1) % L == 0)
            _store_halves(KE + b * s_ke_b + c * s_ke_c + h * s_ke_h, cols, kr_lo, kr_hi, is_end, D2)
            _store_halves(VE + b * s_ve_b + c * s_ve_c + h * s_ve_h, cols, sv_lo, sv_hi, is_end, D2)
            if PARTIAL:
                is_part = valid & (t == T - 1) & ((t + 1) % L != 0)
                _store_halves(KE + b * s_ke_b + c * s_ke_c + h * s_ke_h, cols, sk_lo, sk_hi,
                              is_part, D2)
                _store_halves(VE + b * s_ve_b + c * s_ve_c + h * s_ve_h, cols, sv_lo, sv_hi,
                              is_part, D2)
            if CORE:
                q_lo, q_hi = _load_halves(Q + b * s_q_b + t * s_q_t + g * s_q_g, cols, valid, D2)
                qr_lo, qr_hi = _rot(q_lo, q_hi, cos, sin, ROPE)
                if hh == 0:
                    _store_halves(QR + ((b * T + t) * G + g) * D, cols, qr_lo, qr_hi, valid, D2)
                ss = tl.sum(qr_lo * kr_lo + qr_hi * kr_hi, axis=1)
                tl.store(SS + (b * H + h) * T + t, ss, mask=valid)
                _store_halves(VR + ((b * T + t) * H + h) * D, cols, sv_lo, sv_hi, valid, D2)
            ck_lo, ck_hi, cv_lo, cv_hi = _carries(sk_lo, sk_hi, sv_lo, sv_hi, rows, BT)


@triton.jit
def _combine_v(a1, b1, a2, b2):
    return a1 * a2, a2 * b1 + b2


@triton.jit
def rat_scan_ds_kernel(
    V, GL, BIAS, SS, DY, LSE, DELTA, P, DS,
    s_v_b, s_v_t, s_v_h, s_gl_b, s_gl_t, s_gl_h, s_dy_b, s_dy_t, s_dy_h,
    T, L, SEG, n_tiles, scale_log2,
    H: tl.constexpr, D: tl.constexpr, BT: tl.constexpr,
):
    """Grid (segments, B * H). The backward's reductions over all channels: the own key's
    softmax weight p = exp2(s_self * scale_log2 - lse) and its score gradient
    ds = p * (dy . v_run - delta), [B,H,T] float32. s_self (the own score q_rot . k_rot,
    [B,H,T] float32) comes from the forward, so only the value scan is recomputed (in
    float32, whole rows: RoPE plays no part in it)."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    bh = b * H + h
    rows = tl.arange(0, BT)
    cols = tl.arange(0, D)
    seg0 = pid_s * SEG
    bias = tl.load(BIAS + h * D + cols).to(tl.float32)
    carry = tl.zeros([D], tl.float32)
    for j in range(n_tiles):
        r = j * BT + rows
        t = seg0 + r
        valid = (r < SEG) & (t < T)
        gl = tl.load(GL + b * s_gl_b + t[:, None] * s_gl_t + h * s_gl_h + cols[None, :],
                     mask=valid[:, None], other=0.0).to(tl.float32)
        gate = tl.sigmoid(gl + bias[None, :])
        v = tl.load(V + b * s_v_b + t[:, None] * s_v_t + h * s_v_h + cols[None, :],
                    mask=valid[:, None], other=0.0).to(tl.float32)
        keep = ((t % L) != 0) & valid  # the state resets at every chunk start
        A, sv = tl.associative_scan((tl.where(keep[:, None], gate, 0.0), (1.0 - gate) * v), 0,
                                    _combine_v)
        sv += A * carry[None, :]
        ss = tl.load(SS + bh * T + t, mask=valid, other=0.0) * scale_log2
        lse = tl.load(LSE + bh * T + t, mask=valid, other=0.0)
        delta = tl.load(DELTA + bh * T + t, mask=valid, other=0.0)
        p = tl.where(valid, tl.exp2(ss - lse), 0.0)
        dy = tl.load(DY + b * s_dy_b + t[:, None] * s_dy_t + h * s_dy_h + cols[None, :],
                     mask=valid[:, None], other=0.0).to(tl.float32)
        ds = p * (tl.sum(dy * sv, axis=1) - delta)
        tl.store(P + bh * T + t, p, mask=valid)
        tl.store(DS + bh * T + t, ds, mask=valid)
        carry = _last_row(sv, rows, BT)


@triton.jit
def _bwd_tile(
    Q, K, V, GL, BIAS, COS, SIN, DY, P, DS, DKE, DVE, DV, DGL,
    b, g, h, seg0, j, SEG, T, L, C_alloc, scale, rows, cols,
    s_q_b, s_q_t, s_q_g, s_k_b, s_k_t, s_k_g, s_v_b, s_v_t, s_v_h, s_gl_b, s_gl_t, s_gl_h,
    s_dy_b, s_dy_t, s_dy_h, s_dv_b, s_dv_t, s_dv_h, s_dgl_b, s_dgl_t, s_dgl_h,
    ck_lo, ck_hi, cv_lo, cv_hi, ak_lo_c, ak_hi_c, av_lo_c, av_hi_c,
    H: tl.constexpr, D2: tl.constexpr, BT: tl.constexpr, ROPE: tl.constexpr,
):
    """One head, one tile, the channel block `cols` of each RoPE half. Stores dv and
    dgate_logits; returns dq of the own-key term (rotated frame, natural order), this head's
    dk (reversed order), the adjoint carries for the tile before, and the tile's
    bias-gradient sums. The own key's weight p and score gradient ds come precomputed
    (`rat_scan_ds_kernel`: they reduce over all channels)."""
    D: tl.constexpr = 2 * D2
    bh = b * H + h
    r_n = j * BT + rows
    t_n = seg0 + r_n
    valid_n = (r_n < SEG) & (t_n < T)
    r_r = j * BT + (BT - 1 - rows)
    t_r = seg0 + r_r
    valid_r = (r_r < SEG) & (t_r < T)

    # natural order: states and the own key's part of dq
    sk_lo, sk_hi, sv_lo, sv_hi, k_lo, k_hi, v_lo, v_hi = _scan_tile(
        GL, BIAS, K, V, b, g, h, t_n, valid_n, L, cols,
        s_k_b, s_k_t, s_k_g, s_v_b, s_v_t, s_v_h, s_gl_b, s_gl_t, s_gl_h,
        ck_lo, ck_hi, cv_lo, cv_hi, D2)
    cos_n, sin_n = _cos_sin(COS, SIN, t_n, L, valid_n, cols, D2, ROPE)
    kr_lo, kr_hi = _rot(sk_lo, sk_hi, cos_n, sin_n, ROPE)
    ds = tl.load(DS + bh * T + t_n, mask=valid_n, other=0.0)
    dq_lo = (scale * ds)[:, None] * kr_lo
    dq_hi = (scale * ds)[:, None] * kr_hi
    ek_lo = tl.flip(sk_lo - k_lo, 0)
    ek_hi = tl.flip(sk_hi - k_hi, 0)
    ev_lo = tl.flip(sv_lo - v_lo, 0)
    ev_hi = tl.flip(sv_hi - v_hi, 0)
    p_r = tl.load(P + bh * T + t_r, mask=valid_r, other=0.0)
    ds_r = tl.load(DS + bh * T + t_r, mask=valid_r, other=0.0)

    # reversed order: gradients of the running states, then the adjoint scan
    cos_r, sin_r = _cos_sin(COS, SIN, t_r, L, valid_r, cols, D2, ROPE)
    q_lo, q_hi = _load_halves(Q + b * s_q_b + t_r * s_q_t + g * s_q_g, cols, valid_r, D2)
    qr_lo, qr_hi = _rot(q_lo, q_hi, cos_r, sin_r, ROPE)
    is_end = valid_r & ((t_r + 1) % L == 0)
    end_off = (bh * C_alloc + t_r // L) * D
    dke_lo, dke_hi = _load_halves(DKE + end_off, cols, is_end, D2)
    dve_lo, dve_hi = _load_halves(DVE + end_off, cols, is_end, D2)
    dsk_lo, dsk_hi = _unrot((scale * ds_r)[:, None] * qr_lo + dke_lo,
                            (scale * ds_r)[:, None] * qr_hi + dke_hi, cos_r, sin_r, ROPE)
    dy_lo, dy_hi = _load_halves(DY + b * s_dy_b + t_r * s_dy_t + h * s_dy_h, cols, valid_r, D2)
    dsv_lo = p_r[:, None] * dy_lo + dve_lo
    dsv_hi = p_r[:, None] * dy_hi + dve_hi
    gate_lo, gate_hi = _gate(GL, BIAS, b, h, t_r, valid_r, cols, s_gl_b, s_gl_t, s_gl_h, D2)
    t1 = t_r + 1
    ok1 = valid_r & ((t1 % L) != 0) & (t1 < T)
    g1_lo, g1_hi = _gate(GL, BIAS, b, h, t1, ok1, cols, s_gl_b, s_gl_t, s_gl_h, D2)
    A_lo, A_hi, ak_lo, ak_hi, av_lo, av_hi = tl.associative_scan(
        (tl.where(ok1[:, None], g1_lo, 0.0), tl.where(ok1[:, None], g1_hi, 0.0),
         dsk_lo, dsk_hi, dsv_lo, dsv_hi),
        0, _combine)
    ak_lo += A_lo * ak_lo_c[None, :]
    ak_hi += A_hi * ak_hi_c[None, :]
    av_lo += A_lo * av_lo_c[None, :]
    av_hi += A_hi * av_hi_c[None, :]
    _store_halves(DV + b * s_dv_b + t_r * s_dv_t + h * s_dv_h, cols,
                  (1.0 - gate_lo) * av_lo, (1.0 - gate_hi) * av_hi, valid_r, D2)
    dgl_lo = tl.where(valid_r[:, None], (1.0 - gate_lo) * (av_lo * ev_lo + ak_lo * ek_lo), 0.0)
    dgl_hi = tl.where(valid_r[:, None], (1.0 - gate_hi) * (av_hi * ev_hi + ak_hi * ek_hi), 0.0)
    _store_halves(DGL + b * s_dgl_b + t_r * s_dgl_t + h * s_dgl_h, cols, dgl_lo, dgl_hi,
                  valid_r, D2)
    return (dq_lo, dq_hi, (1.0 - gate_lo) * ak_lo, (1.0 - gate_hi) * ak_hi,
            _last_row(ak_lo, rows, BT), _last_row(ak_hi, rows, BT),
            _last_row(av_lo, rows, BT), _last_row(av_hi, rows, BT),
            tl.sum(dgl_lo, axis=0), tl.sum(dgl_hi, axis=0))


@triton.jit
def rat_scan_bwd_kernel(
    Q, K, V, GL, BIAS, COS, SIN, DY, P, DS, DKE, DVE, DQI,
    DQ, DK, DV, DGL, DBP, DKA, SCR,
    s_q_b, s_q_t, s_q_g, s_k_b, s_k_t, s_k_g, s_v_b, s_v_t, s_v_h, s_gl_b, s_gl_t, s_gl_h,
    s_dy_b, s_dy_t, s_dy_h, s_dq_b, s_dq_t, s_dq_g, s_dk_b, s_dk_t, s_dk_g,
    s_dv_b, s_dv_t, s_dv_h, s_dgl_b, s_dgl_t, s_dgl_h,
    T, L, SEG, n_tiles, n_seg, C_alloc, scale,
    H: tl.constexpr, G: tl.constexpr, D2: tl.constexpr, DB: tl.constexpr, BT: tl.constexpr,
    ROPE: tl.constexpr, SINGLE: tl.constexpr, CH_MAJOR: tl.constexpr,
):
    """Grid (segments x channel blocks, B * G): a program owns DB channels of each RoPE
    half, so that its tiles stay small (registers) and many programs share an SM. With
    CH_MAJOR the channel blocks of a segment are neighbouring programs (run together, so
    the rows they split stay in L2); otherwise every segment's first block comes first.
    Inputs besides the forward's: dy, the own key's p and ds [B,H,T]
    (`rat_scan_ds_kernel`), the attention's gradients of the chunk ends DKE/DVE [B,H,C,D]
    (fp32, rotated frame) and its dq DQI [B,T,G,D] (fp32, rotated frame, summed over the
    group's heads). Writes dq, dk, dv, dgate_logits and per-segment bias-gradient sums
    DBP [B*n_seg, H, D]. With SINGLE (one tile per segment) dq and dk are summed in
    registers; otherwise through DQI and DKA (fp32 [B,T,G,D], zeroed), with the tile
    carries kept in SCR."""
    NCB: tl.constexpr = D2 // DB
    if CH_MAJOR:
        pid_s = tl.program_id(0) // NCB
        pid_c = tl.program_id(0) % NCB
    else:
        pid_s = tl.program_id(0) % n_seg
        pid_c = tl.program_id(0) // n_seg
    pid_bg = tl.program_id(1)
    b = (pid_bg // G).to(tl.int64)
    g = pid_bg % G
    D: tl.constexpr = 2 * D2
    rows = tl.arange(0, BT)
    cols = pid_c * DB + tl.arange(0, DB)
    seg0 = pid_s * SEG
    prog = b * n_seg + pid_s
    zero = tl.zeros([DB], tl.float32)
    if SINGLE:
        t_n = seg0 + rows
        valid_n = (rows < SEG) & (t_n < T)
        t_r = seg0 + (BT - 1 - rows)
        valid_r = ((BT - 1 - rows) < SEG) & (t_r < T)
        dq_lo, dq_hi = _load_halves(DQI + ((b * T + t_n) * G + g) * D, cols, valid_n, D2)
        dk_lo = tl.zeros([BT, DB], tl.float32)
        dk_hi = tl.zeros([BT, DB], tl.float32)
        for hh in range(H // G):
            h = g + hh * G
            dq1_lo, dq1_hi, dk1_lo, dk1_hi, a0, a1, a2, a3, db_lo, db_hi = _bwd_tile(
                Q, K, V, GL, BIAS, COS, SIN, DY, P, DS, DKE, DVE, DV, DGL,
                b, g, h, seg0, 0, SEG, T, L, C_alloc, scale, rows, cols,
                s_q_b, s_q_t, s_q_g, s_k_b, s_k_t, s_k_g, s_v_b, s_v_t, s_v_h,
                s_gl_b, s_gl_t, s_gl_h, s_dy_b, s_dy_t, s_dy_h, s_dv_b, s_dv_t, s_dv_h,
                s_dgl_b, s_dgl_t, s_dgl_h,
                zero, zero, zero, zero, zero, zero, zero, zero, H, D2, BT, ROPE)
            dq_lo += dq1_lo
            dq_hi += dq1_hi
            dk_lo += dk1_lo
            dk_hi += dk1_hi
            tl.store(DBP + (prog * H + h) * D + cols, db_lo)
            tl.store(DBP + (prog * H + h) * D + D2 + cols, db_hi)
        cos, sin = _cos_sin(COS, SIN, t_n, L, valid_n, cols, D2, ROPE)
        dq_lo, dq_hi = _unrot(dq_lo, dq_hi, cos, sin, ROPE)
        _store_halves(DQ + b * s_dq_b + t_n * s_dq_t + g * s_dq_g, cols, dq_lo, dq_hi, valid_n, D2)
        _store_halves(DK + b * s_dk_b + t_r * s_dk_t + g * s_dk_g, cols, dk_lo, dk_hi, valid_r, D2)
    else:
        for hh in range(H // G):
            h = g + hh * G
            scr = SCR + (prog * H + h) * n_tiles * 4 * D2
            ck_lo = zero
            ck_hi = zero
            cv_lo = zero
            cv_hi = zero
            for j in range(n_tiles):
                tl.store(scr + (j * 4 + 0) * D2 + cols, ck_lo)
                tl.store(scr + (j * 4 + 1) * D2 + cols, ck_hi)
                tl.store(scr + (j * 4 + 2) * D2 + cols, cv_lo)
                tl.store(scr + (j * 4 + 3) * D2 + cols, cv_hi)
                r = j * BT + rows
                t = seg0 + r
                valid = (r < SEG) & (t < T)
                sk_lo, sk_hi, sv_lo, sv_hi, k_lo, k_hi, v_lo, v_hi = _scan_tile(
                    GL, BIAS, K, V, b, g, h, t, valid, L, cols,
                    s_k_b, s_k_t, s_k_g, s_v_b, s_v_t, s_v_h, s_gl_b, s_gl_t, s_gl_h,
                    ck_lo, ck_hi, cv_lo, cv_hi, D2)
                ck_lo, ck_hi, cv_lo, cv_hi = _carries(sk_lo, sk_hi, sv_lo, sv_hi, rows, BT)
            tl.debug_barrier()
            a0 = zero
            a1 = zero
            a2 = zero
            a3 = zero
            db_lo = zero
            db_hi = zero
            for jj in range(n_tiles):
                j = n_tiles - 1 - jj
                ck_lo = tl.load(scr + (j * 4 + 0) * D2 + cols)
                ck_hi = tl.load(scr + (j * 4 + 1) * D2 + cols)
                cv_lo = tl.load(scr + (j * 4 + 2) * D2 + cols)
                cv_hi = tl.load(scr + (j * 4 + 3) * D2 + cols)
                dq1_lo, dq1_hi, dk1_lo, dk1_hi, a0, a1, a2, a3, db1_lo, db1_hi = _bwd_tile(
                    Q, K, V, GL, BIAS, COS, SIN, DY, P, DS, DKE, DVE, DV, DGL,
                    b, g, h, seg0, j, SEG, T, L, C_alloc, scale, rows, cols,
                    s_q_b, s_q_t, s_q_g, s_k_b, s_k_t, s_k_g, s_v_b, s_v_t, s_v_h,
                    s_gl_b, s_gl_t, s_gl_h, s_dy_b, s_dy_t, s_dy_h, s_dv_b, s_dv_t, s_dv_h,
                    s_dgl_b, s_dgl_t, s_dgl_h,
                    ck_lo, ck_hi, cv_lo, cv_hi, a0, a1, a2, a3, H, D2, BT, ROPE)
                db_lo += db1_lo
                db_hi += db1_hi
                r_n = j * BT + rows
                t_n = seg0 + r_n
                valid_n = (r_n < SEG) & (t_n < T)
                p_n = DQI + ((b * T + t_n) * G + g) * D
                o_lo, o_hi = _load_halves(p_n, cols, valid_n, D2)
                _store_halves(p_n, cols, o_lo + dq1_lo, o_hi + dq1_hi, valid_n, D2)
                r_r = j * BT + (BT - 1 - rows)
                t_r = seg0 + r_r
                valid_r = (r_r < SEG) & (t_r < T)
                p_r = DKA + ((b * T + t_r) * G + g) * D
                o_lo, o_hi = _load_halves(p_r, cols, valid_r, D2)
                _store_halves(p_r, cols, o_lo + dk1_lo, o_hi + dk1_hi, valid_r, D2)
            tl.store(DBP + (prog * H + h) * D + cols, db_lo)
            tl.store(DBP + (prog * H + h) * D + D2 + cols, db_hi)
            tl.debug_barrier()
        for j in range(n_tiles):
            r = j * BT + rows
            t = seg0 + r
            valid = (r < SEG) & (t < T)
            dq_lo, dq_hi = _load_halves(DQI + ((b * T + t) * G + g) * D, cols, valid, D2)
            cos, sin = _cos_sin(COS, SIN, t, L, valid, cols, D2, ROPE)
            dq_lo, dq_hi = _unrot(dq_lo, dq_hi, cos, sin, ROPE)
            _store_halves(DQ + b * s_dq_b + t * s_dq_t + g * s_dq_g, cols, dq_lo, dq_hi, valid, D2)
            dk_lo, dk_hi = _load_halves(DKA + ((b * T + t) * G + g) * D, cols, valid, D2)
            _store_halves(DK + b * s_dk_b + t * s_dk_t + g * s_dk_g, cols, dk_lo, dk_hi, valid, D2)


# --- launchers ---------------------------------------------------------------------------


def tile_plan(T: int, L: int, backward: bool = False) -> tuple[int, int, int, int]:
    """(BT, SEG, n_tiles, num_warps): tile rows, tokens per program segment (whole chunks),
    tiles per segment, warps. Short chunks share one tile; a longer chunk is cut into tiles
    linked by carries. The limits keep the kernels free of register spills on sm_90 (the
    backward holds about twice the forward's tiles)."""
    p2 = triton.next_power_of_2(L)
    single_max = 16 if backward else 32
    if p2 <= single_max:
        BT = max(16, p2)
        return BT, L * (BT // L), 1, 8 if (backward or BT > 16) else 4
    BT = 16 if backward else 32
    return BT, L, triton.cdiv(min(L, T), BT), 8


def rope_table(n_chunks: int, head_dim: int, theta: float, device) -> tuple:
    """cos, sin [n_chunks, D/2] float32 at chunk indices 0..n_chunks-1 (the reference's own
    formula, so the angles agree bit for bit)."""
    import torch

    from archlab.kernels.rope import rope_cos_sin

    cos, sin = rope_cos_sin(torch.arange(max(n_chunks, 1), device=device), head_dim, theta)
    half = head_dim // 2
    return cos[:, :half].contiguous(), sin[:, :half].contiguous()


def scan_forward(q, k, v, gate_logits, gate_bias, chunk_size, rope, rope_theta,
                 k_end=None, v_end=None, core=True, partial=False):
    """Launch the forward pass. k_end/v_end: [B, C', H, D] views to write the chunk ends
    into (allocated [B, H, C, D] underneath when None). Returns (q_rot, v_run, s_self,
    k_end, v_end); the first three are None unless `core`."""
    import torch

    B, T, H, D = v.shape
    G = k.shape[2]
    L = chunk_size
    dev = v.device
    BT, SEG, n_tiles, warps = tile_plan(T, L)
    n_seg = triton.cdiv(T, SEG)
    C_alloc = max(T // L, 1)
    if k_end is None:
        k_end = torch.empty(B, H, C_alloc, D, device=dev, dtype=k.dtype).transpose(1, 2)
        v_end = torch.empty(B, H, C_alloc, D, device=dev, dtype=v.dtype).transpose(1, 2)
    if core:
        q_rot = torch.empty(B, T, G, D, device=dev, dtype=q.dtype)
        v_run = torch.empty(B, T, H, D, device=dev, dtype=v.dtype)
        s_self = torch.empty(B, H, T, device=dev, dtype=torch.float32)
    else:
        q, q_rot, v_run, s_self = k, k, v, k_end
    cos, sin = rope_table(triton.cdiv(T, L), D, rope_theta, dev) if rope else (k, k)
    rat_scan_fwd_kernel[(n_seg, B * G)](
        q, k, v, gate_logits, gate_bias, cos, sin,
        q_rot, v_run, s_self, k_end, v_end,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        gate_logits.stride(0), gate_logits.stride(1), gate_logits.stride(2),
        k_end.stride(0), k_end.stride(1), k_end.stride(2),
        v_end.stride(0), v_end.stride(1), v_end.stride(2),
        T, L, SEG, n_tiles,
        H=H, G=G, D2=D // 2, BT=BT, ROPE=rope, CORE=core, PARTIAL=partial,
        num_warps=warps,
    )
    if not core:
        return None, None, None, k_end, v_end
    return q_rot, v_run, s_self, k_end, v_end


# The backward scan on channel blocks, as timed on the H200 (docs/rat_kernels.md): 16
# channels at 2 warps, channel-major, took 11.9 ms at B x T = 64 x 4096, against 15.5 at
# 4 warps and 17.2 / 17.1 for 8 / 32 channels; segment-major at 2 warps took 17.1 (an
# earlier run). At 4 warps the order made no difference. One warp was timed later (16 x
# 16384, channel-major): 8 channels 8.34 ms, 16 channels 8.54, against 10.56 for 16 at 2
# warps, 11.44 for 8 at 2 and 11.51 for 32 at 1.
CHANNEL_BLOCK = 8  # channels of each RoPE half per program
CHANNEL_WARPS = 1  # warps of such a program
CHANNEL_MAJOR = True  # a segment's channel blocks run as neighbouring programs


def channel_block(D2: int, device) -> int:
    """Channels of each RoPE half per backward program: CHANNEL_BLOCK on the GPU (small
    tiles, several programs per SM), 4 under the interpreter so that the CPU tests cover
    several blocks. `benchmarks/rat_kernels.py` times the choices."""
    from archlab.kernels.rat.triton_attention import gpu_tiles

    return min(D2, CHANNEL_BLOCK if gpu_tiles(device) else 4)


def own_key_grads(v, gate_logits, gate_bias, s_self, dy, lse, delta, chunk_size):
    """The backward's first pass (`rat_scan_ds_kernel`): the own key's softmax weight p and
    score gradient ds, [B, H, T] float32, from the forward's own scores s_self [B,H,T]."""
    import torch

    B, T, H, D = v.shape
    p = torch.empty(B, H, T, device=v.device, dtype=torch.float32)
    ds = torch.empty_like(p)
    BT, SEG, n_tiles, warps = tile_plan(T, chunk_size)
    rat_scan_ds_kernel[(triton.cdiv(T, SEG), B * H)](
        v, gate_logits, gate_bias, s_self, dy, lse, delta, p, ds,
        v.stride(0), v.stride(1), v.stride(2),
        gate_logits.stride(0), gate_logits.stride(1), gate_logits.stride(2),
        dy.stride(0), dy.stride(1), dy.stride(2),
        T, chunk_size, SEG, n_tiles, D**-0.5 * 1.4426950408889634,
        H=H, D=D, BT=BT, num_warps=warps,
    )
    return p, ds


def scan_backward(q, k, v, gate_logits, gate_bias, s_self, dy, lse, delta, dk_end, dv_end,
                  dq_inter, chunk_size, rope, rope_theta, out=None):
    """Launch the backward pass. s_self: the forward's own scores [B,H,T] float32 (scan_forward
    returns them); dk_end/dv_end: fp32 [B, H, C, D] contiguous; dq_inter:
    fp32 [B, T, G, D] contiguous (overwritten when a chunk spans several tiles). `out`:
    (dq, dk, dv, dgate_logits) to write into (views, last dim contiguous), else new tensors.
    Returns dq, dk, dv, dgate_logits, dgate_bias."""
    import torch

    B, T, H, D = v.shape
    G = k.shape[2]
    L = chunk_size
    dev = v.device
    scale = D**-0.5
    cos, sin = rope_table(triton.cdiv(T, L), D, rope_theta, dev) if rope else (lse, lse)
    # pass 1: p and ds of the own key (reductions over all channels; rescans the values)
    p, ds = own_key_grads(v, gate_logits, gate_bias, s_self, dy, lse, delta, L)
    # pass 2: the adjoint scans, on channel blocks
    BT, SEG, n_tiles, warps = tile_plan(T, L, backward=True)
    n_seg = triton.cdiv(T, SEG)
    single = n_tiles == 1
    DB = channel_block(D // 2, dev)
    dq, dk, dv, dgl = out if out is not None else (
        torch.empty(x.shape, device=dev, dtype=x.dtype) for x in (q, k, v, gate_logits))
    dbp = torch.empty(B * n_seg, H, D, device=dev, dtype=torch.float32)
    if single:
        dka, scr = dbp, dbp
    else:
        dka = torch.zeros(B, T, G, D, device=dev, dtype=torch.float32)
        scr = torch.empty(B * n_seg, H, n_tiles, 4, D // 2, device=dev, dtype=torch.float32)
    rat_scan_bwd_kernel[(n_seg * (D // 2 // DB), B * G)](
        q, k, v, gate_logits, gate_bias, cos, sin, dy, p, ds, dk_end, dv_end, dq_inter,
        dq, dk, dv, dgl, dbp, dka, scr,
        q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
        v.stride(0), v.stride(1), v.stride(2),
        gate_logits.stride(0), gate_logits.stride(1), gate_logits.stride(2),
        dy.stride(0), dy.stride(1), dy.stride(2), dq.stride(0), dq.stride(1), dq.stride(2),
        dk.stride(0), dk.stride(1), dk.stride(2), dv.stride(0), dv.stride(1), dv.stride(2),
        dgl.stride(0), dgl.stride(1), dgl.stride(2),
        T, L, SEG, n_tiles, n_seg, dk_end.shape[2], scale,
        H=H, G=G, D2=D // 2, DB=DB, BT=BT, ROPE=rope, SINGLE=single, CH_MAJOR=CHANNEL_MAJOR,
        num_warps=CHANNEL_WARPS if DB < D // 2 else warps,
    )
    dbias = dbp.sum(0).reshape(H * D).to(gate_bias.dtype)
    return dq, dk, dv, dgl, dbias
