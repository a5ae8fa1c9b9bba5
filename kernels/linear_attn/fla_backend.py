"""The gated delta rule and gated linear attention through flash-linear-attention (package
`fla-core`, the `ssm` extra; CUDA, or Triton's interpreter in the tests).

The same ops as `reference.py`, in the same shapes and state layout ([B, HV, K, V] float32,
fla's default): fla's chunked kernels for training and prefill (`chunk_gated_delta_rule`,
`chunk_gla`: chunks of 64 tokens, parallel over chunks) and its fused recurrent kernels for
decode (`fused_recurrent_gated_delta_rule`, `fused_recurrent_gla`: one token per step;
fla has no backward for the former). `fla` is imported on first use (`fla_module`), so
that importing this module never needs the package; after that the lookups trace.

What is passed, as fla's own tests and layers do: q, k, v in the compute dtype (v's),
the log decays and beta in float32, the states in float32. The L2 norm of q and k runs
inside fla's kernel (`use_qk_l2norm_in_kernel=True`); the gate activations (sigmoid of
beta, the decay -exp(A_log) softplus(a + dt_bias), GLA's logsigmoid) are computed by the
block in PyTorch, so that only the long-standing arguments of fla's API are used (fla >=
0.3). Grouped value heads (HV > H) are passed with q and k repeated to HV heads (fla
before 0.5 has no native GVA); the gradient flows back through the repeat.

fla refuses the backward of `chunk_gated_delta_rule` on Hopper GPUs (H100, H200) with
Triton >= 3.4.0 and < 3.7.1 (a Triton miscompile of its gated `chunk_bwd_dqkwg`; torch 2.11
ships Triton 3.6). There a forward that needs gradients runs fla's Kimi Delta Attention
kernel, `chunk_kda`, instead: the delta rule with a decay per key channel, given the head's
one decay in every channel, is the same recurrence (a scalar decay commutes with the
delta-rule update), and its backward has its own kernels, which fla does not refuse.
`gated_delta_backward_refused` says when.
"""

from __future__ import annotations

from types import ModuleType

import torch

from archlab.kernels.linear_attn.reference import expand_heads
from archlab.kernels.ssd.fla_backend import INSTALL_HINT, fla_module, gated_backward_refused_here

__all__ = [
    "INSTALL_HINT",
    "KERNELS",
    "fla_importable",
    "gated_delta_backward_refused",
    "gated_delta_rule_fla",
    "gla_fla",
]

KERNELS = ("chunk", "recurrent", "kda")
OPS = {"gated_delta_rule": "fla.ops.gated_delta_rule", "gla": "fla.ops.gla", "kda": "fla.ops.kda"}
# what else each op's wrapper may read: kda's kernel and fla's backward guard flags
ALSO = {"gated_delta_rule": ("fla.ops.kda", "fla.ops.common.chunk_o"), "gla": ()}


def _module(op: str) -> ModuleType | None:
    return fla_module(OPS[op])


def fla_importable(op: str) -> bool:
    """True if fla's kernels of `op` ("gated_delta_rule" or "gla") can be imported here.
    Imports every fla module the op's wrapper may use, so that the backend check that asks
    this leaves none to import inside a traced call."""
    for name in ALSO.get(op, ()):
        fla_module(name)
    return _module(op) is not None


def _ops(op: str) -> ModuleType:
    module = _module(op)
    if module is None:
        raise ImportError(f"the {op} triton backend needs flash-linear-attention: {INSTALL_HINT}")
    return module


def _kernel(kernel: str) -> str:
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    return kernel


def gated_delta_backward_refused() -> str | None:
    """Why fla would refuse `chunk_gated_delta_rule`'s backward on this machine (its own
    guard, read from its flags), or None when it can run. Where it is refused, a forward
    that needs gradients runs `chunk_kda` (see the module docstring). No cache: a few
    dict and attribute reads, traceable (the wrapper asks on every forward)."""
    if _module("gated_delta_rule") is None or not gated_backward_refused_here():
        return None
    return (
        "fla refuses chunk_gated_delta_rule's backward on Hopper GPUs with Triton >= 3.4.0 "
        "and < 3.7.1 (a Triton miscompile, fla issue #640), so training runs fla's chunk_kda "
        "(the same recurrence, the decay given per key channel); Triton >= 3.7.1 trains "
        "through chunk_gated_delta_rule"
    )


def _state(initial_state_BHKV: torch.Tensor | None) -> torch.Tensor | None:
    return None if initial_state_BHKV is None else initial_state_BHKV.float().contiguous()


def gated_delta_rule_fla(
    q_BTHK: torch.Tensor,
    k_BTHK: torch.Tensor,
    v_BTHV: torch.Tensor,
    g_BTH: torch.Tensor,
    beta_BTH: torch.Tensor,
    scale: float,
    initial_state_BHKV: torch.Tensor | None = None,
    output_final_state: bool = False,
    kernel: str = "chunk",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`reference.gated_delta_rule` by fla: "chunk" (`chunk_gated_delta_rule`,
    differentiable in every input; where fla refuses its backward and gradients are
    needed, `chunk_kda`), "kda" (`chunk_kda` always) or "recurrent"
    (`fused_recurrent_gated_delta_rule`, for decode: no backward). Returns o [B, T, HV, V]
    in v's dtype and, if `output_final_state`, the final state [B, HV, K, V] in float32
    (else None)."""
    _kernel(kernel)
    inputs = (q_BTHK, k_BTHK, v_BTHV, g_BTH, beta_BTH, initial_state_BHKV)
    if kernel == "chunk" and torch.is_grad_enabled() and gated_delta_backward_refused():
        if any(t is not None and t.requires_grad for t in inputs):
            kernel = "kda"
    ops, dtype, HV = _ops("gated_delta_rule"), v_BTHV.dtype, v_BTHV.shape[-2]
    q, k = (expand_heads(t, HV).to(dtype).contiguous() for t in (q_BTHK, k_BTHK))
    g = g_BTH.float()
    if kernel == "kda":  # the head's decay in every key channel: [B, T, HV, K]
        fn, g = _ops("kda").chunk_kda, g[..., None].expand(*g.shape, q.shape[-1])
    else:
        fn = {
            "chunk": ops.chunk_gated_delta_rule,
            "recurrent": ops.fused_recurrent_gated_delta_rule,
        }[kernel]
    o, final = fn(
        q,
        k,
        v_BTHV.contiguous(),
        g=g.contiguous(),
        beta=beta_BTH.float().contiguous(),
        scale=scale,
        initial_state=_state(initial_state_BHKV),
        output_final_state=output_final_state,
        use_qk_l2norm_in_kernel=True,
    )
    return o, (final.float() if output_final_state else None)


def gla_fla(
    q_BTHK: torch.Tensor,
    k_BTHK: torch.Tensor,
    v_BTHV: torch.Tensor,
    gk_BTHK: torch.Tensor,
    scale: float,
    initial_state_BHKV: torch.Tensor | None = None,
    output_final_state: bool = False,
    kernel: str = "chunk",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`reference.gla` by fla: "chunk" (`chunk_gla`) or "recurrent"
    (`fused_recurrent_gla`), both differentiable. Returns o [B, T, H, V] in v's dtype and,
    if `output_final_state`, the final state [B, H, K, V] in float32 (else None)."""
    ops, dtype = _ops("gla"), v_BTHV.dtype
    q, k = (t.to(dtype).contiguous() for t in (q_BTHK, k_BTHK))
    v, gk, h0 = v_BTHV.contiguous(), gk_BTHK.float().contiguous(), _state(initial_state_BHKV)
    if _kernel(kernel) == "chunk":
        o, final = ops.chunk_gla(
            q, k, v, g=gk, scale=scale, initial_state=h0, output_final_state=output_final_state
        )
    else:
        o, final = ops.fused_recurrent_gla(
            q, k, v, gk=gk, scale=scale, initial_state=h0, output_final_state=output_final_state
        )
    return o, (final.float() if output_final_state else None)
