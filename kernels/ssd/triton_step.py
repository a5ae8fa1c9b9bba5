"""One SSD (Mamba-2) decode step in Triton, the state updated in place.

Per batch row b and head h (group g = h // (H // G), as in `reference.ssd_step`):

    state = exp(dt A) state + dt x B^T,        y = state C,

with the state [P, N] float32 and all maths in float32 (inputs of any float dtype are
upcast in registers). `reference.ssd_step` returns a new state, so a decode step there reads
and writes the whole state several times (decay, outer product, einsum, copy back into the
cache); the step is memory-bound on the state, and this kernel reads it once and writes it
once, in place.

Layout: one program per (batch, head, block of BP rows of P): it loads the state tile
[BP, N] (N padded to a power of two and masked; P masked), x [BP], dt, A, and the group's
B and C [N], computes the new tile and y [BP] = sum over N of tile * C, and stores both. The
grid is 1-D over (b, h, P block) with the P blocks innermost, so consecutive programs touch
consecutive state memory. Every input is read through its strides (views of the in_proj
output need no copy); the state needs unit stride along N.

Entry point: `ssd_step_triton(x, dt, A, B, C, state) -> y [B, H, P] float32`, a torch custom
op (`archlab::ssd_step`, mutating `state`) with a fake implementation, so `torch.compile`
traces it and a CUDA graph can capture it (no host sync). No autograd (decode only).

Without a GPU the kernel runs under Triton's interpreter (TRITON_INTERPRET=1, set before
this module is imported) with small row blocks.
"""

# fmt: off
from __future__ import annotations

import torch
import triton
import triton.language as tl

from archlab.kernels.runtime import triton_interpreted as _interpret

Tensor = torch.Tensor

# rows of P per program and warps on a GPU, read at each launch (a benchmark can sweep them).
# With 16 rows and 4 warps the ssm block's decode step ran 1.89-1.92x its fla-based peer at
# batch 512 on an H200 (docs/peers.md); no other choice is on record.
BP_GPU, WARPS_GPU = 16, 4
# the interpreter: a small block, so that the CPU tests cover several blocks and a ragged one
BP_CPU = 8


@triton.jit
def ssd_step_kernel(X, DT, A, BM, CM, S, Y, H, P, N, heads_per_group, n_pblocks,
                    s_x_b, s_x_h, s_x_p, s_dt_b, s_dt_h, s_a,
                    s_b_b, s_b_g, s_b_n, s_c_b, s_c_g, s_c_n,
                    s_s_b, s_s_h, s_s_p, s_y_b, s_y_h,
                    BP: tl.constexpr, BN: tl.constexpr):
    """Grid (B * H * n_pblocks,). The state S [B, H, P, N] (unit stride along N) is
    overwritten with the new state; y [B, H, P] (unit stride along P) is float32."""
    pid = tl.program_id(0)
    pblk = pid % n_pblocks
    bh = pid // n_pblocks
    b = (bh // H).to(tl.int64)
    h = bh % H
    g = h // heads_per_group
    rows = pblk * BP + tl.arange(0, BP)
    cols = tl.arange(0, BN)
    rmask = rows < P
    cmask = cols < N
    dt = tl.load(DT + b * s_dt_b + h * s_dt_h).to(tl.float32)
    decay = tl.exp(dt * tl.load(A + h * s_a).to(tl.float32))
    x = tl.load(X + b * s_x_b + h * s_x_h + rows * s_x_p, mask=rmask, other=0.0).to(tl.float32)
    bv = tl.load(BM + b * s_b_b + g * s_b_g + cols * s_b_n, mask=cmask, other=0.0).to(tl.float32)
    cv = tl.load(CM + b * s_c_b + g * s_c_g + cols * s_c_n, mask=cmask, other=0.0).to(tl.float32)
    s_ptr = S + b * s_s_b + h * s_s_h + rows[:, None] * s_s_p + cols[None, :]
    m = rmask[:, None] & cmask[None, :]
    s = tl.load(s_ptr, mask=m, other=0.0)
    s = decay * s + (dt * x)[:, None] * bv[None, :]
    tl.store(s_ptr, s, mask=m)
    y = tl.sum(s * cv[None, :], axis=1)
    tl.store(Y + b * s_y_b + h * s_y_h + rows, y, mask=rmask)


# --- custom op --------------------------------------------------------------------------------


@torch.library.custom_op("archlab::ssd_step", mutates_args=("state",))
def ssd_step_op(x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, state: Tensor
                ) -> Tensor:
    """x [B,H,P], dt [B,H], A [H], B and C [B,G,N] (any strides), state [B,H,P,N] float32
    with unit stride along N (updated in place) -> y [B,H,P] float32."""
    if x.device.type != "cuda" and not _interpret():
        raise RuntimeError("ssd_step_triton needs CUDA tensors (or TRITON_INTERPRET=1)")
    Bsz, H, P, N = state.shape
    G = B.shape[1]
    y = torch.empty(Bsz, H, P, device=x.device, dtype=torch.float32)
    gpu = x.device.type == "cuda" and not _interpret()
    BP = min(BP_GPU if gpu else BP_CPU, triton.next_power_of_2(P))
    n_pblocks = triton.cdiv(P, BP)
    ssd_step_kernel[(Bsz * H * n_pblocks,)](
        x, dt, A, B, C, state, y, H, P, N, H // G, n_pblocks,
        *x.stride(), *dt.stride(), A.stride(0), *B.stride(), *C.stride(),
        *state.stride()[:3], *y.stride()[:2],
        BP=BP, BN=triton.next_power_of_2(N), num_warps=WARPS_GPU if gpu else 1)
    return y


@ssd_step_op.register_fake
def _(x, dt, A, B, C, state):
    return x.new_empty(state.shape[:3], dtype=torch.float32)


# --- public function --------------------------------------------------------------------------


def ssd_step_triton(x_BHP: Tensor, dt_BH: Tensor, A_H: Tensor, B_BGN: Tensor, C_BGN: Tensor,
                    state_BHPN: Tensor) -> Tensor:
    """`reference.ssd_step` in one kernel, with the state updated in place: x [B, H, P],
    dt [B, H], A [H], B and C [B, G, N] (G divides H; any float dtype, any strides),
    state [B, H, P, N] float32 with unit stride along N (the cache's). Returns y [B, H, P]
    float32; the new state is left in `state_BHPN`. No autograd."""
    Bsz, H, P, N = state_BHPN.shape
    G = B_BGN.shape[1] if B_BGN.dim() == 3 else 0
    if (tuple(x_BHP.shape) != (Bsz, H, P) or tuple(dt_BH.shape) != (Bsz, H)
            or tuple(A_H.shape) != (H,) or G == 0 or H % G
            or tuple(B_BGN.shape) != (Bsz, G, N) or tuple(C_BGN.shape) != (Bsz, G, N)):
        raise ValueError(f"ssd_step shapes do not match: x{tuple(x_BHP.shape)} "
                         f"dt{tuple(dt_BH.shape)} A{tuple(A_H.shape)} B{tuple(B_BGN.shape)} "
                         f"C{tuple(C_BGN.shape)} state{tuple(state_BHPN.shape)}")
    if state_BHPN.dtype != torch.float32 or state_BHPN.stride(-1) != 1:
        raise ValueError("state must be float32 with unit stride along its last dim")
    return torch.ops.archlab.ssd_step(x_BHP, dt_BH, A_H, B_BGN, C_BGN, state_BHPN)
