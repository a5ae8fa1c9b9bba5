"""Float32 references of the gated delta rule and of gated linear attention, written for
clarity: one token at a time, in fla's conventions (fla-org/flash-linear-attention).

Shapes: B batch, T tokens, H query/key heads of K channels, HV value heads of V channels
(HV a multiple of H: value head j reads query/key head j // (HV / H), "grouped value
attention"; HV = H for GLA). The state of a head is S [K, V] (fla's layout), float32.

Gated delta rule (`gated_delta_rule`, Yang, Kautz & Hatamizadeh 2024), with q and k
L2-normalised per head (x / sqrt(sum x^2 + 1e-6), fla's `use_qk_l2norm_in_kernel`), a log
decay g <= 0 and a step size beta per value head and token:

    S_t = exp(g_t) S_{t-1};   S_t += k_t (beta_t (v_t - S_t^T k_t))^T;   o_t = scale S_t^T q_t

which in the paper's [V, K] layout (S' = S^T) is
S'_t = a_t S'_{t-1} (I - beta_t k_t k_t^T) + beta_t v_t k_t^T with a_t = exp(g_t).

Gated linear attention (`gla`, Yang et al. 2023), a log decay gk <= 0 per key channel:

    S_t = diag(exp(gk_t)) S_{t-1} + k_t v_t^T;   o_t = scale S_t^T q_t

Cost: T sequential steps of O(B HV K V) work each (a Python loop), and under autograd every
step's state is kept: O(T B HV K V) memory. Fine for tests and small models; the fast path
is fla's chunked kernels. Every function upcasts to float32 and returns float32; none
modifies its inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

L2_EPS = 1e-6  # fla's l2norm epsilon


def l2_normalize(x: torch.Tensor, eps: float = L2_EPS) -> torch.Tensor:
    """x / sqrt(sum(x^2) + eps) over the last dim, in float32 (fla's l2norm)."""
    x = x.float()
    return x * torch.rsqrt(x.square().sum(dim=-1, keepdim=True) + eps)


def expand_heads(x_BTHK: torch.Tensor, heads: int) -> torch.Tensor:
    """[..., H, K] -> [..., heads, K]: head j reads head j // (heads / H)."""
    return x_BTHK.repeat_interleave(heads // x_BTHK.shape[-2], dim=-2)


def _zero_state(q, v, heads: int) -> torch.Tensor:
    B, K, V = q.shape[0], q.shape[-1], v.shape[-1]
    return torch.zeros(B, heads, K, V, device=q.device, dtype=torch.float32)


def _delta_step(q, k, v, g, beta, scale: float, S):
    """One step on prepared float32 inputs (q, k [B, HV, K] normalised; v [B, HV, V];
    g, beta [B, HV]); returns (o [B, HV, V], new S)."""
    S = S * torch.exp(g)[..., None, None]
    u = torch.einsum("bhk,bhkv->bhv", k, S)
    S = S + k[..., :, None] * (beta[..., None] * (v - u))[..., None, :]
    return scale * torch.einsum("bhk,bhkv->bhv", q, S), S


def _prepare_delta(q, k, v, g, beta):
    HV = v.shape[-2]
    q, k = expand_heads(l2_normalize(q), HV), expand_heads(l2_normalize(k), HV)
    return q, k, v.float(), g.float(), beta.float()


def gated_delta_rule(
    q_BTHK: torch.Tensor,
    k_BTHK: torch.Tensor,
    v_BTHV: torch.Tensor,
    g_BTH: torch.Tensor,
    beta_BTH: torch.Tensor,
    scale: float,
    initial_state_BHKV: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The gated delta rule over T tokens (q, k un-normalised [B, T, H, K]; v [B, T, HV, V];
    g, beta [B, T, HV]) -> (o [B, T, HV, V], final state [B, HV, K, V])."""
    q, k, v, g, beta = _prepare_delta(q_BTHK, k_BTHK, v_BTHV, g_BTH, beta_BTH)
    S = initial_state_BHKV
    S = _zero_state(q, v, v.shape[-2]) if S is None else S.float()
    outs = []
    for t in range(q.shape[1]):
        o, S = _delta_step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], scale, S)
        outs.append(o)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(v.shape)
    return o, S


def gated_delta_rule_step(q_BHK, k_BHK, v_BHV, g_BH, beta_BH, scale: float, state_BHKV):
    """One decode step (the shapes of `gated_delta_rule` without T) -> (o [B, HV, V], new
    state [B, HV, K, V])."""
    q, k, v, g, beta = _prepare_delta(q_BHK, k_BHK, v_BHV, g_BH, beta_BH)
    return _delta_step(q, k, v, g, beta, scale, state_BHKV.float())


def _gla_step(q, k, v, gk, scale: float, S):
    S = S * torch.exp(gk)[..., None] + k[..., :, None] * v[..., None, :]
    return scale * torch.einsum("bhk,bhkv->bhv", q, S), S


def gla(
    q_BTHK: torch.Tensor,
    k_BTHK: torch.Tensor,
    v_BTHV: torch.Tensor,
    gk_BTHK: torch.Tensor,
    scale: float,
    initial_state_BHKV: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gated linear attention over T tokens (q, k, gk [B, T, H, K]; v [B, T, H, V]) ->
    (o [B, T, H, V], final state [B, H, K, V])."""
    q, k, v, gk = (t.float() for t in (q_BTHK, k_BTHK, v_BTHV, gk_BTHK))
    S = initial_state_BHKV
    S = _zero_state(q, v, v.shape[-2]) if S is None else S.float()
    outs = []
    for t in range(q.shape[1]):
        o, S = _gla_step(q[:, t], k[:, t], v[:, t], gk[:, t], scale, S)
        outs.append(o)
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(v.shape)
    return o, S


def gla_step(q_BHK, k_BHK, v_BHV, gk_BHK, scale: float, state_BHKV):
    """One decode step -> (o [B, H, V], new state [B, H, K, V])."""
    q, k, v, gk = (t.float() for t in (q_BHK, k_BHK, v_BHV, gk_BHK))
    return _gla_step(q, k, v, gk, scale, state_BHKV.float())


def rms_norm_gated(
    o: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor, eps: float
) -> torch.Tensor:
    """rmsnorm(o) * weight * silu(gate) over the last dim (one head), in float32: fla's
    FusedRMSNormGated (norm first, then the gate); without a gate, fla's RMSNorm."""
    o = o.float()
    out = o * torch.rsqrt(o.square().mean(dim=-1, keepdim=True) + eps) * weight.float()
    return out if gate is None else out * F.silu(gate.float())
