"""Public entry points of RAT's Triton kernels, wrapped as torch custom ops.

- `rat_core_triton(q, k, v, gate_logits, gate_bias, chunk_size, rope, rope_theta) -> y`:
  the semantics of `reference.rat_core_reference`, differentiable in q, k, v, gate_logits
  and gate_bias; y in v's dtype.
- `rat_decode_triton(q, k, v, gate_logits, gate_bias, k_cache, v_cache, pos, chunk_size,
  rope, rope_theta) -> y [B, H, D]`: one decode step (`reference.rat_decode_reference`),
  updating the cache slot in place; `pos` may be an int or a 0-d int tensor on the device
  (no host sync, so the step can be captured in a CUDA graph).
- `rat_prefill_cache_triton(...)`: `reference.rat_prefill_cache_reference`, one kernel.
- `rat_prefill_triton(q, k, v, gate_logits, gate_bias, k_cache, v_cache, ...) -> y`: the
  forward and the cache fill in one pass (the chunk ends are written straight into the
  cache, where the attention then reads them); with `z`, the gated output instead.
- `rat_gated_triton(proj, gate_bias, heads, qk_groups, chunk_size, ...) -> o`: the rat
  block's mixing with its output gate, o = sigmoid(z) * y, from the whole in_proj output;
  the gate runs inside the attention kernel and its backward inside the delta pass, and the
  backward writes the projection's gradient in place (no concatenation of five gradients).

Ops live in the `archlab` namespace, with fake implementations (torch.compile) and FLOP
formulas (FlopCounterMode): 4 * D per scored (query, key) pair per head for the forward,
twice that for the backward; a token scores the ends of all earlier chunks plus its own key.
"""

# fmt: off
from __future__ import annotations

from typing import Optional

import torch
from torch.utils.flop_counter import register_flop_formula

from archlab.kernels.rat import triton_attention as _attn
from archlab.kernels.rat import triton_decode as _decode
from archlab.kernels.rat import triton_scan as _scan
from archlab.kernels.rat.shapes import scored_pairs

Tensor = torch.Tensor


def _check(q: Tensor, k: Tensor, v: Tensor, gate_logits: Tensor, gate_bias: Tensor) -> None:
    B, T, H, D = v.shape
    G = q.shape[2]
    if q.shape != (B, T, G, D) or k.shape != q.shape or gate_logits.shape != v.shape:
        raise ValueError(f"shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)} "
                         f"gate_logits{tuple(gate_logits.shape)} do not match")
    if gate_bias.numel() != H * D or H % G:
        raise ValueError("gate_bias must have H * D elements and G must divide H")
    if D < 16 or D & (D - 1):
        raise ValueError(f"head_dim must be a power of two >= 16, got {D}")


def _last_dim_contiguous(x: Tensor) -> Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


# --- training / prefill forward and backward ------------------------------------------------


@torch.library.custom_op("archlab::rat_core_fwd", mutates_args=())
def rat_core_fwd(
    q: Tensor, k: Tensor, v: Tensor, gate_logits: Tensor, gate_bias: Tensor,
    chunk_size: int, rope: bool, rope_theta: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> y [B,T,H,D], lse [B,H,T] f32 (base 2), q_rot [B,T,G,D], k_end, v_end [B,H,C,D],
    s_self [B,H,T] f32 (the own scores q_rot . k_rot, which the backward reuses)."""
    q, k, v, gate_logits = map(_last_dim_contiguous, (q, k, v, gate_logits))
    gate_bias = gate_bias.contiguous()
    q_rot, v_run, s_self, k_end, v_end = _scan.scan_forward(
        q, k, v, gate_logits, gate_bias, chunk_size, rope, rope_theta)
    y, lse = _attn.attention_forward(q_rot, k_end, v_end, v_run, s_self, chunk_size, v.dtype)
    return y, lse, q_rot, k_end.transpose(1, 2), v_end.transpose(1, 2), s_self


@rat_core_fwd.register_fake
def _(q, k, v, gate_logits, gate_bias, chunk_size, rope, rope_theta):
    B, T, H, D = v.shape
    C = max(T // chunk_size, 1)
    return (v.new_empty(B, T, H, D), v.new_empty(B, H, T, dtype=torch.float32),
            q.new_empty(q.shape), k.new_empty(B, H, C, D), v.new_empty(B, H, C, D),
            v.new_empty(B, H, T, dtype=torch.float32))


@torch.library.custom_op("archlab::rat_core_bwd", mutates_args=())
def rat_core_bwd(
    dy: Tensor, q: Tensor, k: Tensor, v: Tensor, gate_logits: Tensor, gate_bias: Tensor,
    y: Tensor, lse: Tensor, q_rot: Tensor, k_end: Tensor, v_end: Tensor, s_self: Tensor,
    chunk_size: int, rope: bool, rope_theta: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> dq, dk, dv, dgate_logits, dgate_bias. k_end/v_end as returned by rat_core_fwd."""
    q, k, v, gate_logits, dy = map(_last_dim_contiguous, (q, k, v, gate_logits, dy))
    gate_bias = gate_bias.contiguous()
    k_end, v_end = k_end.transpose(1, 2), v_end.transpose(1, 2)  # [B, C, H, D] views
    delta = _attn.attention_delta(y, dy)
    dke, dve, dqi = _attn.attention_backward(q_rot, k_end, v_end, dy, lse, delta, chunk_size)
    return _scan.scan_backward(q, k, v, gate_logits, gate_bias, s_self, dy, lse, delta, dke,
                               dve, dqi, chunk_size, rope, rope_theta)


@rat_core_bwd.register_fake
def _(dy, q, k, v, gate_logits, gate_bias, y, lse, q_rot, k_end, v_end, s_self, chunk_size,
      rope, rope_theta):
    return (q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape),
            gate_logits.new_empty(gate_logits.shape), gate_bias.new_empty(gate_bias.shape))


def _setup_context(ctx, inputs, output):
    q, k, v, gate_logits, gate_bias, chunk_size, rope, rope_theta = inputs
    y, lse, q_rot, k_end, v_end, s_self = output
    ctx.save_for_backward(q, k, v, gate_logits, gate_bias, y, lse, q_rot, k_end, v_end, s_self)
    ctx.args = (chunk_size, rope, rope_theta)
    ctx.mark_non_differentiable(lse, q_rot, k_end, v_end, s_self)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for those


def _backward(ctx, dy, *unused):
    grads = torch.ops.archlab.rat_core_bwd(dy, *ctx.saved_tensors, *ctx.args)
    return (*grads, None, None, None)


rat_core_fwd.register_autograd(_backward, setup_context=_setup_context)


@register_flop_formula(torch.ops.archlab.rat_core_fwd)
def _fwd_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    B, T, H, D = v_shape
    chunk_size = args[2] if len(args) > 2 else kwargs["chunk_size"]
    return 4 * D * H * B * scored_pairs(T, chunk_size)


@register_flop_formula(torch.ops.archlab.rat_core_bwd)
def _bwd_flops(dy_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    B, T, H, D = v_shape
    chunk_size = args[8] if len(args) > 8 else kwargs["chunk_size"]
    return 8 * D * H * B * scored_pairs(T, chunk_size)


def rat_core_triton(
    q: Tensor, k: Tensor, v: Tensor, gate_logits: Tensor, gate_bias: Tensor,
    chunk_size: int, rope: bool = True, rope_theta: float = 10000.0,
) -> Tensor:
    """RAT's mixing of one layer (see `reference.rat_core_reference` for the semantics).

    q, k: [B, T, G, D]; v, gate_logits: [B, T, H, D]; gate_bias: [H * D] -> y [B, T, H, D]
    in v's dtype. Inputs may be strided views (last-dim stride 1) of one projection output;
    they are read in place. Differentiable in q, k, v, gate_logits and gate_bias."""
    _check(q, k, v, gate_logits, gate_bias)
    return torch.ops.archlab.rat_core_fwd(q, k, v, gate_logits, gate_bias, int(chunk_size),
                                          bool(rope), float(rope_theta))[0]


# --- the layer's core with its output gate, on the whole projection ---------------------------


def _proj_views(proj: Tensor, heads: int, qk_groups: int) -> tuple[Tensor, ...]:
    """z [B,T,H*D], q, k [B,T,G,D], v, gate logits [B,T,H,D]: views of the rat block's
    in_proj output, whose columns are z, v, g, q, k."""
    H, G = heads, qk_groups
    D = proj.shape[-1] // (3 * H + 2 * G)
    z, v, gl, q, k = proj.split([H * D, H * D, H * D, G * D, G * D], dim=-1)
    return (z, q.unflatten(-1, (G, D)), k.unflatten(-1, (G, D)), v.unflatten(-1, (H, D)),
            gl.unflatten(-1, (H, D)))


@torch.library.custom_op("archlab::rat_gated_fwd", mutates_args=())
def rat_gated_fwd(
    proj: Tensor, gate_bias: Tensor, heads: int, qk_groups: int, chunk_size: int, rope: bool,
    rope_theta: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """-> o = sigmoid(z) * y [B,T,H*D], lse, q_rot, k_end, v_end, s_self (as rat_core_fwd; y
    itself is never stored: the backward needs o only)."""
    proj = _last_dim_contiguous(proj)
    z, q, k, v, gl = _proj_views(proj, heads, qk_groups)
    q_rot, v_run, s_self, k_end, v_end = _scan.scan_forward(
        q, k, v, gl, gate_bias.contiguous(), chunk_size, rope, rope_theta)
    _, lse, o = _attn.attention_forward(q_rot, k_end, v_end, v_run, s_self, chunk_size,
                                        proj.dtype, z=z, write_y=False)
    return o, lse, q_rot, k_end.transpose(1, 2), v_end.transpose(1, 2), s_self


@rat_gated_fwd.register_fake
def _(proj, gate_bias, heads, qk_groups, chunk_size, rope, rope_theta):
    _, q, _, v, _ = _proj_views(proj, heads, qk_groups)
    B, T, H, D = v.shape
    C = max(T // chunk_size, 1)
    return (proj.new_empty(B, T, H * D),
            proj.new_empty(B, H, T, dtype=torch.float32), proj.new_empty(q.shape),
            proj.new_empty(B, H, C, D), proj.new_empty(B, H, C, D),
            proj.new_empty(B, H, T, dtype=torch.float32))


@torch.library.custom_op("archlab::rat_gated_bwd", mutates_args=())
def rat_gated_bwd(
    do: Tensor, proj: Tensor, gate_bias: Tensor, o: Tensor, lse: Tensor, q_rot: Tensor,
    k_end: Tensor, v_end: Tensor, s_self: Tensor, heads: int, qk_groups: int, chunk_size: int,
    rope: bool, rope_theta: float,
) -> tuple[Tensor, Tensor]:
    """-> dproj (every column block written in place: no concatenation), dgate_bias."""
    proj = _last_dim_contiguous(proj)
    z, q, k, v, gl = _proj_views(proj, heads, qk_groups)
    dproj = torch.empty_like(proj)
    dz, *grads = _proj_views(dproj, heads, qk_groups)
    # dy lives in dv's columns until the scan's backward, the last to read it, overwrites it
    # with dv (each program reads its rows of dy before it writes them): 1 GB less at 262K
    dy = grads[2]
    delta = _attn.gate_backward(do.contiguous(), z, o, dz, dy, heads)
    k_end, v_end = k_end.transpose(1, 2), v_end.transpose(1, 2)  # [B, C, H, D] views
    dke, dve, dqi = _attn.attention_backward(q_rot, k_end, v_end, dy, lse, delta, chunk_size)
    *_, dbias = _scan.scan_backward(q, k, v, gl, gate_bias.contiguous(), s_self, dy, lse,
                                    delta, dke, dve, dqi, chunk_size, rope, rope_theta,
                                    out=grads)
    return dproj, dbias


@rat_gated_bwd.register_fake
def _(do, proj, gate_bias, o, lse, q_rot, k_end, v_end, s_self, heads, qk_groups, chunk_size,
      rope, rope_theta):
    return proj.new_empty(proj.shape), gate_bias.new_empty(gate_bias.shape)


def _gated_setup_context(ctx, inputs, output):
    proj, gate_bias, *args = inputs
    o, *saved = output
    ctx.save_for_backward(proj, gate_bias, o, *saved)
    ctx.args = args
    ctx.mark_non_differentiable(*saved)
    ctx.set_materialize_grads(False)  # no zero-filled gradients for those


def _gated_backward(ctx, do, *unused):
    dproj, dbias = torch.ops.archlab.rat_gated_bwd(do, *ctx.saved_tensors, *ctx.args)
    return dproj, dbias, None, None, None, None, None


rat_gated_fwd.register_autograd(_gated_backward, setup_context=_gated_setup_context)


def _gated_pairs(proj_shape, heads: int, qk_groups: int, chunk_size: int) -> tuple[int, int]:
    B, T, W = proj_shape
    return W // (3 * heads + 2 * qk_groups) * heads * B, scored_pairs(T, chunk_size)


@register_flop_formula(torch.ops.archlab.rat_gated_fwd)
def _gated_fwd_flops(proj_shape, bias_shape, heads, qk_groups, chunk_size, *args,
                     out_shape=None, **kwargs) -> int:
    dh, pairs = _gated_pairs(proj_shape, heads, qk_groups, chunk_size)
    return 4 * dh * pairs


@register_flop_formula(torch.ops.archlab.rat_gated_bwd)
def _gated_bwd_flops(do_shape, proj_shape, bias_shape, o_shape, lse_shape, q_shape, k_shape,
                     v_shape, ss_shape, heads, qk_groups, chunk_size, *args, out_shape=None,
                     **kwargs) -> int:
    dh, pairs = _gated_pairs(proj_shape, heads, qk_groups, chunk_size)
    return 8 * dh * pairs


def rat_gated_triton(
    proj: Tensor, gate_bias: Tensor, heads: int, qk_groups: int, chunk_size: int,
    rope: bool = True, rope_theta: float = 10000.0,
) -> Tensor:
    """The rat block's mixing with its output gate, from its in_proj output: o =
    sigmoid(z) * rat_core(q, k, v, g) [B, T, heads * head_dim], in proj's dtype.

    proj [B, T, (3 * heads + 2 * qk_groups) * head_dim] holds z, v, g (heads * head_dim
    each) and q, k (qk_groups * head_dim each), the block's split. The gate runs inside the
    attention's kernel and its backward inside the delta pass, and the backward writes the
    gradient of proj in place, one column block per input (no concatenation).
    Differentiable in proj and gate_bias."""
    H, G = int(heads), int(qk_groups)
    if proj.dim() != 3 or proj.shape[-1] % (3 * H + 2 * G):
        raise ValueError(f"proj {tuple(proj.shape)} is not [B, T, (3 * {H} + 2 * {G}) * D]")
    _, q, k, v, gl = _proj_views(proj, H, G)
    _check(q, k, v, gl, gate_bias)
    return torch.ops.archlab.rat_gated_fwd(proj, gate_bias, H, G, int(chunk_size), bool(rope),
                                           float(rope_theta))[0]


# --- prefill: cache fill alone, or fused with the forward -----------------------------------


@torch.library.custom_op("archlab::rat_prefill_cache", mutates_args=("k_cache", "v_cache"))
def rat_prefill_cache_op(
    k: Tensor, v: Tensor, gate_logits: Tensor, gate_bias: Tensor, k_cache: Tensor,
    v_cache: Tensor, chunk_size: int, rope: bool, rope_theta: float,
) -> None:
    k, v, gate_logits = map(_last_dim_contiguous, (k, v, gate_logits))
    _scan.scan_forward(None, k, v, gate_logits, gate_bias.contiguous(), chunk_size, rope,
                       rope_theta, k_end=k_cache, v_end=v_cache, core=False, partial=True)


@rat_prefill_cache_op.register_fake
def _(k, v, gate_logits, gate_bias, k_cache, v_cache, chunk_size, rope, rope_theta):
    return None


def rat_prefill_cache_triton(
    k: Tensor, v: Tensor, gate_logits: Tensor, gate_bias: Tensor, k_cache: Tensor,
    v_cache: Tensor, chunk_size: int, rope: bool = True, rope_theta: float = 10000.0,
) -> None:
    """Fill cache slots 0..ceil(T/L)-1 of k_cache, v_cache [B, C_max, H, D] from a prompt
    (the layout of `reference.rat_prefill_cache_reference`)."""
    _check(k, k, v, gate_logits, gate_bias)
    _check_cache(v, k_cache, v_cache, -(-v.shape[1] // chunk_size))
    torch.ops.archlab.rat_prefill_cache(k, v, gate_logits, gate_bias, k_cache, v_cache,
                                        int(chunk_size), bool(rope), float(rope_theta))


@torch.library.custom_op("archlab::rat_prefill", mutates_args=("k_cache", "v_cache"))
def rat_prefill_op(
    q: Tensor, k: Tensor, v: Tensor, gate_logits: Tensor, gate_bias: Tensor, k_cache: Tensor,
    v_cache: Tensor, chunk_size: int, rope: bool, rope_theta: float,
    z: Optional[Tensor],  # noqa: UP045
) -> Tensor:
    q, k, v, gate_logits = map(_last_dim_contiguous, (q, k, v, gate_logits))
    q_rot, v_run, s_self, k_end, v_end = _scan.scan_forward(
        q, k, v, gate_logits, gate_bias.contiguous(), chunk_size, rope, rope_theta,
        k_end=k_cache, v_end=v_cache, core=True, partial=True)
    if z is None:
        return _attn.attention_forward(q_rot, k_end, v_end, v_run, s_self, chunk_size,
                                       v.dtype)[0]
    return _attn.attention_forward(q_rot, k_end, v_end, v_run, s_self, chunk_size, v.dtype,
                                   z=_last_dim_contiguous(z), write_y=False)[2]


@rat_prefill_op.register_fake
def _(q, k, v, gate_logits, gate_bias, k_cache, v_cache, chunk_size, rope, rope_theta, z):
    return v.new_empty(v.shape) if z is None else v.new_empty(*v.shape[:2], z.shape[-1])


@register_flop_formula(torch.ops.archlab.rat_prefill)
def _prefill_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    B, T, H, D = v_shape
    chunk_size = args[4] if len(args) > 4 else kwargs["chunk_size"]
    return 4 * D * H * B * scored_pairs(T, chunk_size)


def rat_prefill_triton(
    q: Tensor, k: Tensor, v: Tensor, gate_logits: Tensor, gate_bias: Tensor, k_cache: Tensor,
    v_cache: Tensor, chunk_size: int, rope: bool = True, rope_theta: float = 10000.0,
    z: Tensor | None = None,
) -> Tensor:
    """`rat_core_triton`'s forward (no autograd) that also fills the decode cache, in the
    same passes: returns y [B, T, H, D]; given the output gate's logits z [B, T, H*D],
    sigmoid(z) * y [B, T, H*D] instead (y itself is never written)."""
    _check(q, k, v, gate_logits, gate_bias)
    _check_cache(v, k_cache, v_cache, -(-v.shape[1] // chunk_size))
    B, T, H, D = v.shape
    if z is not None and tuple(z.shape) != (B, T, H * D):
        raise ValueError(f"z {tuple(z.shape)} is not [{B}, {T}, {H * D}]")
    return torch.ops.archlab.rat_prefill(q, k, v, gate_logits, gate_bias, k_cache, v_cache,
                                         int(chunk_size), bool(rope), float(rope_theta), z)


# --- decode ---------------------------------------------------------------------------------


def _check_cache(v: Tensor, k_cache: Tensor, v_cache: Tensor, slots: int) -> None:
    B, H, D = v.shape[0], v.shape[-2], v.shape[-1]
    for c in (k_cache, v_cache):
        if c.dim() != 4 or c.shape[0] != B or c.shape[2:] != (H, D) or c.shape[1] < slots:
            raise ValueError(f"cache {tuple(c.shape)} does not hold [{B}, >={slots}, {H}, {D}]")
        if c.stride(-1) != 1:
            raise ValueError("cache must have last-dim stride 1")


@torch.library.custom_op("archlab::rat_decode", mutates_args=("k_cache", "v_cache"))
def rat_decode_op(
    q: Tensor, k: Tensor, v: Tensor, gate_logits: Tensor, gate_bias: Tensor, k_cache: Tensor,
    v_cache: Tensor, pos_tensor: Optional[Tensor], pos_int: int, chunk_size: int, rope: bool,  # noqa: UP045
    rope_theta: float,
) -> Tensor:
    q, k, v, gate_logits = map(_last_dim_contiguous, (q, k, v, gate_logits))
    return _decode.decode_step(q, k, v, gate_logits, gate_bias.contiguous(), k_cache, v_cache,
                               pos_tensor, pos_int, chunk_size, rope, rope_theta)


@rat_decode_op.register_fake
def _(q, k, v, gate_logits, gate_bias, k_cache, v_cache, pos_tensor, pos_int, chunk_size, rope,
      rope_theta):
    return v.new_empty(v.shape)


@register_flop_formula(torch.ops.archlab.rat_decode)
def _decode_flops(q_shape, k_shape, v_shape, gl_shape, bias_shape, kc_shape, *args,
                  out_shape=None, **kwargs) -> int:
    # pos_int < 0: the position lives on the device; count the cache capacity (upper bound)
    B, H, D = v_shape
    pos_int, chunk_size = args[2], args[3]
    pairs = pos_int // chunk_size + 1 if pos_int >= 0 else kc_shape[1]
    return 4 * D * H * B * pairs


def rat_decode_triton(
    q: Tensor, k: Tensor, v: Tensor, gate_logits: Tensor, gate_bias: Tensor,
    k_cache: Tensor, v_cache: Tensor, pos: int | Tensor, chunk_size: int,
    rope: bool = True, rope_theta: float = 10000.0,
) -> Tensor:
    """One decode step at position `pos` (pos tokens already cached).

    q, k: [B, G, D]; v, gate_logits: [B, H, D]; k_cache, v_cache [B, C_max, H, D] (the
    layout of `reference.rat_decode_reference`, updated in place at slot pos // L).
    `pos`: int, or a 0-d integer tensor on the device (read there: capturable in a CUDA
    graph). Returns y [B, H, D] in v's dtype. Split-K over the cache (flash-decoding)."""
    B, H, D = v.shape
    if q.shape[0] != B or q.shape != k.shape or gate_logits.shape != v.shape:
        raise ValueError("decode shapes do not match")
    _check_cache(v, k_cache, v_cache, 1)
    if isinstance(pos, Tensor):
        return torch.ops.archlab.rat_decode(q, k, v, gate_logits, gate_bias, k_cache, v_cache,
                                            pos, -1, int(chunk_size), bool(rope),
                                            float(rope_theta))
    return torch.ops.archlab.rat_decode(q, k, v, gate_logits, gate_bias, k_cache, v_cache,
                                        None, int(pos), int(chunk_size), bool(rope),
                                        float(rope_theta))
