"""The `moe` layer: the nn.Module of `archlab.blocks.moe`."""

from __future__ import annotations

import math

import torch
from torch import nn

from archlab.blocks import mlp
from archlab.blocks.base import (
    BackendUnavailable,
    ModelConfig,
    needs_cuda,
    resolve_backend,
    runs_anywhere,
    select_cpu_backend,
)
from archlab.blocks.cache import LayerCache
from archlab.blocks.mlp.layer import MLPBlock
from archlab.blocks.moe import GATED, Params, hidden_size, shared_width
from archlab.blocks.moe.experts import (
    expert_counts,
    grouped_experts,
    grouped_fits,
    loop_experts,
    sort_by_expert,
)


def grouped_can_run(device: torch.device) -> str | None:
    """A backend check: torch._grouped_mm's GEMMs need CUDA with compute capability 9.0+."""
    reason = needs_cuda(device)
    if reason is not None:
        return reason
    if not hasattr(torch, "_grouped_mm"):
        return "needs torch._grouped_mm"
    if torch.cuda.get_device_capability(device) < (9, 0):
        return "needs compute capability 9.0 or newer (Hopper)"
    return None


class MoEBlock(nn.Module):
    """Top-k routed experts over x [B, T, d_model] (the channel mixer alone: no norm, no
    residual). Weights: `router` (Linear(d_model, E)), `up_proj` [E, n_in * hidden,
    d_model] (gate rows first when gated), `down_proj` [E, d_model, hidden] (nn.Linear's
    layout per expert), `shared` (an `mlp` of width shared_experts * shared_hidden) and
    `shared_gate` (Linear(d_model, 1)). Routing is computed in float32.

    Every forward leaves the load-balancing loss (times aux_loss_coef) in `aux_loss`
    (a scalar tensor; None before the first forward). Prefill and step leave it alone and
    are dropless; a capacity factor drops tokens only in a training-mode forward.
    """

    BACKENDS = {"grouped": grouped_can_run, "reference": runs_anywhere}

    def __init__(self, params: Params, model: ModelConfig) -> None:
        super().__init__()
        self.params = params
        d, E = model.d_model, params.num_experts
        self.hidden = hidden_size(params, d)
        n_in = 2 if params.activation in GATED else 1
        self.router = nn.Linear(d, E, bias=False)
        self.up_proj = nn.Parameter(torch.empty(E, n_in * self.hidden, d))
        self.down_proj = nn.Parameter(torch.empty(E, d, self.hidden))
        width = shared_width(params, d)
        self.shared = None
        if width:
            shared = mlp.Params(hidden=width, activation=params.activation)
            self.shared = MLPBlock(shared, model)
        self.shared_gate = nn.Linear(d, 1, bias=False) if params.shared_gate else None
        self.aux_loss: torch.Tensor | None = None
        self.reset_parameters()
        select_cpu_backend(self, self.BACKENDS)

    def reset_parameters(self) -> None:
        """Every weight ~ N(0, 0.02)."""
        for w in (self.router.weight, self.up_proj, self.down_proj):
            nn.init.normal_(w, std=0.02)
        if self.shared_gate is not None:
            nn.init.normal_(self.shared_gate.weight, std=0.02)

    def select_backend(self, device: torch.device | str) -> str:
        """Choose the backend for `device` (raises BackendUnavailable if it cannot run)."""
        self.backend = resolve_backend(
            "moe", self.params.backend, torch.device(device), self.BACKENDS
        )
        return self.backend

    def route(self, x_ND: torch.Tensor):
        """(top-k weights [N, k] float32, top-k experts [N, k], the aux loss)."""
        p = self.params
        logits = nn.functional.linear(x_ND.float(), self.router.weight.float())
        scores = logits.softmax(-1) if p.router == "softmax" else logits.sigmoid()
        top_w, top_i = scores.topk(p.top_k, dim=-1)
        if p.norm_topk_prob:
            top_w = top_w / top_w.sum(-1, keepdim=True)
        probs = scores if p.router == "softmax" else scores / scores.sum(-1, keepdim=True)
        counts = expert_counts(top_i.flatten(), p.num_experts)
        f = counts.float() / (x_ND.shape[0] * p.top_k)
        aux = p.aux_loss_coef * p.num_experts * (f * probs.mean(0)).sum()
        return top_w, top_i, aux

    def _experts(self, xs_MD, counts_E, sorted_expert_M) -> torch.Tensor:
        act = self.params.activation
        if self.backend == "grouped" and grouped_fits(xs_MD, xs_MD.shape[1], self.hidden):
            return grouped_experts(
                xs_MD, counts_E, sorted_expert_M, self.up_proj, self.down_proj, act
            )
        return loop_experts(xs_MD, counts_E, self.up_proj, self.down_proj, act)

    def mix(self, x_BTD: torch.Tensor, capacity: bool = False):
        """(the output [B, T, d_model], the aux loss). Tokens are sorted by expert (stable:
        in token order within an expert), run through their experts and summed back
        weighted; with `capacity`, an expert keeps its first C tokens. Free of host syncs
        and data-dependent shapes but for the `reference` backend's loop (`experts.py`)."""
        if self.backend is None:
            raise BackendUnavailable(
                f"backend {self.params.backend!r} cannot run on {x_BTD.device} "
                "(select_backend(device) chooses one for the device)"
            )
        p = self.params
        B, T, D = x_BTD.shape
        x_ND = x_BTD.reshape(B * T, D)
        top_w, top_i, aux = self.route(x_ND)
        cap = None
        if capacity and p.capacity_factor is not None:
            cap = math.ceil(p.capacity_factor * B * T * p.top_k / p.num_experts)
        order, sorted_e, weights, counts = sort_by_expert(
            top_i.flatten(), top_w.flatten(), p.num_experts, cap
        )
        token = order // p.top_k
        ys = self._experts(x_ND[token], counts, sorted_e)
        out = torch.zeros(B * T, D, device=x_BTD.device, dtype=torch.float32)
        out = out.index_add(0, token, ys.float() * weights[:, None])
        if self.shared is not None:
            shared = self.shared(x_ND).float()
            if self.shared_gate is not None:
                shared = shared * torch.sigmoid(self.shared_gate(x_ND).float())
            out = out + shared
        return out.to(x_BTD.dtype).view(B, T, D), aux

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] -> [B, T, d_model]; sets `aux_loss`."""
        y, self.aux_loss = self.mix(x_BTD, capacity=self.training)
        return y

    def allocate_cache(
        self,
        batch: int,
        max_len: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LayerCache:
        """An empty cache: the MoE keeps no state, only the token count."""
        return LayerCache()

    def prefill(self, x_BTD: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """The dropless forward of the prompt; counts its tokens into `cache.length`."""
        cache.length += x_BTD.shape[1]
        return self.mix(x_BTD)[0]

    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """The dropless forward of one token; advances `cache.length`."""
        cache.length += x_B1D.shape[1]
        return self.mix(x_B1D)[0]
