"""FSDP2 over gloo on the CPU, two ranks: a tiny model whose parallel branches share
caches (a branch reads a branch of an earlier parallel block, a plain block reads a branch,
a branch reads a plain block; RAT's gate bias is handed on) gives the unsharded model's
loss, gradients and parameters after one AdamW step, with and without checkpointing."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")

LR = 1e-3
SPEC = """
name: tiny-parallel-sharing-32
model: {d_model: 32, vocab_size: 64, max_seq_len: 64, dtype: float32}
defaults:
  attention: {heads: 2, head_dim: 16}
  local_attention: {heads: 2, head_dim: 16, window: 5}
  rat: {heads: 2, head_dim: 16, chunk_size: 8}
  ssm: {d_state: 8, head_dim: 16, chunk_size: 8}
  mlp: {hidden: 2 * d_model, activation: swiglu}
stack:
  - {parallel: [{kind: rat, name: r}, {kind: local_attention, name: l}, ssm]}
  - mlp
  - {parallel: [{kind: rat, share_cache: r}, ssm]}
  - {kind: local_attention, share_cache: l}
  - {kind: attention, name: a}
  - {parallel: [{kind: attention, share_cache: a}, {kind: local_attention, share_cache: [0, 1]}]}
  - mlp
"""

pytestmark = pytest.mark.skipif(not dist.is_gloo_available(), reason="no gloo backend")


def test_sharded_step_with_branch_sharing_equals_unsharded(tmp_path):
    from fsdp_check import compare_with_unsharded
    from test_fsdp import launch_two

    spec = tmp_path / "tiny_parallel_sharing_32.yaml"
    spec.write_text(SPEC)
    out = launch_two(compare_with_unsharded, str(spec), LR, str(spec))[0]
    for label in ("float32", "sharing, checkpoint"):
        got = out[label]
        assert got["sharded"] and got["count"][0] == got["count"][1], got
        assert got["loss"] == pytest.approx(got["ref_loss"], rel=1e-5, abs=1e-6), label
        assert got["grad_diff"] < 1e-5 * got["grad_scale"], (label, got)
        assert got["max_update"] > 0.5 * LR
        assert got["max_diff"] < 0.02 * LR, (label, got)  # see test_fsdp
