"""FSDP2 over gloo on the CPU, two ranks started by torch's elastic launcher: a tiny
hybrid (RAT, attention, SSM, MLP; d_model 32, float32) sharded gives the unsharded
model's loss and, after one AdamW step, its parameters, within float32 tolerance; with
activation checkpointing too; in bfloat16 mixed precision within bfloat16's; and so does a
tiny model whose blocks share caches (a source block's gate bias is used by its readers)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

LR = 1e-3
SPEC = """
# RAT, attention, SSM and MLP at d_model 32
name: tiny-hybrid-32
model: {d_model: 32, vocab_size: 64, max_seq_len: 64, dtype: float32}
defaults:
  attention: {heads: 2, head_dim: 16}
  rat: {heads: 2, head_dim: 16, chunk_size: 8}
  ssm: {d_state: 8, head_dim: 16, chunk_size: 8}
  mlp: {hidden: 2 * d_model, activation: swiglu}
stack: "R- A- M-"
"""

pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="no gloo backend")


def launch_two(fn, *args):
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    from archlab.measure.dist_launch import _alarm, _quiet_launcher

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=2,
        run_id=f"test-{uuid.uuid4().hex[:8]}",
        rdzv_backend="c10d",
        rdzv_endpoint="localhost:0",
        max_restarts=0,
        monitor_interval=0.1,
        start_method="spawn",
    )
    with _quiet_launcher(), _alarm(120):  # the test never hangs: the launcher stops the ranks
        return elastic_launch(config, fn)(*args)


def test_sharded_step_equals_unsharded(tmp_path):
    from fsdp_check import compare_with_unsharded

    spec = tmp_path / "tiny_hybrid_32.yaml"
    spec.write_text(SPEC)
    sharing = Path(__file__).resolve().parents[2] / "specs" / "tiny" / "shared.yaml"
    out = launch_two(compare_with_unsharded, str(spec), LR, str(sharing))[0]
    for label in ("float32", "float32, checkpoint", "sharing", "sharing, checkpoint"):
        got = out[label]
        assert got["sharded"] and got["count"][0] == got["count"][1], got
        assert got["loss"] == pytest.approx(got["ref_loss"], rel=1e-5, abs=1e-6), label
        assert got["grad_diff"] < 1e-5 * got["grad_scale"], (label, got)  # averaged over ranks
        assert got["max_update"] > 0.5 * LR  # the step moved the weights
        # AdamW's first step is about lr x g / |g|: it magnifies the float32 rounding of
        # the smallest gradients (summed in another order), hence 2% of lr
        assert got["max_diff"] < 0.02 * LR, (label, got)
    mixed = out["bfloat16"]  # bf16 compute, fp32 sharded master weights and reductions
    assert mixed["dtypes"] == ["torch.float32"]
    assert mixed["grad_diff"] < 2e-2 * mixed["grad_scale"]
    assert mixed["loss"] == pytest.approx(mixed["ref_loss"], rel=2e-2)
    assert mixed["max_diff"] < 2.5 * LR  # AdamW's first step is about lr x sign(grad)
