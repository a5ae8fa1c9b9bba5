"""RAT's decode step in Triton: the running-state update fused with a split-K
(flash-decoding) attention over the cache.

Cache layout (reference.py): k_cache, v_cache [B, C_max, H, D]; slot c < pos // L holds
the end of chunk c (key RoPE-rotated at c); slot pos // L holds the running, un-rotated
state of the chunk in progress. One program per (batch, head, split): split 0 also updates
the running state, writes slot pos // L and puts the token's own key into its softmax as
the initial state; every split scans its share of slots 0..pos//L - 1. The position is read
on the device when given as a tensor, and the grid depends only on the cache capacity, so
the step can be captured in a CUDA graph. A combine kernel merges the splits' (m, l, acc).
"""

# fmt: off
from __future__ import annotations

import triton
import triton.language as tl

from archlab.kernels.attention_decode import combine_splits, num_splits, split_partials
from archlab.kernels.rat import triton_attention as _attn
from archlab.kernels.rat.triton_scan import _rot

LOG2E = 1.4426950408889634


@triton.jit
def _own_key(GL, BIAS, K, V, KC, VC, b, g, h, pos, c, L, cols, cos, sin, qr_lo, qr_hi,
             s_gl_b, s_gl_h, s_k_b, s_k_g, s_v_b, s_v_h, s_kc_b, s_kc_c, s_kc_h,
             s_vc_b, s_vc_c, s_vc_h, scale_log2, m, l_sum, acc_lo, acc_hi,
             D2: tl.constexpr, ROPE: tl.constexpr):
    """Advance the running state of chunk c by this token, store it in slot c (rotated
    when the chunk completes), and fold the token's own key into the online softmax."""
    gl_ptr = GL + b * s_gl_b + h * s_gl_h + cols
    gate_lo = tl.sigmoid(tl.load(gl_ptr).to(tl.float32)
                         + tl.load(BIAS + h * 2 * D2 + cols).to(tl.float32))
    gate_hi = tl.sigmoid(tl.load(gl_ptr + D2).to(tl.float32)
                         + tl.load(BIAS + h * 2 * D2 + D2 + cols).to(tl.float32))
    go_on = (cols * 0 + pos % L) != 0  # not a chunk start: continue the state
    kc_ptr = KC + b * s_kc_b + c * s_kc_c + h * s_kc_h + cols
    vc_ptr = VC + b * s_vc_b + c * s_vc_c + h * s_vc_h + cols
    k_ptr = K + b * s_k_b + g * s_k_g + cols
    v_ptr = V + b * s_v_b + h * s_v_h + cols
    kn_lo = (1.0 - gate_lo) * tl.load(k_ptr).to(tl.float32) \
        + gate_lo * tl.load(kc_ptr, mask=go_on, other=0.0).to(tl.float32)
    kn_hi = (1.0 - gate_hi) * tl.load(k_ptr + D2).to(tl.float32) \
        + gate_hi * tl.load(kc_ptr + D2, mask=go_on, other=0.0).to(tl.float32)
    vn_lo = (1.0 - gate_lo) * tl.load(v_ptr).to(tl.float32) \
        + gate_lo * tl.load(vc_ptr, mask=go_on, other=0.0).to(tl.float32)
    vn_hi = (1.0 - gate_hi) * tl.load(v_ptr + D2).to(tl.float32) \
        + gate_hi * tl.load(vc_ptr + D2, mask=go_on, other=0.0).to(tl.float32)
    ks_lo, ks_hi = _rot(kn_lo, kn_hi, cos, sin, ROPE)
    complete = ((pos + 1) % L) == 0  # the chunk ends here: store the rotated key
    tl.store(kc_ptr, tl.where(complete, ks_lo, kn_lo).to(KC.dtype.element_ty))
    tl.store(kc_ptr + D2, tl.where(complete, ks_hi, kn_hi).to(KC.dtype.element_ty))
    tl.store(vc_ptr, vn_lo.to(VC.dtype.element_ty))
    tl.store(vc_ptr + D2, vn_hi.to(VC.dtype.element_ty))
    s_own = tl.sum(qr_lo * ks_lo + qr_hi * ks_hi, axis=0) * scale_log2
    m_new = tl.maximum(m, s_own)
    alpha = tl.exp2(m - m_new)
    p_own = tl.exp2(s_own - m_new)
    l_sum = l_sum * alpha + p_own
    acc_lo = acc_lo * alpha + p_own * vn_lo
    acc_hi = acc_hi * alpha + p_own * vn_hi
    m = m_new
    return m, l_sum, acc_lo, acc_hi


@triton.jit(do_not_specialize=["pos_int"])
def rat_decode_kernel(
    Q, K, V, GL, BIAS, KC, VC, POS, pos_int, INV_FREQ, PM, PL, PACC, Y,
    s_q_b, s_q_g, s_k_b, s_k_g, s_v_b, s_v_h, s_gl_b, s_gl_h,
    s_kc_b, s_kc_c, s_kc_h, s_vc_b, s_vc_c, s_vc_h, s_y_b, s_y_h,
    L, slots_per_split, n_splits, scale_log2,
    H: tl.constexpr, G: tl.constexpr, D2: tl.constexpr, BN: tl.constexpr,
    ROPE: tl.constexpr, POS_PTR: tl.constexpr, SPLIT: tl.constexpr, OWN_LAST: tl.constexpr,
):
    pid_bh = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    g = h % G
    if POS_PTR:
        pos = tl.load(POS).to(tl.int32)
    else:
        pos = pos_int
    c = pos // L
    cols = tl.arange(0, D2)
    q_lo = tl.load(Q + b * s_q_b + g * s_q_g + cols).to(tl.float32)
    q_hi = tl.load(Q + b * s_q_b + g * s_q_g + D2 + cols).to(tl.float32)
    if ROPE:
        ang = c.to(tl.float32) * tl.load(INV_FREQ + cols)
        cos = tl.cos(ang)
        sin = tl.sin(ang)
    else:  # unused, but _own_key takes them
        cos = tl.full([D2], 1.0, tl.float32)
        sin = tl.zeros([D2], tl.float32)
    qr_lo, qr_hi = _rot(q_lo, q_hi, cos, sin, ROPE)
    m = tl.full([], float("-inf"), tl.float32)
    l_sum = tl.full([], 0.0, tl.float32)
    acc_lo = tl.zeros([D2], tl.float32)
    acc_hi = tl.zeros([D2], tl.float32)
    if (not OWN_LAST) and pid_s == 0:
        m, l_sum, acc_lo, acc_hi = _own_key(
            GL, BIAS, K, V, KC, VC, b, g, h, pos, c, L, cols, cos, sin, qr_lo, qr_hi,
            s_gl_b, s_gl_h, s_k_b, s_k_g, s_v_b, s_v_h, s_kc_b, s_kc_c, s_kc_h,
            s_vc_b, s_vc_c, s_vc_h, scale_log2, m, l_sum, acc_lo, acc_hi, D2, ROPE)
    lo = pid_s * slots_per_split
    hi = tl.minimum(c, lo + slots_per_split)
    offs_n = tl.arange(0, BN)
    k_base = KC + b * s_kc_b + h * s_kc_h + cols[None, :]
    v_base = VC + b * s_vc_b + h * s_vc_h + cols[None, :]
    for start in range(lo, hi, BN):
        offs = start + offs_n
        valid = offs < hi
        kp = k_base + offs[:, None].to(tl.int64) * s_kc_c
        vp = v_base + offs[:, None].to(tl.int64) * s_vc_c
        k_lo = tl.load(kp, mask=valid[:, None], other=0.0).to(tl.float32)
        k_hi = tl.load(kp + D2, mask=valid[:, None], other=0.0).to(tl.float32)
        s = tl.sum(qr_lo[None, :] * k_lo + qr_hi[None, :] * k_hi, axis=1) * scale_log2
        s = tl.where(valid, s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=0))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new)
        l_sum = l_sum * alpha + tl.sum(p, axis=0)
        v_lo = tl.load(vp, mask=valid[:, None], other=0.0).to(tl.float32)
        v_hi = tl.load(vp + D2, mask=valid[:, None], other=0.0).to(tl.float32)
        acc_lo = acc_lo * alpha + tl.sum(p[:, None] * v_lo, axis=0)
        acc_hi = acc_hi * alpha + tl.sum(p[:, None] * v_hi, axis=0)
        m = m_new
    # OWN_LAST: the own key after the cache reads, which then need not wait for the state's
    # loads and stores (slot c, which no split reads); measured order: first
    if OWN_LAST and pid_s == 0:
        m, l_sum, acc_lo, acc_hi = _own_key(
            GL, BIAS, K, V, KC, VC, b, g, h, pos, c, L, cols, cos, sin, qr_lo, qr_hi,
            s_gl_b, s_gl_h, s_k_b, s_k_g, s_v_b, s_v_h, s_kc_b, s_kc_c, s_kc_h,
            s_vc_b, s_vc_c, s_vc_h, scale_log2, m, l_sum, acc_lo, acc_hi, D2, ROPE)
    if SPLIT:
        idx = pid_bh * n_splits + pid_s
        tl.store(PM + idx, m)
        tl.store(PL + idx, l_sum)
        tl.store(PACC + idx * 2 * D2 + cols, acc_lo)
        tl.store(PACC + idx * 2 * D2 + D2 + cols, acc_hi)
    else:
        y_ptr = Y + b * s_y_b + h * s_y_h + cols
        tl.store(y_ptr, (acc_lo / l_sum).to(Y.dtype.element_ty))
        tl.store(y_ptr + D2, (acc_hi / l_sum).to(Y.dtype.element_ty))


# the decode kernel's tile on the GPU: cache slots per iteration, warps, pipeline stages.
# Fastest of the eight that `benchmarks/rat_kernels.py` timed on the H200 at T = 4K and 64K
# (docs/rat_kernels.md): 2 warps took 17% less time than 4 at 4K.
BLOCK_N, NUM_WARPS, NUM_STAGES = 64, 2, 3

_INV_FREQ: dict = {}


def inv_freq(head_dim: int, theta: float, device):
    """RoPE inverse frequencies [D/2] float32, by the reference's formula (cached)."""
    import torch

    key = (head_dim, float(theta), str(device))
    if key not in _INV_FREQ:
        ar = torch.arange(0, head_dim, 2, device=device, dtype=torch.float32)
        _INV_FREQ[key] = 1.0 / (theta ** (ar / head_dim))
    return _INV_FREQ[key]


def decode_step(q, k, v, gate_logits, gate_bias, k_cache, v_cache, pos_tensor, pos_int,
                chunk_size, rope, rope_theta, n_splits=None, own_last=False):
    """Launch one decode step; returns y [B, H, D] in v's dtype. `own_last` folds the
    token's own key in after the cache reads instead of before (same result; which is
    faster is for `benchmarks/rat_kernels.py` to measure)."""
    import torch

    B, H, D = v.shape
    G = q.shape[1]
    dev = v.device
    C_max = k_cache.shape[1]
    BN = BLOCK_N if _attn.gpu_tiles(dev) else 16
    if n_splits is None:
        n_splits = num_splits(B * H, C_max, dev, BN)
    slots_per_split = triton.cdiv(C_max, n_splits)
    y = torch.empty(B, H, D, device=dev, dtype=v.dtype)
    pm, pl, pacc = split_partials(y, n_splits)
    freqs = inv_freq(D, rope_theta, dev) if rope else y
    pos_ptr = pos_tensor if pos_tensor is not None else y
    rat_decode_kernel[(B * H, n_splits)](
        q, k, v, gate_logits, gate_bias, k_cache, v_cache, pos_ptr,
        pos_int if pos_tensor is None else 0, freqs, pm, pl, pacc, y,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        gate_logits.stride(0), gate_logits.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), y.stride(0), y.stride(1),
        chunk_size, slots_per_split, n_splits, D**-0.5 * LOG2E,
        H=H, G=G, D2=D // 2, BN=BN, ROPE=rope, POS_PTR=pos_tensor is not None, SPLIT=n_splits > 1,
        OWN_LAST=own_last, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
    )
    combine_splits(pm, pl, pacc, y, n_splits)
    return y
