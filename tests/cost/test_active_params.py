"""Active parameters: what one token uses. Equal to all parameters for dense kinds; for a
mixture of experts, the top_k routed experts (and the shared ones and the router)."""

from __future__ import annotations

import archlab
from archlab.blocks.moe import Params, active_param_count, param_count

D = 64


def test_moe_active_params_are_top_k_experts_and_the_whole_router():
    p = Params(num_experts=8, top_k=2, hidden=32, shared_experts=1)
    dense_equivalent = param_count(p.model_copy(update={"num_experts": 2}), D)
    router_rest = D * (8 - 2)  # the router still scores every expert
    assert active_param_count(p, D) == dense_equivalent + router_rest
    assert active_param_count(p, D) < param_count(p, D)


def test_spec_cost_sums_active_params():
    spec = {
        "model": {"d_model": D, "vocab_size": 100, "dtype": "float32"},
        "stack": [{"kind": "moe", "num_experts": 8, "top_k": 2, "hidden": 32}, "mlp"],
    }
    c = archlab.cost(spec)
    assert c.active_params < c.params
    assert c.params - c.active_params == c.by_kind["moe"].params - c.by_kind["moe"].active_params
    dense = archlab.cost("specs/paper/rat.yaml")
    assert dense.active_params == dense.params
    assert c.to_dict()["active_params"] == c.active_params
