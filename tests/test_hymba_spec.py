"""specs/examples/hymba_1.5b.yaml against Hymba-1.5B-Base as published: its layers, its
cross-layer KV sharing groups, and its parameter count, computed here from the published
config and model code, less what archlab cannot express (the arithmetic below).

Sources:
- https://huggingface.co/nvidia/Hymba-1.5B-Base/blob/main/config.json (CONFIG below)
- https://huggingface.co/nvidia/Hymba-1.5B-Base/blob/main/modeling_hymba.py: HymbaModel
  (embed_tokens, memory_tokens [num_memory_tokens, hidden_size], final_layernorm),
  HymbaDecoderLayer (input_layernorm, HymbaBlock, pre_moe_layernorm, one HymbaMLP),
  HymbaBlock (in_proj to Mamba x, the attention's q/k/v and the gate in one Linear, no
  bias; conv1d with bias; x_proj; dt_proj with bias; A_log; D; the dt/B/C RMS norms;
  pre_avg_layernorm1/2 over the attention and Mamba outputs; one out_proj), HymbaAttention
  with attn_only_wo_proj (no projections of its own; values v_head_dim = 2 * hidden /
  heads wide), HymbaMLP (gate, up and down projections, no bias).
The model card gives 1.52B parameters.
"""

from __future__ import annotations

from pathlib import Path

import archlab
from archlab.cost.analytic import spec_cost

SPEC = Path(__file__).resolve().parents[1] / "specs" / "examples" / "hymba_1.5b.yaml"

CONFIG = {  # nvidia/Hymba-1.5B-Base config.json, the fields that set the parameters
    "hidden_size": 1600,
    "num_hidden_layers": 32,
    "num_attention_heads": 25,
    "num_key_value_heads": 5,
    "intermediate_size": 5504,
    "vocab_size": 32001,
    "tie_word_embeddings": True,
    "mamba_d_state": 16,
    "mamba_d_conv": 4,
    "mamba_expand": 2,
    "mamba_dt_rank": 100,
    "mamba_conv_bias": True,
    "mamba_proj_bias": False,
    "mamba_inner_layernorms": True,
    "mlp_hidden_act": "silu",
    "num_memory_tokens": 128,
    "sliding_window": 1024,
    "global_attn_idx": [0, 15, 31],
    "kv_reuse_group": [
        [1, 2],
        [3, 4],
        [5, 6],
        [7, 8],
        [9, 10],
        [11, 12],
        [13, 14],
        [16, 17, 18],
        [19, 20],
        [21, 22],
        [23, 24],
        [25, 26],
        [27, 28],
        [29, 30],
    ],
}
d = CONFIG["hidden_size"]
H, K = CONFIG["num_attention_heads"], CONFIG["num_key_value_heads"]
E = CONFIG["mamba_expand"] * d  # Mamba's inner width, 3200
N, R, W = CONFIG["mamba_d_state"], CONFIG["mamba_dt_rank"], CONFIG["mamba_d_conv"]
HEAD_DIM = d // H  # 64: queries and keys
V_HEAD_DIM = E // H  # 128: values (HymbaBlock sets config.v_head_dim = E // heads)
CONSUMERS = {i for group in CONFIG["kv_reuse_group"] for i in group[1:]}  # no k, v of their own
LAYERS = range(CONFIG["num_hidden_layers"])


def hymba_layer(i: int) -> dict[str, int]:
    """The parameters of Hymba's layer i, by part."""
    q, k, v = H * HEAD_DIM, K * HEAD_DIM, K * V_HEAD_DIM  # 1600, 320, 640
    latent = E + q + (0 if i in CONSUMERS else k + v)  # Mamba x, then q (k, v)
    return {
        "in_proj": d * (latent + E),  # ... and the gate; no bias
        "out_proj": E * d,
        "conv1d": E * W + E,
        "x_proj": E * (R + 2 * N),
        "dt_proj": R * E + E,
        "A_log": E * N,
        "D": E,
        "dt_B_C_norms": R + 2 * N,
        "pre_avg_norms": 2 * E,
        "mlp": 3 * d * CONFIG["intermediate_size"],  # silu: gate, up, down
        "layer_norms": 2 * d,  # input_layernorm, pre_moe_layernorm
    }


def published_params() -> int:
    """Hymba-1.5B-Base's parameters: layers, tied embedding, final norm, meta tokens."""
    layers = sum(sum(hymba_layer(i).values()) for i in LAYERS)
    embedding = CONFIG["vocab_size"] * d  # tied: the LM head is the embedding
    return layers + embedding + d + CONFIG["num_memory_tokens"] * d


def test_the_published_count_is_the_model_cards():
    assert CONFIG["tie_word_embeddings"]
    assert published_params() == 1_522_797_824  # "1.52B"


def test_parameters_equal_the_published_count_less_what_archlab_cannot_express():
    plan = archlab.compile(SPEC)
    producers = len(LAYERS) - len(CONSUMERS)  # 17 layers compute keys and values
    # Not expressible in archlab, so not in the spec:
    meta_tokens = CONFIG["num_memory_tokens"] * d  # 128 x 1600 = 204,800
    inner_norms = len(LAYERS) * hymba_layer(0)["dt_B_C_norms"]  # 32 x 132 = 4,224
    pre_avg_norms = len(LAYERS) * hymba_layer(0)["pre_avg_norms"]  # 32 x 6,400 = 204,800
    # Expressed differently: archlab's attention branch has its own output projection
    # (H * head_dim -> d; Hymba has one out_proj, counted in both, after the heads' mean),
    # and its values are head_dim (64) wide, not v_head_dim (128).
    own_o_proj = len(LAYERS) * H * HEAD_DIM * d  # 32 x 2,560,000 = 81,920,000
    narrower_v = producers * d * K * (V_HEAD_DIM - HEAD_DIM)  # 17 x 512,000 = 8,704,000
    expected = (
        published_params() - meta_tokens - inner_norms - pre_avg_norms + own_o_proj - narrower_v
    )
    assert expected == 1_595_600_000
    assert spec_cost(plan, 1, 1).params == expected


def test_layers_and_kv_sharing_groups_are_the_published_ones():
    plan = archlab.compile(SPEC)
    blocks = plan.order()
    assert [b.kind for b in blocks] == ["parallel", "mlp"] * len(LAYERS)
    assert plan.model.d_model == d and plan.model.vocab_size == CONFIG["vocab_size"]
    assert plan.model.tie_embeddings
    for i in LAYERS:
        attention, mamba = blocks[2 * i].params.branches
        assert mamba.kind == "mamba" and (mamba.d_state, mamba.d_conv) == (N, W)
        assert (mamba.expand, mamba.dt_rank) == (CONFIG["mamba_expand"], R)
        assert (attention.heads, attention.kv_heads) == (H, K)
        if i in CONFIG["global_attn_idx"]:
            assert attention.kind == "attention"
        else:
            assert attention.kind == "local_attention"
            assert attention.window == CONFIG["sliding_window"]
        assert blocks[2 * i].params.merge == "mean"
        assert blocks[2 * i + 1].params.hidden == CONFIG["intermediate_size"]
    reads = {b.index // 2: b.cache_reads() for b in blocks if b.cache_reads()}
    expected = {c: {0: (2 * group[0], 0)} for group in CONFIG["kv_reuse_group"] for c in group[1:]}
    assert reads == expected


def test_the_cache_holds_the_keys_and_values_of_17_layers():
    plan = archlab.compile(SPEC)
    T, dbytes = 4096, 2  # bfloat16
    window = CONFIG["sliding_window"]
    full = len(CONFIG["global_attn_idx"]) * 2 * T * K * HEAD_DIM * dbytes
    swa = len(CONFIG["kv_reuse_group"]) * 2 * window * K * HEAD_DIM * dbytes
    mamba = len(LAYERS) * E * ((W - 1) * dbytes + N * 4)  # conv state, float32 SSM state
    assert spec_cost(plan, 1, T).cache_bytes == full + swa + mamba
