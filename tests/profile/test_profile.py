"""Timing, OOM as a result, caches measured against the cost model, peaks, scaling."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import archlab
from archlab.measure import profile, throughput
from archlab.measure.profile import LayerTarget, ModelTarget, Settings, Timing, is_oom, measure
from archlab.measure.scale import Scale, scale_plan, stack_period
from archlab.measure.throughput import device_peaks, measure_throughput

ROOT = Path(__file__).resolve().parents[2]
TINY, PAPER = ROOT / "specs" / "tiny", ROOT / "specs" / "paper"
CPU = torch.device("cpu")
QUICK = Settings(warmup=0, repeats=2, max_time_s=30.0)  # 2 runs at most (repeats < 3)


@pytest.fixture(scope="module")
def tiny_hybrid():
    return ModelTarget(archlab.compile(TINY / "hybrid.yaml"), CPU)


@pytest.mark.parametrize("mode", ["train", "prefill", "decode"])
def test_measure_modes(tiny_hybrid, mode):
    r = measure(tiny_hybrid, mode, 2, 24, QUICK)
    assert r.status == "ok", r.error
    assert r.timing.runs == 2 and r.timing.min_s <= r.timing.median_s <= r.timing.max_s
    assert r.tokens_per_s > 0 and r.flops > 0 and r.tflops > 0
    assert set(r.backends) >= {"rat", "attention", "local_attention", "rnn"}
    if mode != "train":  # the cache the model allocates is what the cost model says
        assert r.cache_bytes_measured == r.cache_bytes_analytic > 0
    if mode == "decode":
        assert r.bytes > 0 and r.gbps > 0 and r.tokens_per_s == pytest.approx(2 / r.timing.median_s)


def test_train_with_optimizer(tiny_hybrid):
    r = measure(tiny_hybrid, "train", 1, 16, Settings(0, 1, 1.0, optimizer=True))
    assert r.status == "ok" and "AdamW" in r.notes[0]


def test_backend_notes_reach_the_result(tiny_hybrid, monkeypatch):
    """A caveat of a selected backend (`backend_note`, e.g. the SSM's fla kernel choice)
    is in every result's notes, once however many blocks give it."""
    ssm_blocks = [m for m in tiny_hybrid.module.modules() if hasattr(m, "backend_note")]
    assert len(ssm_blocks) >= 1
    for m in ssm_blocks:
        monkeypatch.setattr(m, "backend_note", "trains through another kernel")
    r = measure(tiny_hybrid, "prefill", 1, 16, QUICK)
    assert r.status == "ok" and r.notes == ["backend: trains through another kernel"]
    monkeypatch.undo()
    assert measure(tiny_hybrid, "prefill", 1, 16, QUICK).notes == []


def test_forced_oom_is_a_result(tiny_hybrid, monkeypatch):
    def boom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 PiB")

    monkeypatch.setattr(tiny_hybrid, "train_fn", boom)
    r = measure(tiny_hybrid, "train", 1, 16, QUICK)
    assert r.status == "oom" and r.timing is None and "out of memory" in r.error
    assert r.tokens_per_s is None and r.peak_memory_bytes is None
    monkeypatch.undo()
    assert measure(tiny_hybrid, "train", 1, 16, QUICK).status == "ok"  # the sweep goes on


def test_real_cpu_allocation_failure_is_oom(tiny_hybrid):
    r = measure(tiny_hybrid, "decode", 1 << 40, 16, QUICK)  # a cache of petabytes
    assert r.status == "oom", r.error


def test_other_failures_are_errors(tiny_hybrid, monkeypatch):
    monkeypatch.setattr(tiny_hybrid, "step", lambda *a: 1 / 0)
    r = measure(tiny_hybrid, "decode", 1, 16, QUICK)
    assert r.status == "error" and "ZeroDivisionError" in r.error


def test_is_oom():
    assert is_oom(torch.cuda.OutOfMemoryError("x"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))


def test_timing_stats():
    t = Timing.of([3.0, 1.0, 2.0, 10.0, 4.0])
    assert (t.median_s, t.min_s, t.max_s, t.runs) == (3.0, 1.0, 10.0, 5)
    assert t.p10_s <= t.median_s <= t.p90_s and t.spread > 0


def test_time_fn_stops_at_max_time(monkeypatch):
    calls = []
    t = profile.time_fn(lambda: calls.append(1), CPU, Settings(1, 1000, 0.0))
    assert t.runs == 1 and len(calls) == 2  # warm-up + one run: it alone outlasts the budget
    clock = iter(range(10**6))  # every reading 1 ms after the last: runs of 1 ms
    monkeypatch.setattr(profile, "_clock", lambda: next(clock) * 1e-3)
    calls.clear()
    t = profile.time_fn(lambda: calls.append(1), CPU, Settings(1, 1000, 0.005))
    assert t.runs == 3 and len(calls) == 4  # warm-up + the 3-run minimum, then the budget


def test_layer_target_matches_block_costs():
    plan = archlab.compile(TINY / "rat.yaml")
    block = next(b for b in plan.order() if b.kind == "rat")
    target = LayerTarget(plan, block, CPU)
    assert target.label.startswith("layer rat(") and target.backends() == {"rat": "reference"}
    for mode in ("train", "prefill", "decode"):
        r = measure(target, mode, 2, 40, QUICK)
        assert r.status == "ok", r.error
        if mode != "train":
            assert r.cache_bytes_measured == r.cache_bytes_analytic


def test_throughput_search_and_generation():
    plan, _ = scale_plan(archlab.compile(TINY / "attention.yaml"), Scale(64, 128, 2), "float32")
    target = ModelTarget(plan, CPU)
    weights = profile.weights_bytes(plan)
    per_seq = target.allocate_cache(1, 12, device="meta").nbytes()
    limit = weights + 10 * per_seq + per_seq // 2
    r = measure_throughput(target, 8, 4, QUICK, max_batch=64, memory_limit=limit)
    assert r.status == "ok", r.error
    assert r.batch == 10 and r.extra["search"][-1][0] in (10, 11) and not r.extra["capped"]
    assert r.tokens_per_s == pytest.approx(10 * 4 / r.timing.median_s)
    assert r.cache_bytes_measured == r.cache_bytes_analytic == 10 * per_seq
    sampled = measure_throughput(target, 8, 4, QUICK, batch=3, sample=2)
    assert sampled.status == "ok" and sampled.batch == 3 and "estimated" in sampled.notes[0]
    none = measure_throughput(target, 8, 4, QUICK, max_batch=64, memory_limit=weights)
    assert none.status == "oom" and none.error == "batch 1 does not fit"


def test_peaks_are_measured_once_and_cached(monkeypatch):
    calls = []
    real = throughput.measure_peaks

    def counting(device, dtype):
        calls.append(1)
        return real(device, dtype)

    monkeypatch.setattr(throughput, "measure_peaks", counting)
    a = device_peaks(CPU, torch.float64, refresh=True)
    b = device_peaks(CPU, torch.float64)
    assert a == b and len(calls) == 1 and a["matmul_tflops"] > 0 and a["copy_gbps"] > 0
    table = json.loads(open(throughput.peaks_path()).read())
    assert any(k.endswith("|float64") and "torch" in k for k in table)


@pytest.mark.parametrize("name", ["attention", "rat", "rat_swa", "attention_swa", "rnn"])
def test_scaled_paper_specs_keep_stack_and_kinds(name):
    plan = archlab.compile(PAPER / f"{name}.yaml")
    small, text = scale_plan(plan, Scale(), "float32")
    assert small.model.d_model == 256 and small.model.vocab_size == 4096
    assert small.model.dtype == "float32" and len(small.blocks) == 4
    assert set(small.kinds()) == set(plan.kinds())
    assert [b.kind for b in small.order()] == [b.kind for b in plan.order()[:4]]
    assert "4 of 48 blocks" in text
    for b in small.blocks:
        if hasattr(b.params, "heads"):
            assert (b.params.heads, b.params.head_dim) == (2, 128)
        if b.kind == "rat":
            assert b.params.chunk_size == 16
    archlab.build(small)  # it builds


def test_scaling_gqa_and_periods():
    plan = archlab.compile(ROOT / "specs/examples/gqa_llama.yaml")
    assert stack_period(plan) == 2
    small, _ = scale_plan(plan, Scale(d_model=256, min_blocks=0), "float32")
    attn = next(b for b in small.blocks if b.kind == "attention").params
    assert attn.heads == 4 and attn.head_dim == 64 and 4 % attn.kv_heads == 0
    assert len(small.blocks) == len(plan.blocks)
    mlp = next(b for b in small.blocks if b.kind == "mlp").params
    assert mlp.hidden == 8192 * 256 // 2048


def test_scaled_copies_of_sharing_specs_keep_their_sharers():
    import archlab

    plan = archlab.compile(str(ROOT / "specs" / "examples" / "rat_swa_shared.yaml"))
    small, text = scale_plan(plan, Scale(), "float32")
    assert len(small.blocks) == len(plan.blocks) == 48 and "48 of 48 blocks" in text
    sharers = [b.shares_cache_of for b in small.blocks if b.shares_cache_of is not None]
    assert sharers and set(sharers) == {20, 22}
    model = archlab.build(small)
    assert archlab.cost(small).params == sum(p.numel() for p in model.parameters())
