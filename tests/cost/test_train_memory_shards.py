"""Training memory per GPU under FSDP2 (`train_memory(..., shards=N, checkpoint=...)`,
`archlab cost --train-memory --shards N --checkpoint`), and the ~10B RAT hybrid of
docs/distributed.md: ~160 GB of fp32 master weights, gradients and AdamW states, more than
one H200 holds, about half per GPU on two."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import archlab
from archlab.blocks.registry import kind as block_kind
from archlab.cli import main
from archlab.cost.analytic import norm_params, param_count
from archlab.cost.memory import activation_bytes, fsdp_units, train_memory

ROOT = Path(__file__).resolve().parents[2]
RAT = str(ROOT / "specs" / "paper" / "rat.yaml")
TINY = str(ROOT / "specs" / "tiny" / "hybrid.yaml")
TEN_B = str(ROOT / "specs" / "examples" / "rat_hybrid_10b.yaml")
H200_BYTES = 141 * 10**9  # the H200's memory, as sold


def test_one_shard_is_the_unsharded_estimate():
    plan = archlab.compile(RAT)
    m, n = train_memory(plan, 2, 1024, shards=1), param_count(plan)
    assert (m.weights, m.gradients, m.master_weights, m.optimizer) == (2 * n, 2 * n, 4 * n, 8 * n)
    assert (m.gathered, m.gathered_gradients) == (0, 0)
    assert m.total == train_memory(plan, 2, 1024).total


def test_states_are_split_and_one_unit_is_gathered():
    plan = archlab.compile(RAT)
    one, two = train_memory(plan, 1, 4096), train_memory(plan, 1, 4096, shards=2)
    for field in ("weights", "gradients", "master_weights", "optimizer"):
        assert getattr(two, field) == -(-getattr(one, field) // 2), field
    assert two.activations == one.activations  # the batch is per GPU: not sharded
    largest = max(fsdp_units(plan))
    mlp = norm_params(plan.model) + block_kind("mlp").param_count(
        next(b.params for b in plan.blocks if b.kind == "mlp"), plan.model.d_model
    )
    assert largest == max(mlp, plan.model.vocab_size * plan.model.d_model + norm_params(plan.model))
    assert two.gathered == largest * 2  # bf16 parameters, all-gathered
    assert two.gathered_gradients == largest * 4  # reduce-scattered in fp32
    assert sum(fsdp_units(plan)) == param_count(plan)
    assert "FSDP2 over 2 GPUs" in " ".join(two.assumptions)
    d = two.to_dict()
    assert d["total"] == two.total and d["shards"] == 2 and d["estimate"] is True


def test_float32_model_reduces_in_float32_with_no_master_copy():
    plan = archlab.compile(TINY)
    m = train_memory(plan, 1, 64, shards=4)
    assert m.master_weights == 0 and m.gathered_gradients == m.gathered
    tied = sum(fsdp_units(plan))
    assert tied == param_count(plan)


def test_checkpointing_keeps_block_inputs_and_one_block():
    plan = archlab.compile(TINY)
    B, T, m = 2, 64, plan.model
    full, ck = activation_bytes(plan, B, T), activation_bytes(plan, B, T, checkpoint=True)
    head = B * ((2 * T * m.d_model + T * m.vocab_size) * m.dtype_bytes + 4 * T * m.vocab_size)
    per_block = []
    for b in plan.blocks:
        elems, fp32 = block_kind(b.kind).activations(b.params, m.d_model, T)
        per_block.append((elems + 2 * T * m.d_model) * m.dtype_bytes + fp32)
    assert full == B * sum(per_block) + head
    assert ck == B * (len(plan.blocks) * T * m.d_model * m.dtype_bytes + max(per_block)) + head
    assert ck < full
    assert train_memory(plan, B, T, checkpoint=True).activations == ck


def test_bad_shards():
    with pytest.raises(ValueError, match="shards"):
        train_memory(archlab.compile(TINY), 1, 16, shards=0)


def test_cli(capsys):
    assert (
        main(["cost", RAT, "--train-memory", "--shards", "2", "--checkpoint", "--seq", "4k"]) == 0
    )
    out = capsys.readouterr().out
    assert "per GPU, sharded over 2 (FSDP2), activation checkpointing" in out
    assert "all-gathered unit (largest)" in out and "ESTIMATE" in out
    argv = ["cost", RAT, "--train-memory", "--shards", "2", "--seq", "4k", "--json"]
    assert main(argv) == 0
    mem = json.loads(capsys.readouterr().out)["specs"][0]["train_memory"][0]
    assert mem["shards"] == 2 and mem["checkpoint"] is False
    assert mem["total"] == train_memory(archlab.compile(RAT), 1, 4096, shards=2).total


@pytest.mark.parametrize(
    "argv,message",
    [(["--shards", "2"], "add --train-memory"), (["--train-memory", "--shards", "0"], ">= 1")],
)
def test_cli_errors(capsys, argv, message):
    assert main(["cost", RAT, *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_10b_hybrid():
    """Valid; ~10B parameters; its fp32 master weights, fp32 gradients and AdamW states
    (16 bytes a parameter) ~160 GB: one H200 cannot hold them; sharded over two with
    checkpointing, the predicted per-GPU memory at 4K fits one H200 with room to spare."""
    assert main(["validate", TEN_B]) == 0
    plan = archlab.compile(TEN_B)
    n = param_count(plan)
    assert 9.5e9 < n < 10.5e9
    assert {b.kind for b in plan.blocks} == {"rat", "attention", "mlp"}
    states = 16 * n
    assert 150e9 < states < 170e9 and states > H200_BYTES
    one = train_memory(plan, 1, 4096, checkpoint=True)
    two = train_memory(plan, 1, 4096, shards=2, checkpoint=True)
    assert one.total > H200_BYTES > two.total
    assert two.total < 0.7 * H200_BYTES
