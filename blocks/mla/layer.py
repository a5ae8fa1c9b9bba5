"""The `mla` layer: the nn.Module of `archlab.blocks.mla`."""

from __future__ import annotations

import torch
from torch import nn

from archlab.blocks.attention import common
from archlab.blocks.base import ModelConfig, resolve_backend, runs_anywhere
from archlab.blocks.cache import LayerCache
from archlab.blocks.mla import Params
from archlab.kernels.rope import rope


class MLABlock(nn.Module):
    """Causal multi-head latent attention over x [B, T, d_model] (the mixer alone).

    The sequence path expands every position's keys and values from the latent and runs
    sdpa (or the float32 reference) with v narrower or wider than q and k. The cache holds
    `c_kv` [B, max_len, kv_lora_rank] (normed) and `k_pe` [B, max_len, qk_rope_head_dim]
    (rotated). `step` runs the absorbed form for sdpa and recomputes the keys and values
    from `c_kv` for the reference.
    """

    BACKENDS = {"sdpa": runs_anywhere, "reference": runs_anywhere}

    def __init__(self, params: Params, model: ModelConfig) -> None:
        super().__init__()
        self.params = params
        p, d = params, model.d_model
        self.heads, self.nope, self.rope_dim = p.heads, p.qk_nope_head_dim, p.qk_rope_head_dim
        self.v_dim, self.rank = p.v_head_dim, p.kv_lora_rank
        self.norm_eps = model.norm_eps
        qk = self.heads * (self.nope + self.rope_dim)
        if p.q_lora_rank is None:
            self.q_proj = nn.Linear(d, qk, bias=False)
        else:
            self.q_a_proj = nn.Linear(d, p.q_lora_rank, bias=False)
            self.q_a_layernorm = nn.RMSNorm(p.q_lora_rank, eps=model.norm_eps)
            self.q_b_proj = nn.Linear(p.q_lora_rank, qk, bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(d, self.rank + self.rope_dim, bias=False)
        self.kv_a_layernorm = nn.RMSNorm(self.rank, eps=model.norm_eps)
        self.kv_b_proj = nn.Linear(self.rank, self.heads * (self.nope + self.v_dim), bias=False)
        self.o_proj = nn.Linear(self.heads * self.v_dim, d, bias=False)
        self.reset_parameters()
        self.select_backend(torch.device("cpu"))

    def reset_parameters(self) -> None:
        """Projections ~ N(0, 0.02), norm weights 1."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)

    def select_backend(self, device: torch.device | str) -> str:
        """Choose the backend for `device` (raises BackendUnavailable if it cannot run)."""
        self.backend = resolve_backend(
            "mla", self.params.backend, torch.device(device), self.BACKENDS
        )
        return self.backend

    def _rope(self, x: torch.Tensor, positions_T: torch.Tensor) -> torch.Tensor:
        return rope(x, positions_T, self.params.rope_theta) if self.rope_dim else x

    def _queries(self, x_BTD: torch.Tensor, positions_T: torch.Tensor):
        """(q_nope [B, T, H, n], q_pe [B, T, H, p] rotated)."""
        B, T, _ = x_BTD.shape
        if self.params.q_lora_rank is None:
            q = self.q_proj(x_BTD)
        else:
            latent = self.q_a_proj(x_BTD)
            latent = common.rms_norm(latent, self.q_a_layernorm.weight, self.norm_eps)
            q = self.q_b_proj(latent)
        q = q.view(B, T, self.heads, self.nope + self.rope_dim)
        q_nope, q_pe = q.split([self.nope, self.rope_dim], dim=-1)
        return q_nope, self._rope(q_pe, positions_T)

    def _latent(self, x_BTD: torch.Tensor, positions_T: torch.Tensor):
        """(c_kv [B, T, r] normed, k_pe [B, T, p] rotated): what the cache holds."""
        c_kv, k_pe = self.kv_a_proj_with_mqa(x_BTD).split([self.rank, self.rope_dim], dim=-1)
        c_kv = common.rms_norm(c_kv, self.kv_a_layernorm.weight, self.norm_eps)
        return c_kv, self._rope(k_pe[:, :, None, :], positions_T)[:, :, 0]

    def _keys_values(self, c_kv_BSR: torch.Tensor, k_pe_BSP: torch.Tensor):
        """Every head's keys [B, S, H, n + p] and values [B, S, H, v] from the latent."""
        B, S, _ = c_kv_BSR.shape
        kv = self.kv_b_proj(c_kv_BSR).view(B, S, self.heads, self.nope + self.v_dim)
        k_nope, v = kv.split([self.nope, self.v_dim], dim=-1)
        k_pe = k_pe_BSP[:, :, None, :].expand(B, S, self.heads, self.rope_dim)
        return torch.cat([k_nope, k_pe], dim=-1), v

    def _sequence(self, x_BTD: torch.Tensor):
        """(the output [B, T, d_model], c_kv, k_pe) of a whole sequence."""
        positions = torch.arange(x_BTD.shape[1], device=x_BTD.device)
        q_nope, q_pe = self._queries(x_BTD, positions)
        c_kv, k_pe = self._latent(x_BTD, positions)
        k, v = self._keys_values(c_kv, k_pe)
        q = torch.cat([q_nope, q_pe], dim=-1)
        if self.backend == "sdpa":
            y = common.sdpa_attention(q, k, v, causal=True)
        else:
            mask = common.window_mask(q.shape[1], None, q.device)
            y = common.reference_attention(q, k, v, mask)
        return self.o_proj(y.flatten(2)), c_kv, k_pe

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] -> [B, T, d_model], causal over T."""
        return self._sequence(x_BTD)[0]

    def allocate_cache(
        self,
        batch: int,
        max_len: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LayerCache:
        """Empty c_kv [B, max_len, kv_lora_rank] and k_pe [B, max_len, qk_rope_head_dim]."""
        w = self.kv_b_proj.weight
        kw = {"device": device or w.device, "dtype": dtype or w.dtype}
        return LayerCache(
            {
                "c_kv": torch.zeros(batch, max_len, self.rank, **kw),
                "k_pe": torch.zeros(batch, max_len, self.rope_dim, **kw),
            }
        )

    def _check_room(self, cache: LayerCache, end: int) -> None:
        slots = cache["c_kv"].shape[1]
        if end > slots:
            raise ValueError(f"the cache holds {slots} positions; position {end - 1} does not fit")

    def prefill(self, x_BTD: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Run the prompt [B, T, d_model] (cache empty before) and store its latents."""
        if cache.length:
            raise ValueError(f"prefill needs an empty cache (it holds {cache.length} tokens)")
        T = x_BTD.shape[1]
        self._check_room(cache, T)
        y, c_kv, k_pe = self._sequence(x_BTD)
        cache["c_kv"][:, :T] = c_kv.to(cache["c_kv"].dtype)
        cache["k_pe"][:, :T] = k_pe.to(cache["k_pe"].dtype)
        cache.length = T
        return y

    def _absorbed(self, q_nope_BHN, q_pe_BHP, c_kv_BSR, k_pe_BSP) -> torch.Tensor:
        """One query per head against the latent itself: q_nope through the key rows of
        kv_b_proj into the latent space, scores against c_kv and k_pe, the weighted latent
        through the value rows. Returns [B, H, v]."""
        w = self.kv_b_proj.weight.view(self.heads, self.nope + self.v_dim, self.rank)
        w_uk, w_uv = w[:, : self.nope], w[:, self.nope :]
        q_lat_BHR = torch.einsum("bhn,hnr->bhr", q_nope_BHN, w_uk)
        scores_BHS = torch.einsum("bhr,bsr->bhs", q_lat_BHR, c_kv_BSR)
        if self.rope_dim:
            scores_BHS = scores_BHS + torch.einsum("bhp,bsp->bhs", q_pe_BHP, k_pe_BSP)
        scale = (self.nope + self.rope_dim) ** -0.5
        probs_BHS = (scores_BHS.float() * scale).softmax(-1).to(c_kv_BSR.dtype)
        out_BHR = torch.einsum("bhs,bsr->bhr", probs_BHS, c_kv_BSR)
        return torch.einsum("bhr,hvr->bhv", out_BHR, w_uv)

    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Decode one token [B, 1, d_model] at position cache.length against the cache."""
        pos = cache.length
        self._check_room(cache, pos + 1)
        positions = torch.arange(pos, pos + 1, device=x_B1D.device)
        q_nope, q_pe = self._queries(x_B1D, positions)
        c_kv, k_pe = self._latent(x_B1D, positions)
        cache["c_kv"][:, pos] = c_kv[:, 0].to(cache["c_kv"].dtype)
        cache["k_pe"][:, pos] = k_pe[:, 0].to(cache["k_pe"].dtype)
        c_all = cache["c_kv"][:, : pos + 1].to(q_nope.dtype)
        k_pe_all = cache["k_pe"][:, : pos + 1].to(q_nope.dtype)
        if self.backend == "reference":
            k, v = self._keys_values(c_all, k_pe_all)
            q = torch.cat([q_nope, q_pe], dim=-1)
            y = common.reference_attention(q, k, v, None).flatten(2)
        else:
            y = self._absorbed(q_nope[:, 0], q_pe[:, 0], c_all, k_pe_all).flatten(1)[:, None]
        cache.length = pos + 1
        return self.o_proj(y)
