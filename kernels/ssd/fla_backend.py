"""SSD through flash-linear-attention's chunked kernels (package `fla-core`, CUDA).

simple GLA is the recurrence S_t = exp(g_t) S_{t-1} + k_t v_t^T, o_t = scale * S_t^T q_t
with a scalar log decay g per head and step, state S [K, V] per head, inputs in the
[B, T, H, dim] layout. SSD is that recurrence with

    q = C (expanded to heads), k = B (expanded to heads), v = dt * x, g = dt * A, scale = 1,

and state S = h^T (fla keeps [N, P] per head where mamba and archlab keep [P, N]).
fla picks its own chunk length (64): the result does not depend on it. `fla` is imported
on first use (`fla_module`, shared by the other fla wrappers), so that importing this
module never needs the package; after that the lookups trace under torch.compile.

Two fla kernels compute it:
- `chunk_simple_gla` (scalar decay per head): the default.
- `chunk_gla` (a decay per key channel), given the same decay in every one of the N
  channels. fla (>= 0.5) refuses the backward of `chunk_simple_gla` on Hopper GPUs (H100,
  H200) with Triton >= 3.4.0 and < 3.7.1, which miscompiles its `chunk_bwd_dqkwg` (fla
  issue #640), and torch <= 2.12.0 pins such a Triton. `chunk_gla`'s backward uses other
  kernels, which fla does not refuse, so there a forward that needs gradients runs
  `chunk_gla` (`simple_gla_backward_refused` says when). It costs an [B, T, H, N] float32
  decay tensor and the vector-gate kernels' extra work.

The glue around the scan has fla kernels too, which the `ssm` block's triton backend uses
when this fla has them (`fla_glue_importable`): `conv_silu_fla` (fla's `causal_conv1d`:
the depthwise causal conv, bias and SiLU in one pass over the [B, T, C] layout, float32
inside) and `gated_rmsnorm_fla` (fla's gated `rmsnorm_fn`: rmsnorm(y * silu(z)) * weight
per group in one pass, float32 inside). Both run outside torch.compile's graphs (as fla's
chunk ops do).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import torch
import torch.nn.functional as F

from archlab.kernels.ssd.reference import heads_from_groups

INSTALL_HINT = 'pip install "archlab[ssm]"'

# fla's modules by name, once imported (None: it cannot be). A plain dict, not a
# functools.cache and no importlib in the traced path: once a module is here (any backend
# check puts it here), the wrappers' lookups are dict reads that Dynamo traces.
_MODULES: dict[str, ModuleType | None] = {}


@torch.compiler.disable  # importlib is not traceable; called once per module name
def _import(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except Exception:  # ImportError, or a broken install failing at import time
        return None


def fla_module(name: str) -> ModuleType | None:
    """fla's module `name` (e.g. "fla.ops.hgrn"), imported on first use; None where it
    cannot be imported. After the first call a dict lookup (traceable by Dynamo: the
    fla wrappers of archlab.kernels call fla without a graph break of their own)."""
    if name not in _MODULES:
        _MODULES[name] = _import(name)
    return _MODULES[name]


def _chunk_simple_gla() -> Callable | None:
    return getattr(fla_module("fla.ops.simple_gla"), "chunk_simple_gla", None)


def _chunk_gla() -> Callable:
    return fla_module("fla.ops.gla").chunk_gla


# where fla keeps its causal conv and gated RMSNorm: recent fla-core (0.6.0), then older
CONV_MODULES = ("fla.modules.causal_conv1d", "fla.modules.convolution")
NORM_MODULES = ("fla.modules.norm.layernorm_gated", "fla.modules.layernorm_gated")


def _first(names: tuple[str, ...], attr: str) -> Callable | None:
    for name in names:
        fn = getattr(fla_module(name), attr, None)
        if fn is not None:
            return fn
    return None


def _causal_conv1d() -> Callable | None:
    return _first(CONV_MODULES, "causal_conv1d")


def _rmsnorm_fn() -> Callable | None:
    return _first(NORM_MODULES, "rmsnorm_fn")


def fla_importable() -> bool:
    """True if `fla.ops.simple_gla.chunk_simple_gla` can be imported here. Imports every
    fla module `ssd_fla` and the glue kernels may use, so that the backend check that asks
    this leaves none to import inside a traced call."""
    for name in ("fla.ops.gla", "fla.ops.common.chunk_o", *CONV_MODULES, *NORM_MODULES):
        fla_module(name)
    return _chunk_simple_gla() is not None


def fla_glue_importable() -> bool:
    """True if fla's `causal_conv1d` and gated `rmsnorm_fn` are there (after
    `fla_importable`, a few dict reads): the `ssm` block's triton backend then runs its
    conv and norm through them, else through its PyTorch glue."""
    return _causal_conv1d() is not None and _rmsnorm_fn() is not None


@torch.compiler.disable  # fla's kernels run eagerly, as its chunk ops do under compile
def conv_silu_fla(
    x_BTC: torch.Tensor,
    weight_CK: torch.Tensor,
    bias_C: torch.Tensor | None,
    state_BCK: torch.Tensor | None = None,
    output_final_state: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """silu(causal depthwise conv(x) + bias) by fla's `causal_conv1d`, on x [B, T, C] as it
    is (a strided slice is read in place). `state_BCK`: the last K - 1 inputs before x,
    oldest first (archlab's conv cache; None: zeros). Returns y [B, T, C] (contiguous, x's
    dtype) and, if `output_final_state`, the last K - 1 inputs [B, C, K - 1] in x's dtype
    (reaching into the state when T < K - 1), else None. fla's conv state holds the last K
    inputs, of which the oldest is never read: archlab's state is its last K - 1."""
    h0_BCK = None
    if state_BCK is not None:
        h0_BCK = F.pad(state_BCK.to(x_BTC.dtype), (1, 0))
    y_BTC, hT_BCK = _causal_conv1d()(
        x=x_BTC,
        weight=weight_CK,
        bias=bias_C,
        initial_state=h0_BCK,
        output_final_state=output_final_state,
        activation="silu",
    )
    final = hT_BCK[..., 1:] if output_final_state else None
    return y_BTC, final


@torch.compiler.disable  # fla's kernels run eagerly, as its chunk ops do under compile
def gated_rmsnorm_fla(
    y_BTE: torch.Tensor, z_BTE: torch.Tensor, weight_E: torch.Tensor, groups: int, eps: float
) -> torch.Tensor:
    """rmsnorm(y * silu(z)) * weight over each of `groups` groups of channels, by fla's
    gated `rmsnorm_fn` (one pass, float32 inside; its backward one more). y, z [..., E];
    returns [..., E] in y's dtype."""
    return _rmsnorm_fn()(
        y_BTE,
        weight_E,
        None,
        z=z_BTE,
        eps=eps,
        group_size=y_BTE.shape[-1] // groups,
        norm_before_gate=False,
    )


def simple_gla_backward_refused() -> str | None:
    """Why fla would refuse `chunk_simple_gla`'s backward on this machine (mirroring fla's
    own guard, read from fla's flags), or None when it can run. Where it is refused,
    `ssd_fla` trains through `chunk_gla` instead. (No cache: a few dict and attribute
    reads per forward, traceable.)"""
    if fla_importable() and gated_backward_refused_here():
        return (
            "fla refuses chunk_simple_gla's backward on Hopper GPUs with Triton >= 3.4.0 "
            "and < 3.7.1 (a Triton miscompile, fla issue #640), so training runs fla's "
            "chunk_gla (the same decay in every state channel); Triton >= 3.7.1 "
            "(torch >= 2.12.1) trains through chunk_simple_gla"
        )
    return None


def gated_backward_refused_here() -> bool:
    """True where fla's guard refuses the backward of its gated `chunk_bwd_dqkwg` (used by
    `chunk_simple_gla` and `chunk_gated_delta_rule`): a Hopper GPU with Triton >= 3.4.0
    and < 3.7.1 (read from fla's own flags; False without fla)."""
    chunk_o = fla_module("fla.ops.common.chunk_o")
    if chunk_o is None:  # no fla, or a broken install
        return False
    hopper = getattr(chunk_o, "IS_NVIDIA_HOPPER", False)
    return bool(
        hopper
        and getattr(chunk_o, "TRITON_ABOVE_3_4_0", False)
        and not getattr(chunk_o, "TRITON_ABOVE_3_7_1", True)
    )


KERNELS = ("simple_gla", "gla")


def ssd_fla(
    x_BTHP: torch.Tensor,
    dt_BTH: torch.Tensor,
    A_H: torch.Tensor,
    B_BTGN: torch.Tensor,
    C_BTGN: torch.Tensor,
    initial_state_BHPN: torch.Tensor | None = None,
    output_final_state: bool = False,
    kernel: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SSD (see `reference.ssd_chunked`) by fla's chunked kernels.

    x [B, T, H, P] sets the compute dtype: q, k and v are cast to it, the log decay g stays
    float32. Returns y [B, T, H, P] in x's dtype and, if `output_final_state`, the final
    state [B, H, P, N] in float32 (else None). Differentiable in every input. `kernel`:
    "simple_gla", "gla", or None for simple_gla unless gradients are needed where fla
    refuses its backward (then gla; see the module docstring).
    """
    if kernel is not None and kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS} or None, got {kernel!r}")
    if _chunk_simple_gla() is None:
        raise ImportError(f"the SSD triton backend needs flash-linear-attention: {INSTALL_HINT}")
    if kernel is None:
        inputs = (x_BTHP, dt_BTH, A_H, B_BTGN, C_BTGN, initial_state_BHPN)
        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in inputs
        )
        kernel = "gla" if needs_grad and simple_gla_backward_refused() else "simple_gla"
    H, dtype = x_BTHP.shape[2], x_BTHP.dtype
    q_BTHN = heads_from_groups(C_BTGN, H).to(dtype)
    k_BTHN = heads_from_groups(B_BTGN, H).to(dtype)
    v_BTHP = (x_BTHP * dt_BTH.float()[..., None]).to(dtype)  # float32 product, one pass
    g_BTH = dt_BTH.float() * A_H.float()
    h0_BHNP = None
    if initial_state_BHPN is not None:
        h0_BHNP = initial_state_BHPN.float().transpose(-1, -2).contiguous()
    if kernel == "simple_gla":
        y_BTHP, hT_BHNP = _chunk_simple_gla()(
            q_BTHN,
            k_BTHN,
            v_BTHP,
            g=g_BTH,
            scale=1.0,
            initial_state=h0_BHNP,
            output_final_state=output_final_state,
        )
    else:
        y_BTHP, hT_BHNP = _chunk_gla()(
            q_BTHN,
            k_BTHN,
            v_BTHP,
            g=g_BTH[..., None].expand(q_BTHN.shape).contiguous(),
            scale=1.0,
            initial_state=h0_BHNP,
            output_final_state=output_final_state,
        )
    final = hT_BHNP.transpose(-1, -2).float() if hT_BHNP is not None else None
    return y_BTHP, final
