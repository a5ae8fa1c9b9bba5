"""The five RAT-paper 1.3B specs at T = 4096, checked against figures derived by hand
from the model sizes (d_model 2048, 16 heads of 128, GELU MLP 8192, vocab 32000, 24
mixer + MLP pairs, chunk 16, 2 qk groups, window 1025, bf16), not printed by the code."""

from __future__ import annotations

from pathlib import Path

import pytest

import archlab

ROOT = Path(__file__).resolve().parents[2]
d, V, H, dh, F, L, G, W, N = 2048, 32000, 16, 128, 8192, 16, 2, 1025, 24
E = H * dh
T, BYTES = 4096, 2

# parameters of one residual block (its RMSNorm weight included)
P_NORM = d
P_MLP = d + 2 * d * F
P_ATTN = d + 4 * d * E
P_RAT = d + d * (3 * E + 2 * G * dh) + E + E * d  # in_proj, gate bias, out_proj
P_RNN = d + 4 * d * d + d  # in_proj (z, v, g), out_proj, gate bias
P_HEAD = 2 * V * d + P_NORM  # untied embedding and LM head, final norm

# forward matmul FLOPs of one block over one sequence of T tokens
PAIRS_CAUSAL = T * (T + 1) // 2
PAIRS_WINDOW = W * (W + 1) // 2 + (T - W) * W
n = T // L
PAIRS_RAT = T + L * n * (n - 1) // 2  # own running key + ends of earlier chunks
F_MLP = 2 * 2 * T * d * F
F_ATTN = 2 * T * 4 * d * E + 4 * dh * H * PAIRS_CAUSAL
F_LOCAL = 2 * T * 4 * d * E + 4 * dh * H * PAIRS_WINDOW
F_RAT = 2 * T * d * (3 * E + 2 * G * dh) + 2 * T * E * d + 4 * dh * H * PAIRS_RAT
F_RNN = 2 * T * d * 4 * d
F_HEAD = 2 * T * d * V

# inference cache after T tokens
C_ATTN = 2 * T * E * BYTES
C_LOCAL = 2 * W * E * BYTES
C_RAT = 2 * (T // L) * E * BYTES
C_RNN = d * BYTES

# one decode step at position T (T keys cached)
D_MLP = 2 * 2 * d * F
D_ATTN = 2 * 4 * d * E + 4 * dh * H * (T + 1)
D_LOCAL = 2 * 4 * d * E + 4 * dh * H * W
D_RAT = 2 * d * (3 * E + 2 * G * dh) + 2 * E * d + 4 * dh * H * (T // L + 1)
D_RNN = 2 * 4 * d * d
D_HEAD = 2 * d * V

SPECS = {  # file: the mixers' (params, fwd FLOPs, cache bytes, decode FLOPs)
    "attention": (P_ATTN * N, F_ATTN * N, C_ATTN * N, D_ATTN * N),
    "attention_swa": (
        N // 2 * (P_ATTN + P_ATTN),
        N // 2 * (F_ATTN + F_LOCAL),
        N // 2 * (C_ATTN + C_LOCAL),
        N // 2 * (D_ATTN + D_LOCAL),
    ),
    "rat": (P_RAT * N, F_RAT * N, C_RAT * N, D_RAT * N),
    "rat_swa": (
        N // 2 * (P_RAT + P_ATTN),
        N // 2 * (F_RAT + F_LOCAL),
        N // 2 * (C_RAT + C_LOCAL),
        N // 2 * (D_RAT + D_LOCAL),
    ),
    "rnn": (P_RNN * N, F_RNN * N, C_RNN * N, D_RNN * N),
}


def cost(name: str, batch: int = 1):
    return archlab.cost(ROOT / f"specs/paper/{name}.yaml", batch=batch, seq_len=T)


@pytest.mark.parametrize("name", SPECS)
@pytest.mark.parametrize("batch", [1, 4])
def test_paper_spec_by_hand(name, batch):
    p_mix, f_mix, c_mix, d_mix = SPECS[name]
    c = cost(name, batch)
    params = P_HEAD + N * P_MLP + p_mix
    assert c.params == params
    assert c.fwd_flops == batch * (F_HEAD + N * F_MLP + f_mix)
    assert c.train_flops == 3 * batch * (F_HEAD + N * F_MLP + f_mix)
    assert c.cache_bytes == batch * c_mix
    assert c.decode_flops == batch * (D_HEAD + N * D_MLP + d_mix)
    # a decode step reads every weight but the embedding table, `batch` rows of it, and
    # the cache
    assert c.decode_bytes == (params - V * d + batch * d) * BYTES + batch * c_mix


def test_paper_param_counts_are_about_1_3b():
    for name in SPECS:
        assert 1.3e9 < cost(name).params < 1.4e9


def test_rat_cuts_attention_flops_and_kv_cache_by_the_chunk_size():
    """The paper: RAT(L) reduces attention FLOPs and the KV cache by a factor L."""
    att, rat = cost("attention"), cost("rat")
    assert att.cache_bytes == L * rat.cache_bytes
    att_products = att.by_kind["attention"].fwd_flops - N * 2 * T * 4 * d * E
    rat_products = rat.by_kind["rat"].fwd_flops - N * (
        2 * T * d * (3 * E + 2 * G * dh) + 2 * T * E * d
    )
    assert att_products == N * 4 * dh * H * T * (T + 1) // 2
    assert abs(att_products / rat_products - L) < 0.01 * L


def test_swa_and_rnn_cache_do_not_grow_past_the_window():
    swa_4k, swa_64k = (
        cost("attention_swa"),
        archlab.cost(ROOT / "specs/paper/attention_swa.yaml", seq_len=16 * T),
    )
    att_part = N // 2 * C_ATTN
    assert swa_64k.cache_bytes - 16 * att_part == swa_4k.cache_bytes - att_part
    assert archlab.cost(ROOT / "specs/paper/rnn.yaml", seq_len=1).cache_bytes == N * C_RNN
