"""The `rnn` layer: the nn.Module of `archlab.blocks.rnn`."""

from __future__ import annotations

import torch
from torch import nn

from archlab.blocks.base import BackendUnavailable, ModelConfig, resolve_backend, runs_anywhere
from archlab.blocks.cache import LayerCache
from archlab.blocks.rnn import Params
from archlab.kernels.gates import init_gate_bias_
from archlab.kernels.rat.scan import chunk_scan_parallel
from archlab.kernels.runtime import triton_can_run


def _triton_ops():
    """archlab.kernels.rnn.triton_rnn (imported on first use: it registers custom ops)."""
    from archlab.kernels.rnn import triton_rnn

    return triton_rnn


class RNNBlock(nn.Module):
    """in_proj -> z, v, g [d_model each]; g = sigmoid(g + gate_bias) in float32;
    s_t = g_t * s_{t-1} + (1 - g_t) * v_t over the whole sequence (float32);
    output out_proj(sigmoid(z) * s). The RAT block with a chunk as long as the sequence,
    with the same weight layout for z, v, g. Backends: `triton` (CUDA: gates, scan and
    output gate fused in one kernel each way, `kernels/rnn/triton_rnn.py`) and
    `reference` (a log-depth parallel scan in PyTorch, any device); `auto` takes the first
    that runs. Parameters are created in float32."""

    # backend -> check(device), in `auto` order; triton on the CPU only when asked for by
    # name under Triton's interpreter (the tests)
    BACKENDS = {
        "triton": lambda device: triton_can_run(device, asked_by_name=False),
        "reference": runs_anywhere,
    }

    def __init__(self, params: Params, model: ModelConfig) -> None:
        super().__init__()
        self.params = params
        self.d_model = model.d_model
        self.max_seq_len = model.max_seq_len
        self.cache_dtype = model.torch_dtype
        self.in_proj = nn.Linear(model.d_model, 3 * model.d_model, bias=params.bias)
        self.gate_bias = nn.Parameter(torch.empty(model.d_model))
        self.out_proj = nn.Linear(model.d_model, model.d_model, bias=params.bias)
        self.reset_gate_bias()
        self.backend: str | None = None
        try:
            self.select_backend(torch.device("cpu"))
        except BackendUnavailable:
            pass  # a backend this kind lacks: forward raises until one is selected

    def reset_gate_bias(self) -> None:
        """gate_bias = log(U(1, max_seq_len - 1)) (zeros for max_seq_len <= 2): RAT's init
        with one chunk spanning the sequence."""
        init_gate_bias_(self.gate_bias, self.max_seq_len)

    def select_backend(self, device: torch.device | str) -> str:
        """Choose the backend for `device` (raises BackendUnavailable if it cannot run)."""
        self.backend = None
        table = dict(self.BACKENDS)
        if self.params.backend == "triton":
            table["triton"] = lambda device: triton_can_run(device, asked_by_name=True)
        self.backend = resolve_backend("rnn", self.params.backend, torch.device(device), table)
        return self.backend

    def _gates(self, x_BTD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """z (x's dtype), v, g (float32)."""
        if self.backend is None:
            raise BackendUnavailable(f"rnn backend {self.params.backend!r} is not available")
        z, v, g = self.in_proj(x_BTD).chunk(3, dim=-1)
        return z, v.float(), torch.sigmoid(g.float() + self.gate_bias.float())

    def _output(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.sigmoid(z) * s.to(z.dtype))

    def forward(self, x_BTD: torch.Tensor) -> torch.Tensor:
        """[B, T, d_model] -> [B, T, d_model]."""
        if self.backend == "triton":
            y, _ = _triton_ops().rnn_core_triton(self.in_proj(x_BTD), self.gate_bias)
            return self.out_proj(y)
        z, v, g = self._gates(x_BTD)
        return self._output(z, chunk_scan_parallel(v, g, max(x_BTD.shape[1], 1)))

    def allocate_cache(
        self,
        batch: int,
        max_len: int,
        device: torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> LayerCache:
        """One zeroed "state" [batch, d_model] (whatever max_len); dtype defaults to the
        model's, device to the block's."""
        device = device if device is not None else self.gate_bias.device
        dtype = dtype if dtype is not None else self.cache_dtype
        return LayerCache({"state": torch.zeros(batch, self.d_model, device=device, dtype=dtype)})

    def prefill(self, x_BTD: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Run a prompt (one parallel scan) into an empty cache; returns forward(x)."""
        if cache.length:
            raise ValueError(f"prefill needs an empty cache (it holds {cache.length} tokens)")
        if self.backend == "triton":
            y, last = _triton_ops().rnn_core_triton(self.in_proj(x_BTD), self.gate_bias)
            if x_BTD.shape[1]:
                cache["state"].copy_(last.detach())
            cache.length = x_BTD.shape[1]
            return self.out_proj(y)
        z, v, g = self._gates(x_BTD)
        s = chunk_scan_parallel(v, g, max(x_BTD.shape[1], 1))
        if x_BTD.shape[1]:
            cache["state"].copy_(s[:, -1].detach())
        cache.length = x_BTD.shape[1]
        return self._output(z, s)

    @torch.no_grad()
    def step(self, x_B1D: torch.Tensor, cache: LayerCache) -> torch.Tensor:
        """Decode one token (O(1)); no autograd."""
        if self.backend == "triton":
            u = self.in_proj(x_B1D[:, 0])
            ops = _triton_ops()
            y = ops.rnn_step_triton(u, self.gate_bias, cache["state"], cache.length > 0)
            cache.length += 1
            return self.out_proj(y)[:, None]
        z, v, g = self._gates(x_B1D[:, 0])
        s = (1 - g) * v
        if cache.length:
            s = s + g * cache["state"].float()
        cache["state"].copy_(s)
        cache.length += 1
        return self._output(z, s)[:, None]
