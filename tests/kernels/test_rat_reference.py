"""The RAT reference's own decode path agrees with its parallel forward."""

import pytest
import torch

from archlab.kernels.rat.reference import (
    rat_core_reference,
    rat_decode_reference,
    rat_prefill_cache_reference,
)


@pytest.mark.parametrize("T,L,prompt", [(11, 4, 5), (8, 1, 3), (9, 16, 2), (12, 3, 9)])
@pytest.mark.parametrize("rope", [True, False])
def test_decode_matches_forward(T, L, prompt, rope):
    torch.manual_seed(T * L)
    B, H, G, D = 2, 4, 2, 8
    q, k = torch.randn(B, T, G, D), torch.randn(B, T, G, D)
    v, gl = torch.randn(B, T, H, D), torch.randn(B, T, H, D)
    bias = torch.randn(H * D)
    full = rat_core_reference(q, k, v, gl, bias, L, rope)
    C = -(-T // L)
    kc, vc = torch.full((B, C, H, D), float("nan")), torch.full((B, C, H, D), float("nan"))
    rat_prefill_cache_reference(k[:, :prompt], v[:, :prompt], gl[:, :prompt], bias, kc, vc, L, rope)
    outs = []
    for t in range(prompt, T):
        outs.append(
            rat_decode_reference(q[:, t], k[:, t], v[:, t], gl[:, t], bias, kc, vc, t, L, rope)
        )
    dec = torch.stack(outs, dim=1)
    torch.testing.assert_close(dec, full[:, prompt:], rtol=1e-5, atol=1e-5)
    assert not torch.isnan(kc).any() and not torch.isnan(vc).any()
