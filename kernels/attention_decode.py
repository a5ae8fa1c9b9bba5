"""Decode attention in Triton: one query per head against the cached keys and values, split
over the cache (flash-decoding), at the memory bound whatever the cache length.

torch's `scaled_dot_product_attention` runs cuDNN's kernel on an H200 (torch 2.11), and
cuDNN builds an execution plan for each new shape: 36-54 ms measured for a call at a cache
length not run before, which a generation pays at every step. This kernel costs the same
at every length: one program per (batch row, key/value head, split of the cache), its
group's queries padded to 16 rows so that scores and outputs run on tensor cores, each
cached key and value read once.

- `decode_attention(q, k_cache, v_cache, length, scale)`: q [B, H, D]; caches [B, S, K, D]
  (K key/value heads, H a multiple of K: grouped-query attention), of which slots
  0 .. length - 1 are attended (any order: attention over keys is order-free, so a ring
  buffer's slots work too). Returns [B, H, D] in q's dtype. A torch custom op
  (`archlab::decode_attention`) with a fake implementation, so torch.compile traces it.
- The split over the cache depends only on its capacity S, not on `length`, so one
  captured CUDA graph stays valid for every step; `combine_splits_kernel` merges the
  splits' (max, sum, accumulator) and is shared with RAT's decode step.
"""

# fmt: off
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch.utils.flop_counter import register_flop_formula

LOG2E = 1.4426950408889634


@dataclass
class Tile:
    """How the kernel runs on a GPU: keys per loop iteration, warps, pipeline stages, and
    the programs per SM that the split over the cache aims for."""

    block_n: int = 128
    warps: int = 4
    stages: int = 2
    programs_per_sm: int = 4
    long_stages: int = 4  # stages where a program reads at least LONG_SLOTS slots


# Of the 32 tiles `benchmarks/decode_attention.py --sweep` timed on an H200 (bf16, 16 heads
# of 128 at 176 and 512 rows, 4K and 16K slots, and a 1024-slot window; 32 query heads on 8
# key heads at 64 rows, 32K slots), this one was within 0.1% of the fastest at three shapes,
# 0.8% behind at 16K slots, and 4.4% behind 8 warps and 3 stages with grouped heads. One
# program per query head with products summed in registers (RAT's decode layout) was slower
# at every shape, and capping the slots one split reads did not help
# (benchmarks/results/2026-11-30d-h200x2/, runs 3 and 4).
# At long caches deeper pipelines pay: with 16K slots (512 rows) 2 stages were 0.9% behind
# 3 or 4 stages and cuDNN, all within 0.1% of one another; with 64K slots (128 rows) 4 stages
# were 0.2% behind 2 and 1.5% ahead of cuDNN, 3 stages 0.9% behind 2 (`decode_attention.py
# --stages`, five interleaved rounds, 2026-11-30).
GPU_TILE = Tile()
LONG_SLOTS = 8192


@triton.jit(do_not_specialize=["length"])
def decode_attention_kernel(
    Q, KC, VC, PM, PL, PACC, Y, length,
    s_q_b, s_q_h, s_k_b, s_k_s, s_k_h, s_v_b, s_v_s, s_v_h, s_y_b, s_y_h,
    slots_per_split, n_splits, scale_log2,
    H: tl.constexpr, KV: tl.constexpr, GROUP: tl.constexpr, GP: tl.constexpr,
    D: tl.constexpr, DP: tl.constexpr, BN: tl.constexpr, SPLIT: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_bk = tl.program_id(0)
    pid_s = tl.program_id(1)
    b = (pid_bk // KV).to(tl.int64)
    kv = pid_bk % KV
    g_rows = tl.arange(0, GP)
    in_g = g_rows < GROUP
    h = kv * GROUP + g_rows
    cols = tl.arange(0, DP)
    in_d = cols < D
    q = tl.load(Q + b * s_q_b + h[:, None] * s_q_h + cols[None, :],
                mask=in_g[:, None] & in_d[None, :], other=0.0)
    m = tl.full([GP], float("-inf"), tl.float32)
    l_sum = tl.zeros([GP], tl.float32)
    acc = tl.zeros([GP, DP], tl.float32)
    lo = pid_s * slots_per_split
    hi = tl.minimum(length, lo + slots_per_split)
    offs_n = tl.arange(0, BN)
    k_base = KC + b * s_k_b + kv * s_k_h + cols[None, :]
    v_base = VC + b * s_v_b + kv * s_v_h + cols[None, :]
    for start in range(lo, hi, BN):
        offs = start + offs_n
        valid = offs < hi
        rows = offs[:, None].to(tl.int64)
        load_mask = valid[:, None] & in_d[None, :]
        k = tl.load(k_base + rows * s_k_s, mask=load_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=PREC).to(tl.float32) * scale_log2
        s = tl.where(valid[None, :], s, float("-inf"))
        m_new = tl.maximum(m, tl.max(s, axis=1))
        alpha = tl.exp2(m - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_sum = l_sum * alpha + tl.sum(p, axis=1)
        v = tl.load(v_base + rows * s_v_s, mask=load_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC).to(tl.float32)
        m = m_new
    out_mask = in_g[:, None] & in_d[None, :]
    if SPLIT:
        idx = (b * H + h) * n_splits + pid_s
        tl.store(PM + idx, m, mask=in_g)
        tl.store(PL + idx, l_sum, mask=in_g)
        tl.store(PACC + idx[:, None] * D + cols[None, :], acc, mask=out_mask)
    else:
        y = acc / l_sum[:, None]
        tl.store(Y + b * s_y_b + h[:, None] * s_y_h + cols[None, :],
                 y.to(Y.dtype.element_ty), mask=out_mask)


@triton.jit
def combine_splits_kernel(PM, PL, PACC, Y, s_y_b, s_y_h, n_splits,
                          H: tl.constexpr, D: tl.constexpr, DP: tl.constexpr,
                          NS: tl.constexpr):
    """y[b, h] from the n_splits partial (max in log2 units, sum, accumulator [D]; DP: D
    rounded up to a power of two) of program b * H + h; a split that read no key holds
    max -inf and weighs nothing."""
    pid_bh = tl.program_id(0)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H
    offs_s = tl.arange(0, NS)
    offs_d = tl.arange(0, DP)
    in_d = offs_d < D
    valid = offs_s < n_splits
    base = pid_bh * n_splits
    ms = tl.load(PM + base + offs_s, mask=valid, other=float("-inf"))
    m = tl.max(ms, axis=0)
    w = tl.where(valid, tl.exp2(ms - m), 0.0)
    l_sum = tl.sum(w * tl.load(PL + base + offs_s, mask=valid, other=0.0), axis=0)
    acc = tl.load(PACC + (base + offs_s[:, None]) * D + offs_d[None, :],
                  mask=valid[:, None] & in_d[None, :], other=0.0)
    y = tl.sum(w[:, None] * acc, axis=0) / l_sum
    tl.store(Y + b * s_y_b + h * s_y_h + offs_d, y.to(Y.dtype.element_ty), mask=in_d)


def num_splits(programs: int, slots: int, device, block: int, per_sm: int = 4) -> int:
    """Splits over the cache so that the grid covers the GPU `per_sm` times over; fixed by
    the cache capacity (not the position), so a captured graph stays valid for every step."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if (
        device.type == "cuda") else 4
    want = triton.cdiv(per_sm * sms, programs)
    return max(1, min(want, triton.cdiv(slots, 2 * block), 64))


def split_partials(y: torch.Tensor, n_splits: int):
    """Buffers for the splits' partial (max, sum, accumulator) of y [B, H, D] (float32), or
    y three times for one split, whose kernel writes y itself."""
    if n_splits == 1:
        return y, y, y
    B, H, D = y.shape
    pm = torch.empty(B * H * n_splits, device=y.device, dtype=torch.float32)
    pacc = torch.empty(B * H * n_splits, D, device=y.device, dtype=torch.float32)
    return pm, torch.empty_like(pm), pacc


def combine_splits(pm, pl, pacc, y: torch.Tensor, n_splits: int) -> None:
    """Write y [B, H, D] from the splits' partials (nothing to do for one split)."""
    if n_splits > 1:
        B, H, D = y.shape
        combine_splits_kernel[(B * H,)](
            pm, pl, pacc, y, y.stride(0), y.stride(1), n_splits,
            H=H, D=D, DP=triton.next_power_of_2(D), NS=triton.next_power_of_2(n_splits),
            num_warps=4)


def _launch(q, k_cache, v_cache, length: int, scale: float):
    B, H, D = q.shape
    S, K = k_cache.shape[1], k_cache.shape[2]
    dev = q.device
    tile = GPU_TILE if dev.type == "cuda" else Tile(16, programs_per_sm=GPU_TILE.programs_per_sm)
    programs = B * K
    n_splits = num_splits(programs, S, dev, tile.block_n, tile.programs_per_sm)
    slots_per_split = triton.cdiv(S, n_splits)
    stages = tile.long_stages if slots_per_split >= LONG_SLOTS else tile.stages
    y = torch.empty(B, H, D, device=dev, dtype=q.dtype)
    pm, pl, pacc = split_partials(y, n_splits)
    decode_attention_kernel[(programs, n_splits)](
        q, k_cache, v_cache, pm, pl, pacc, y, length,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        v_cache.stride(0), v_cache.stride(1), v_cache.stride(2), y.stride(0), y.stride(1),
        slots_per_split, n_splits, scale * LOG2E,
        H=H, KV=K, GROUP=H // K, GP=max(16, triton.next_power_of_2(H // K)), D=D,
        DP=max(16, triton.next_power_of_2(D)), BN=tile.block_n, SPLIT=n_splits > 1,
        PREC="ieee" if q.dtype == torch.float32 else "tf32",
        num_warps=tile.warps, num_stages=stages,
    )
    combine_splits(pm, pl, pacc, y, n_splits)
    return y


@torch.library.custom_op("archlab::decode_attention", mutates_args=())
def decode_attention_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        length: int, scale: float) -> torch.Tensor:
    return _launch(q, k_cache, v_cache, length, scale)


@decode_attention_op.register_fake
def _(q, k_cache, v_cache, length, scale):
    return q.new_empty(q.shape)


@register_flop_formula(torch.ops.archlab.decode_attention)
def _flops(q_shape, k_shape, v_shape, length, scale, *args, out_shape=None, **kwargs) -> int:
    B, H, D = q_shape
    return 4 * B * H * D * length  # q.k and p.v per attended slot


def decode_attention_reference(q_BHD: torch.Tensor, k_cache_BSKD: torch.Tensor,
                               v_cache_BSKD: torch.Tensor, length: int) -> torch.Tensor:
    """softmax(q k^T / sqrt(D)) v over cache slots 0 .. length - 1, in float32: what
    `decode_attention` computes (grouped heads repeated), for its tests and benchmark."""
    H, K = q_BHD.shape[1], k_cache_BSKD.shape[2]
    k = k_cache_BSKD[:, :length].float().repeat_interleave(H // K, dim=2)
    v = v_cache_BSKD[:, :length].float().repeat_interleave(H // K, dim=2)
    s = torch.einsum("bhd,bshd->bhs", q_BHD.float(), k) * q_BHD.shape[-1] ** -0.5
    return torch.einsum("bhs,bshd->bhd", s.softmax(-1), v)


def decode_attention(q_BHD: torch.Tensor, k_cache_BSKD: torch.Tensor,
                     v_cache_BSKD: torch.Tensor, length: int,
                     scale: float | None = None) -> torch.Tensor:
    """softmax(q k^T * scale) v over cache slots 0 .. length - 1 for one query per head:
    q [B, H, D], caches [B, S, K, D] with H a multiple of K; returns [B, H, D] in q's
    dtype (float32 accumulation). `scale` defaults to D ** -0.5."""
    B, H, D = q_BHD.shape
    for c in (k_cache_BSKD, v_cache_BSKD):
        if c.dim() != 4 or c.shape[0] != B or c.shape[3] != D or H % c.shape[2]:
            raise ValueError(f"cache {tuple(c.shape)} does not match queries {tuple(q_BHD.shape)}")
        if c.stride(-1) != 1:
            raise ValueError("the cache must have last-dim stride 1")
    if v_cache_BSKD.shape != k_cache_BSKD.shape:
        raise ValueError("key and value caches differ in shape")
    if not 1 <= length <= k_cache_BSKD.shape[1]:
        raise ValueError(f"length {length} outside 1 .. {k_cache_BSKD.shape[1]}")
    q = q_BHD if q_BHD.stride(-1) == 1 else q_BHD.contiguous()
    s = D**-0.5 if scale is None else float(scale)
    return torch.ops.archlab.decode_attention(q, k_cache_BSKD, v_cache_BSKD, int(length), s)
