"""The block kinds and their peers: `make_peer` builds the peer of a kind, `load_weights`
copies archlab's weights into it (`LOADERS`), and `SAME` says, for each kind, whether and
how the peer computes archlab's function."""

from __future__ import annotations

from torch import nn

from .attention import AttentionPeer, load_attention
from .common import PeerUnavailable
from .mlp import MLPPeer, load_mlp
from .rat import PublishedRATPeer, load_rat
from .rnn import RNNPeer, load_rnn
from .run_setup import Setup
from .ssm import FlaMamba2Peer, load_ssm

SAME = {
    "attention": (
        True,
        "same projections, rotate-half RoPE (theta 10000, float32, cast back), "
        "causal softmax with scale head_dim**-0.5; no biases, no qk-norm",
    ),
    "local_attention": (
        True,
        "as attention; a key is visible from itself and the window - 1 "
        "tokens before it (archlab's convention); decode: a ring buffer of "
        "window slots",
    ),
    "ssm": (
        True,
        "mamba's Mamba-2 parameterisation on both sides (weights map one to one); "
        "the peer rounds y + D x to the compute dtype before the gated RMSNorm (archlab: "
        "float32). Not fla.layers.Mamba2: that layer is not in fla-core (it ships in "
        "flash-linear-attention), and without mamba_ssm (absent here) it runs a naive "
        "PyTorch SSD that materialises [B, chunks, L, L, H, N]",
    ),
    "rnn": (True, "same gates and recurrence (float32 scan, output gate in the compute dtype)"),
    "mlp": (True, "same projections, exact-erf GELU"),
    "rat": (
        True,
        "the published layer includes its input RMSNorm (eps 1e-6) and the "
        "residual: archlab is timed as x + mixer(norm(x)) of the same block; the published "
        "layer keeps float32 weights under bf16 autocast and rounds the running keys and "
        "values to bf16 before attending (archlab's kernels: float32 scan)",
    ),
}


def make_peer(kind: str, setup: Setup, rat_repo: str | None) -> nn.Module:
    device, dtype = setup.device, setup.dtype
    if kind == "attention":
        peer = AttentionPeer(setup)
    elif kind == "local_attention":
        peer = AttentionPeer(setup, window=setup.window)
    elif kind == "mlp":
        peer = MLPPeer(setup, 4 * setup.d_model, "gelu")
    elif kind == "rnn":
        peer = RNNPeer(setup)
    elif kind == "ssm":
        if device.type != "cuda":
            raise PeerUnavailable("not available: fla-core's Triton kernels need CUDA")
        peer = FlaMamba2Peer(setup)
    elif kind == "rat":
        return PublishedRATPeer(setup, rat_repo)  # float32 weights (autocast), on CUDA
    else:
        raise ValueError(f"unknown kind {kind!r}")
    return peer.to(device=device, dtype=dtype)


LOADERS = {
    "attention": load_attention,
    "local_attention": load_attention,
    "mlp": load_mlp,
    "rnn": load_rnn,
    "ssm": load_ssm,
    "rat": load_rat,
}


def load_weights(peer: nn.Module, archlab_block: nn.Module, kind: str | None = None) -> None:
    """Copy archlab's parameters into the peer, so that both compute the same function.
    `archlab_block` is `model.blocks[i]` (its `.mixer`, and `.norm` for rat) or a bare mixer
    (every kind but rat)."""
    if kind is None:
        kind = {
            AttentionPeer: "attention",
            MLPPeer: "mlp",
            RNNPeer: "rnn",
            FlaMamba2Peer: "ssm",
            PublishedRATPeer: "rat",
        }[type(peer)]
    LOADERS[kind](peer, archlab_block)
