"""benchmarks/peers.py: each peer computes the same function as archlab's block when it is
given the block's weights (CPU, float32, fresh random inputs), and the --small run writes
its JSON. The fla Mamba-2 peer and the published RAT layer need CUDA: the GPU run checks
them (each row's `check`)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CPU_KINDS = ["attention", "local_attention", "rnn", "mlp"]
TOL = {"rtol": 1e-4, "atol": 1e-5}


def load_peers():
    spec = importlib.util.spec_from_file_location("peers", ROOT / "benchmarks" / "peers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def peers():
    return load_peers()


def pair(peers, kind: str):
    """archlab's one-block model of `kind` and its peer holding the same weights."""
    setup = peers.small_setup()
    model, block = peers.build_archlab(kind, setup)
    peer = peers.make_peer(kind, setup, None)
    peers.load_weights(peer, block, kind)
    return setup, block.mixer, peer


@pytest.mark.parametrize("kind", CPU_KINDS)
def test_peer_computes_archlab_function(peers, kind):
    """forward, prefill (into a cache) and two decode steps after it give archlab's outputs;
    local attention's window (9) is shorter than the prompt, so its ring buffer wraps."""
    setup, mixer, peer = pair(peers, kind)
    torch.manual_seed(1)
    B, T, d = 2, 32, setup.d_model
    x = torch.randn(B, T, d)
    with torch.no_grad():
        torch.testing.assert_close(peer(x), mixer(x), **TOL)
        cache_a, cache_p = mixer.allocate_cache(B, T + 2), peer.allocate_cache(B, T + 2)
        torch.testing.assert_close(peer.prefill(x, cache_p), mixer.prefill(x, cache_a), **TOL)
        for pos in (T, T + 1):
            x1 = torch.randn(B, 1, d)
            torch.testing.assert_close(peer.step(x1, cache_p, pos), mixer.step(x1, cache_a), **TOL)


def test_unavailable_peers_say_why(peers):
    """On the CPU: fla's kernels need CUDA, the published RAT layer needs --rat-repo (and
    CUDA), and flex_attention has no CPU backward (the local-attention train row)."""
    setup = peers.small_setup()
    with pytest.raises(peers.PeerUnavailable, match="need CUDA"):
        peers.make_peer("ssm", setup, None)
    with pytest.raises(peers.PeerUnavailable, match="--rat-repo"):
        peers.make_peer("rat", setup, None)
    _, _, local = pair(peers, "local_attention")
    with pytest.raises(peers.PeerUnavailable, match="backward"):
        local(torch.randn(1, 8, setup.d_model))


@pytest.mark.parametrize("kind", ["rnn", "attention"])
def test_peer_gradients_match(peers, kind):
    """The rnn peer's scan has its own backward (the reverse scan): input and parameter
    gradients equal archlab's autograd ones."""
    setup, mixer, peer = pair(peers, kind)
    torch.manual_seed(2)
    x = torch.randn(2, 32, setup.d_model)
    w = torch.randn(2, 32, setup.d_model)
    xa, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
    (mixer(xa) * w).sum().backward()
    (peer(xp) * w).sum().backward()
    torch.testing.assert_close(xp.grad, xa.grad, **TOL)
    grads_a = {n: p.grad for n, p in mixer.named_parameters()}
    for name, p in peer.named_parameters():
        torch.testing.assert_close(p.grad, grads_a[name], **TOL, msg=name)


def test_load_weights_refuses_parameters_the_peer_lacks(peers):
    """A qk-norm weight has no place in the attention peer: loading says so."""
    import archlab

    setup = peers.small_setup()
    spec = setup.spec("attention")
    spec["stack"][0]["qk_norm"] = True
    block = archlab.build(spec).blocks[0]
    peer = peers.make_peer("attention", setup, None)
    with pytest.raises(ValueError, match="q_norm"):
        peers.load_weights(peer, block, "attention")


def test_small_run_writes_rows(peers, tmp_path, capsys):
    out = tmp_path / "peers.json"
    assert peers.main(["--small", "--cpu", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {"command", "date", "device", "torch", "triton", "fla", "rows"} <= set(doc)
    rows = {(r["kind"], r["mode"]): r for r in doc["rows"]}
    assert set(rows) == {(k, m) for k in peers.KINDS for m in peers.MODES}
    for (kind, mode), r in rows.items():
        assert r["archlab_status"] == "ok", r
        assert r["archlab_ms"] > 0 and r["archlab_backend"]
        if kind in ("ssm", "rat") or (kind, mode) == ("local_attention", "train"):
            assert r["peer_status"] == "n/a" and "not available" in r["note"], r
            continue
        assert r["peer_status"] == "ok", r
        assert r["speed_ratio"] == pytest.approx(r["peer_ms"] / r["archlab_ms"])
        assert r["check"]["match"], r
    assert "archlab/peer" in capsys.readouterr().out


def test_trace_writes_each_sides_kernel_table(peers, tmp_path):
    traces = tmp_path / "traces"
    argv = ["--small", "--cpu", "--kinds", "mlp", "--modes", "prefill", "--trace", str(traces)]
    assert peers.main(argv) == 0
    written = sorted(p.name for p in traces.iterdir())
    assert written == ["mlp_prefill_2x32_archlab.txt", "mlp_prefill_2x32_peer.txt"]
    text = (traces / written[0]).read_text()
    assert text.startswith("per call: wall") and "aten::" in text  # the profiler's table


SSM_UNDER_INTERPRETER = r"""
import ast, sys
import torch
import triton.runtime.autotuner as autotuner
import triton.runtime.interpreter as interpreter

# Two gaps of Triton's CPU interpreter that fla's kernels hit (as tests/kernels/test_ssd.py):
# autotuning benchmarks through a GPU driver (every config ties here), and `for i in
# range(n)` giving plain ints where compiled code has tensors.
autotuner.Autotuner.do_bench = property(lambda self: lambda fn, quantiles: [1.0, 1.0, 1.0])


def visit_For(self, node):
    node = self.generic_visit(node)
    if isinstance(node.target, ast.Name):
        to_tensor = ast.Attribute(
            value=ast.Name(id="interpreter_semantic", ctx=ast.Load()), attr="to_tensor",
            ctx=ast.Load(),
        )
        wrapped = ast.Call(
            func=to_tensor, args=[ast.Name(id=node.target.id, ctx=ast.Load()),
            ast.Constant(value=False)], keywords=[],
        )
        node.body.insert(0, ast.Assign(targets=[ast.Name(node.target.id, ast.Store())],
                                       value=wrapped))
    return node


interpreter.ASTTransformer.visit_For = visit_For
interpreter.FunctionRewriter.ast_transformer = interpreter.ASTTransformer()

import importlib.util
spec = importlib.util.spec_from_file_location("peers", sys.argv[1])
peers = importlib.util.module_from_spec(spec)
spec.loader.exec_module(peers)
setup = peers.small_setup()
model, block = peers.build_archlab("ssm", setup)
mixer, peer = block.mixer, peers.FlaMamba2Peer(setup)  # make_peer refuses the CPU
peers.load_weights(peer, block, "ssm")
torch.manual_seed(0)
x = torch.randn(2, 32, setup.d_model)
tol = {"rtol": 1e-4, "atol": 1e-5}
with torch.no_grad():
    torch.testing.assert_close(peer(x), mixer(x), **tol)
    ca, cp = mixer.allocate_cache(2, 34), peer.allocate_cache(2, 34)
    torch.testing.assert_close(peer.prefill(x, cp), mixer.prefill(x, ca), **tol)
    for pos in (32, 33):
        x1 = torch.randn(2, 1, setup.d_model)
        torch.testing.assert_close(peer.step(x1, cp, pos), mixer.step(x1, ca), **tol)
xa, xp = x.clone().requires_grad_(), x.clone().requires_grad_()
mixer(xa).square().sum().backward()
peer(xp).square().sum().backward()
torch.testing.assert_close(xp.grad, xa.grad, **tol)
grads = dict(mixer.named_parameters())
for name, p in peer.named_parameters():
    torch.testing.assert_close(p.grad, grads[name].grad, **tol, msg=name)
print("ok")
"""


def fla_present() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("fla", "einops", "triton"))


@pytest.mark.skipif(not fla_present(), reason='needs fla-core: pip install "archlab[ssm]"')
@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA here: the GPU run checks the peer")
def test_ssm_peer_under_triton_interpreter():
    """The Mamba-2 peer on fla's kernels (run by Triton's CPU interpreter, which must be set
    before triton is imported: a fresh interpreter) against archlab's ssm: forward,
    prefill, two decode steps and every gradient."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run(
        [sys.executable, "-c", SSM_UNDER_INTERPRETER, str(ROOT / "benchmarks" / "peers.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "ok" in run.stdout
