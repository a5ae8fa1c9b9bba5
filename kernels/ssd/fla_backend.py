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
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from types import ModuleType

import torch

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


def fla_importable() -> bool:
    """True if `fla.ops.simple_gla.chunk_simple_gla` can be imported here. Imports every
    fla module `ssd_fla` may use, so that the backend check that asks this leaves none to
    import inside a traced call."""
    for name in ("fla.ops.gla", "fla.ops.common.chunk_o"):
        fla_module(name)
    return _chunk_simple_gla() is not None


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
    v_BTHP = (x_BTHP.float() * dt_BTH.float()[..., None]).to(dtype)
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
