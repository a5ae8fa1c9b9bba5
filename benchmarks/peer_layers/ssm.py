"""The ssm peer: a Mamba-2 layer in mamba's parameter layout on fla-core's kernels
(`fla_ops`: causal_conv1d, chunk_simple_gla or chunk_gla, the gated RMSNorm, and the
recurrent kernels for decode), with eager PyTorch glue; `fla_version` names the install."""

from __future__ import annotations

import functools
import importlib
import importlib.metadata

import torch
import torch.nn.functional as F
from torch import nn

from .common import PeerUnavailable, VariantPeer, _copy_named, _wrap
from .run_setup import Setup


@functools.cache
def fla_ops() -> dict:
    """fla-core's kernels that the SSM peer uses (PeerUnavailable when fla is missing)."""
    try:
        from fla.ops.gla import chunk_gla
        from fla.ops.simple_gla import chunk_simple_gla, fused_recurrent_simple_gla

        try:
            from fla.modules.causal_conv1d import causal_conv1d, causal_conv1d_update
        except ImportError:
            from fla.modules.convolution import causal_conv1d, causal_conv1d_update
        try:
            from fla.modules.norm.layernorm_gated import rmsnorm_fn
        except ImportError:
            from fla.modules.layernorm_gated import rmsnorm_fn
    except Exception as e:  # noqa: BLE001 - ImportError, or a broken install
        raise PeerUnavailable(f"fla-core is not importable ({type(e).__name__}: {e})") from e
    chunk_o = importlib.import_module("fla.ops.common.chunk_o")
    refused = (
        getattr(chunk_o, "IS_NVIDIA_HOPPER", False)
        and getattr(chunk_o, "TRITON_ABOVE_3_4_0", False)
        and not getattr(chunk_o, "TRITON_ABOVE_3_7_1", True)
    )
    return {
        "chunk_simple_gla": chunk_simple_gla,
        "chunk_gla": chunk_gla,
        "fused_recurrent_simple_gla": fused_recurrent_simple_gla,
        "causal_conv1d": causal_conv1d,
        "causal_conv1d_update": causal_conv1d_update,
        "rmsnorm_fn": rmsnorm_fn,
        "simple_gla_bwd_refused": bool(refused),
    }


def fla_version() -> str | None:
    for name in ("fla-core", "flash-linear-attention"):
        try:
            return f"{name} {importlib.metadata.version(name)}"
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


class _NormWeight(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class FlaMamba2Peer(VariantPeer):
    """Mamba-2 (mamba_ssm's `Mamba2` layout: in_proj -> z | xBC | dt, depthwise causal conv +
    SiLU, dt = softplus(dt + dt_bias), A = -exp(A_log), SSD with a D skip, gated RMSNorm
    per group, out_proj) on fla-core's kernels. The SSD is fla's chunk_simple_gla with
    q = C, k = B, v = dt x, g = dt A, scale 1; where fla refuses chunk_simple_gla's backward
    (Hopper with Triton < 3.7.1) training runs chunk_gla with the decay in every key channel,
    as archlab does. The glue around the kernels is eager PyTorch."""

    def __init__(self, setup: Setup) -> None:
        super().__init__()
        self.ops = fla_ops()
        p, d = setup.ssm, setup.d_model
        self.inner = p["expand"] * d
        self.head_dim, self.d_state, self.groups = p["head_dim"], p["d_state"], p["n_groups"]
        self.heads = self.inner // self.head_dim
        self.bc = self.groups * self.d_state
        self.conv_dim = self.inner + 2 * self.bc
        self.kernel, self.eps = p["conv_kernel"], setup.norm_eps
        self.in_proj = nn.Linear(d, 2 * self.inner + 2 * self.bc + self.heads, bias=False)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, self.kernel, groups=self.conv_dim, bias=True
        )
        self.dt_bias = nn.Parameter(torch.zeros(self.heads))
        self.A_log = nn.Parameter(torch.zeros(self.heads))
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm = _NormWeight(self.inner)
        self.out_proj = nn.Linear(self.inner, d, bias=False)
        self.use_variants(setup.compile, ["fla kernels, eager glue"])  # one: nothing to build

    @property
    def impl(self) -> str:
        train = "chunk_gla" if self.ops["simple_gla_bwd_refused"] else "chunk_simple_gla"
        return (
            f"Mamba-2 on fla-core (causal_conv1d, chunk_simple_gla; training: {train}; "
            "gated rmsnorm_fn; decode: causal_conv1d_update + fused_recurrent_simple_gla)"
        )

    def _split(self, zxbcdt):
        return zxbcdt.split([self.inner, self.conv_dim, self.heads], dim=-1)

    def _ssm_inputs(self, xBC, dt_raw):
        """x [..., H, P]; q = C, k = B [..., H, N]; dt [..., H] float32."""
        x, Bm, Cm = xBC.split([self.inner, self.bc, self.bc], dim=-1)
        dt = F.softplus(dt_raw.float() + self.dt_bias.float())
        x = x.unflatten(-1, (self.heads, self.head_dim))
        rep = self.heads // self.groups
        k = Bm.unflatten(-1, (self.groups, self.d_state)).repeat_interleave(rep, dim=-2)
        q = Cm.unflatten(-1, (self.groups, self.d_state)).repeat_interleave(rep, dim=-2)
        return x, q, k, dt

    def _out(self, o, x, z):
        y = o + x * self.D[:, None].to(o.dtype)
        y = self.ops["rmsnorm_fn"](
            y.flatten(-2),
            self.norm.weight,
            None,
            z=z,
            eps=self.eps,
            group_size=self.inner // self.groups,
            norm_before_gate=False,
        )
        return self.out_proj(y)

    def _sequence(self, u, cache=None):
        z, xBC, dt_raw = self._split(self.in_proj(u))
        keep = cache is not None
        xBC, conv_state = self.ops["causal_conv1d"](
            xBC,
            weight=self.conv1d.weight[:, 0],
            bias=self.conv1d.bias,
            activation="silu",
            output_final_state=keep,
        )
        x, q, k, dt = self._ssm_inputs(xBC, dt_raw)
        g = dt * -torch.exp(self.A_log.float())
        v = (x.float() * dt[..., None]).to(x.dtype)
        grad = torch.is_grad_enabled() and self.in_proj.weight.requires_grad
        if grad and self.ops["simple_gla_bwd_refused"]:
            o, final = self.ops["chunk_gla"](
                q,
                k,
                v,
                g=g[..., None].expand(q.shape).contiguous(),
                scale=1.0,
                output_final_state=keep,
            )
        else:
            o, final = self.ops["chunk_simple_gla"](
                q, k, v, g=g, scale=1.0, output_final_state=keep
            )
        if keep:
            cache["conv"].copy_(conv_state)
            cache["ssm"].copy_(final)
        return self._out(o, x, z)

    def forward(self, u):
        return self._sequence(u)

    def allocate_cache(self, batch: int, max_len: int) -> dict:
        w = self.in_proj.weight
        conv = torch.zeros(batch, self.conv_dim, self.kernel, device=w.device, dtype=w.dtype)
        ssm = torch.zeros(
            batch, self.heads, self.d_state, self.head_dim, device=w.device, dtype=torch.float32
        )
        return {"conv": conv, "ssm": ssm}

    def prefill(self, u, cache):
        return self._sequence(u, cache)

    @torch.no_grad()
    def step(self, u_B1D, cache, pos):
        z, xBC, dt_raw = self._split(self.in_proj(u_B1D[:, 0]))
        xBC, _ = self.ops["causal_conv1d_update"](
            xBC,
            cache["conv"],
            weight=self.conv1d.weight[:, 0],
            bias=self.conv1d.bias,
            activation="silu",
        )
        x, q, k, dt = self._ssm_inputs(xBC, dt_raw)
        g = dt * -torch.exp(self.A_log.float())
        v = (x.float() * dt[..., None]).to(x.dtype)
        o, final = self.ops["fused_recurrent_simple_gla"](
            q[:, None],
            k[:, None],
            v[:, None],
            g=g[:, None],
            scale=1.0,
            initial_state=cache["ssm"],
            output_final_state=True,
        )
        cache["ssm"].copy_(final)
        return self._out(o[:, 0], x, z)[:, None]


def load_ssm(peer: FlaMamba2Peer, block: nn.Module) -> None:
    """mamba's names on both sides: in_proj, conv1d (weight [C, 1, K], bias), dt_bias,
    A_log, D, norm.weight, out_proj."""
    mixer, _ = _wrap("ssm", block)
    _copy_named(peer, mixer, {n: n for n in peer.state_dict()})
