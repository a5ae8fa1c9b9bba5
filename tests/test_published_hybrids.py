"""The published hybrids in specs/examples (Samba, Griffin / RecurrentGemma, Jamba,
Qwen3-Next): each validates, its analytic parameter count (and active count, for the
mixtures of experts) equals the count of the published configuration exactly, worked out
below (Jamba's inner norms of dt, B and C are `mamba`'s `inner_norms`, Qwen3-Next's gated
attention `attention`'s `output_gate`, RecurrentGemma's bias on the output projection
alone `o_bias`); the count of the model built on the meta device equals the analytic one;
and a scaled-down copy of each ~1B spec builds on the CPU and decodes as it runs forward.

The published counts are those of the released configurations as the reference code
instantiates them (transformers' JambaForCausalLM, RecurrentGemmaForCausalLM and
Qwen3NextForCausalLM on each model's config.json; microsoft/Samba's lit_gpt for Samba),
worked out here from the configurations, and they agree with the headline figures the
authors give (checked within that figure's rounding).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import archlab
from archlab.measure.scale import Scale, scale_plan

EXAMPLES = Path(__file__).resolve().parents[1] / "specs" / "examples"

# -- Samba-1.3B: microsoft/Samba lit_gpt/config.py, `Samba_1.3B` (the README's "Samba-1.3B";
# the paper's 1.3B models). d = 2304, 9 Mamba + 9 sliding-window layers, each with a SwiGLU
# MLP of 6144, vocab 32000 tied; Mamba E = 4608, dt_rank 144, N = 16, conv 4.
#   Mamba   in 2304*9216 + conv 4608*4 + 4608 + x_proj 4608*(144+32) + dt 144*4608 + 4608
#           + A_log 4608*16 + D 4608 + out 4608*2304                      = 33,431,040
#   SWA     4 * 2304^2                                                     = 21,233,664
#   MLP     3 * 2304 * 6144                                                = 42,467,328
#   9 * (33,431,040 + 21,233,664 + 2 * 42,467,328) + 36 norms * 2304 + 32000 * 2304
#   + final norm 2304                                                      = 1,330,207,488
# Everything is expressible; the published figure is "1.3B" (within 1.25B .. 1.35B).
SAMBA = 1_330_207_488

# -- RecurrentGemma-2B: google/recurrentgemma-2b config.json. d = 2560, 18 recurrent and 8
# local-attention layers, GeGLU MLP 2 x 7680 with biases, vocab 256000 tied.
#   RG-LRU  linear_x, linear_y 2*(2560^2 + 2560) + linear_out 2560^2 + 2560 + conv 4*2560
#           + 2560 + a_param 2560 + gates 2*(10*256^2 + 2560)             = 20,999,680
#   attn    q 2560^2 + k, v 2*2560*256 + o 2560^2 + o bias 2560            = 14,420,480
#   MLP     3 * 2560 * 7680 + biases 2*7680 + 2560                         = 59,000,320
#   18 * (20,999,680 + 59,000,320) + 8 * (14,420,480 + 59,000,320) + 52 norms * 2560
#   + embedding 256000 * 2560 + final norm 2560                            = 2,682,862,080
# The o-projection bias alone is `o_bias: true` (q, k, v have none). Published: "2B
# non-embedding parameters" (arXiv:2404.07839): 2,682,862,080 - 655,360,000 = 2,027,502,080.
# Without parameters, and not expressed: the sqrt(d_model) embedding scale, the (1 + weight)
# RMSNorm and the tanh GeLU (griffin.yaml's description).
RECURRENTGEMMA_2B = 2_682_862_080

# -- Jamba-v0.1: ai21labs/Jamba-v0.1 config.json. d = 4096, 28 Mamba and 4 attention layers
# (32 heads, 8 kv, no RoPE), 16 MoE layers of 16 experts (top 2) and 16 dense MLPs, all
# SwiGLU 14336, vocab 65536 untied; Mamba E = 8192, dt_rank 256, N = 16.
#   Mamba   in 4096*16384 + conv 8192*4 + 8192 + x_proj 8192*288 + dt 256*8192 + 8192
#           + A_log 8192*16 + D 8192 + out 8192*4096
#           + the inner RMSNorms of dt, B, C 256 + 16 + 16                 = 103,582,016
#   attn    2 * 4096^2 + 2 * 4096 * 1024                                   = 41,943,040
#   MLP     3 * 4096 * 14336                                               = 176,160,768
#   MoE     router 4096*16 + 16 * 176,160,768                              = 2,818,637,824
#   28 * 103,582,016 + 4 * 41,943,040 + 16 * (176,160,768 + 2,818,637,824) + 64 norms * 4096
#   + 2 * 65536 * 4096 + final norm 4096                                   = 51,570,323,328
#   active: less 16 layers * 14 idle experts * 176,160,768                 = 12,110,311,296
# The inner RMSNorms are `inner_norms: true`. Published: 52B parameters, 12B active
# (arXiv:2403.19887, the model card).
JAMBA_V01 = 51_570_323_328
JAMBA_V01_ACTIVE = 12_110_311_296

# -- Qwen3-Next-80B-A3B: Qwen/Qwen3-Next-80B-A3B-Instruct config.json. d = 2048, 36 Gated
# DeltaNet and 12 gated-attention layers, each with a MoE of 512 experts (top 10) of 512
# plus a shared expert of 512 behind a sigmoid gate, vocab 151936 untied.
#   GDN     in (q, k, v, z) 2048*(2*2048 + 2*4096) + (b, a) 2048*64 + conv 8192*4
#           + dt_bias, A_log 2*32 + norm 128 + out 4096*2048               = 33,718,464
#   attn    q and its gate 2048*8192 + k, v 2*2048*512 + o 4096*2048 + qk-norm 2*256
#                                                                          = 27,263,488
#   MoE     router 2048*512 + 512 * 3*2048*512 + shared 3*2048*512 + gate 2048
#                                                                          = 1,614,809,088
#   36 * 33,718,464 + 12 * 27,263,488 + 48 * 1,614,809,088 + 96 norms * 2048
#   + 2 * 151936 * 2048 + final norm 2048                                  = 79,674,391,296
#   active: less 48 layers * 502 idle experts * 3,145,728                  = 3,874,929,408
# The gate half of q_proj is `output_gate: true`. Published: 80B parameters, 3B activated
# (the model card; the active count less the embedding and LM head, 3,874,929,408
# - 2 * 151936 * 2048 = 3,252,599,552). Without parameters, and not expressed: the
# zero-centred (1 + weight) RMSNorms. The multi-token-prediction layer the checkpoint ships
# beside the model is not part of Qwen3NextForCausalLM, nor of the spec.
QWEN3_NEXT = 79_674_391_296
QWEN3_NEXT_ACTIVE = 3_874_929_408

# file: (parameters, active parameters) the spec must cost.
EXPECTED = {
    "samba.yaml": (SAMBA, SAMBA),
    "griffin.yaml": (RECURRENTGEMMA_2B, RECURRENTGEMMA_2B),
    "jamba_v0.1.yaml": (JAMBA_V01, JAMBA_V01_ACTIVE),
    "qwen3_next_80b_a3b.yaml": (QWEN3_NEXT, QWEN3_NEXT_ACTIVE),
    # The ~1B specs in the layout of the two large models, pinned so that a change shows:
    # jamba.yaml is jamba_v0.1.yaml at d_model 512 (28 * 64 inner-norm weights included),
    # qwen3_next.yaml qwen3_next_80b_a3b.yaml at d_model 1024, 24 layers and 32 experts, top 4
    # (6 * 1024 * 8 * 256 = 12,582,912 output-gate weights included).
    "jamba.yaml": (866_031_872, 249_469_184),
    "qwen3_next.yaml": (1_130_806_080, 602_323_776),
}

# The headline figures of the authors, in billions, and the brackets of their rounding:
# name: [(figure, low, high)]. `embedding`: the embedding and LM head tables.
HEADLINE = {
    "samba.yaml": [("params", 1.25, 1.35)],  # "1.3B"
    "griffin.yaml": [("params - embedding", 1.5, 2.5)],  # "2B non-embedding parameters"
    "jamba_v0.1.yaml": [("params", 51.5, 52.5), ("active", 11.5, 12.5)],  # "52B", "12B active"
    # "80B in total and 3B activated" (3B: without the embedding and LM head)
    "qwen3_next_80b_a3b.yaml": [("params", 79.5, 80.5), ("active - embedding", 2.5, 3.5)],
}

BUILT = ["samba.yaml", "griffin.yaml", "jamba.yaml", "qwen3_next.yaml"]  # ~1B: built here
FULL_SIZE = {"jamba_v0.1.yaml": "jamba.yaml", "qwen3_next_80b_a3b.yaml": "qwen3_next.yaml"}


@pytest.fixture(scope="module")
def plans():
    return {name: archlab.compile(EXAMPLES / name) for name in EXPECTED}


def test_every_spec_is_listed():
    families = ("samba", "griffin", "jamba", "qwen3_next")
    files = {p.name for p in EXAMPLES.glob("*.yaml") if p.stem.startswith(families)}
    assert files == set(EXPECTED) == set(BUILT) | set(FULL_SIZE)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_validates_without_warnings(name, plans):
    plan = plans[name]
    assert plan.blocks and not plan.warnings, [w.message for w in plan.warnings]


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parameters_equal_the_published_configuration(name, plans):
    c = archlab.cost(plans[name], seq_len=1)
    assert (c.params, c.active_params) == EXPECTED[name]


@pytest.mark.parametrize("name", sorted(HEADLINE))
def test_parameters_within_the_published_headline(name, plans):
    m, c = plans[name].model, archlab.cost(plans[name], seq_len=1)
    embedding = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
    figures = {
        "params": c.params,
        "params - embedding": c.params - embedding,
        "active": c.active_params,
        "active - embedding": c.active_params - embedding,
    }
    for figure, low, high in HEADLINE[name]:
        assert low * 1e9 <= figures[figure] < high * 1e9, (figure, figures[figure])


@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_spec_is_the_small_one_scaled_up(name, plans):
    """The full-size spec extends the ~1B one: its stack is the same sequence of kinds
    (Qwen3-Next: twice over)."""
    big = [b.kind for b in plans[name].blocks]
    small = [b.kind for b in plans[FULL_SIZE[name]].blocks]
    assert big == small * (len(big) // len(small))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_built_on_meta_has_the_costed_parameters(name, plans):
    """The whole model, built without memory (meta device), has exactly the parameters the
    cost model counts (the full-size specs too: they are never built for real)."""
    model = archlab.build(plans[name], device="meta")
    assert sum(p.numel() for p in model.parameters()) == archlab.cost(plans[name]).params


@pytest.mark.parametrize("name", BUILT)
def test_scaled_copy_builds_and_decodes_on_cpu(name, plans):
    """A copy at d_model 128 (one repeating unit of the stack, every kind kept) builds on
    the CPU in float32, and prefill + decode steps give the forward's logits."""
    small, _ = scale_plan(plans[name], Scale(d_model=128, vocab_size=512, min_blocks=4), "float32")
    assert set(small.kinds()) == set(plans[name].kinds())
    torch.manual_seed(0)
    model = archlab.build(small, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) == archlab.cost(small).params
    ids = torch.randint(0, 512, (2, 12))
    with torch.no_grad():
        full = model(ids)
        cache = model.allocate_cache(2, 12)
        outs = [model.prefill(ids[:, :7], cache)]
        outs += [model.step(ids[:, t : t + 1], cache) for t in range(7, 12)]
    assert full.shape == (2, 12, 512) and torch.isfinite(full).all()
    decoded = torch.cat(outs, dim=1)
    err = ((decoded - full).norm() / full.norm()).item()
    assert err < 1e-4, err
