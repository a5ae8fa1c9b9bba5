"""rg_lru's recurrence on CUDA: fla's chunk_hgrn and fused_recurrent_hgrn against the loop
on the block's own inputs; the bf16 rule with the recurrent kernel; both kernels timed."""
import functools, sys, torch, triton
sys.path.insert(0, sys.argv[1] + "/tests")
from numerics import rel_err
from archlab.blocks.base import ModelConfig
from archlab.blocks.registry import kinds
from archlab.kernels.lru import fla_backend
from archlab.kernels.lru.reference import linear_recurrence
import archlab.blocks.rg_lru.layer as L
D, T, B = 2048, 4096, 1
MODEL = ModelConfig(d_model=D, vocab_size=32000, max_seq_len=T, dtype="bfloat16")
rec = kinds()["rg_lru"]
def make(backend):
    torch.manual_seed(0)
    b = rec.build(rec.params(kind="rg_lru", backend=backend), MODEL).cuda().float()
    b.select_backend("cuda"); return b
orig = fla_backend.linear_recurrence_fla
seen = []
def capture(la, x, *a, **k):
    seen.append((la.detach().clone(), x.detach().clone())); return orig(la, x, *a, **k)
L.linear_recurrence_fla = capture
x = torch.randn(B, T, D, device="cuda"); dy = torch.randn(B, T, D, device="cuda")
with torch.no_grad():
    make("triton")(x)
la, xx = seen[0]
print("block inputs: log_a range", la.min().item(), la.max().item(), "x std", xx.std().item())
h_loop, _ = linear_recurrence(la, xx, method="loop")
for kernel in ("chunk", "recurrent"):
    for rep in range(3):
        h, _ = orig(la, xx, kernel=kernel)
        err = (h - h_loop).abs().amax(-1)[0]  # per position
        worst = err.topk(8).indices.tolist()
        print(f"{kernel} rep {rep}: rel {rel_err(h, h_loop):.3e}; worst t {sorted(worst)} (t % 128: {sorted(t % 128 for t in worst)})")
for b, d in ((1, 2048), (2, 2560), (1, 2560), (2, 2048)):
    torch.manual_seed(1)
    l2 = -torch.rand(b, T, d, device="cuda") * 0.5; x2 = torch.randn_like(l2)
    ref, _ = linear_recurrence(l2, x2, method="loop")
    print(f"random B={b} D={d}: chunk {rel_err(orig(l2, x2, kernel='chunk')[0], ref):.3e} recurrent {rel_err(orig(l2, x2, kernel='recurrent')[0], ref):.3e}")
print("block inputs again, B=1 D=2048 chunk:", rel_err(orig(la, xx, kernel="chunk")[0], h_loop))
l3 = la.repeat(2, 1, 1); x3 = xx.repeat(2, 1, 1)
print("block inputs B=2 chunk:", rel_err(orig(l3, x3, kernel="chunk")[0], h_loop.repeat(2, 1, 1)))
# the bf16 rule with the recurrent kernel everywhere
L.linear_recurrence_fla = functools.partial(orig, kernel="recurrent")
def run(block, x, dy):
    x = x.detach().clone().requires_grad_(True)
    y = block(x); y.backward(dy.to(y.dtype))
    return [y.detach().float(), x.grad.float()] + [p.grad.float() for p in block.parameters()]
ref = run(make("reference"), x, dy)
low = run(make("reference").bfloat16(), x.bfloat16(), dy)
fast = run(make("triton").bfloat16(), x.bfloat16(), dy)
fast32 = run(make("triton"), x, dy)
names = ["y", "dx"] + [n for n, _ in make("reference").named_parameters()]
ok = True
for n, r, l, f, f32 in zip(names, ref, low, fast, fast32):
    e, el = rel_err(f, r), rel_err(l, r)
    ok &= e <= 2 * el + 2e-3
    print(f"recurrent {n:22s} fast-bf16 {e:.5f} ref-bf16 {el:.5f} fast32 {rel_err(f32, r):.2e} {'ok' if e <= 2 * el + 2e-3 else 'FAIL'}")
print("bf16 rule with fused_recurrent_hgrn:", "passed" if ok else "FAILED")
# timing at the mixers' size (64 x 4096, W 2048), fwd + bwd, float32 in
torch.manual_seed(2)
lb = (-torch.rand(64, T, D, device="cuda") * 0.5).requires_grad_(); xb = torch.randn(64, T, D, device="cuda", requires_grad=True)
g = torch.randn(64, T, D, device="cuda")
for kernel in ("chunk", "recurrent"):
    def step():
        h, _ = orig(lb, xb, kernel=kernel); h.backward(g)
    def fwd():
        with torch.no_grad(): orig(lb, xb, kernel=kernel)
    print(f"time {kernel}: train {triton.testing.do_bench(step):.2f} ms, forward {triton.testing.do_bench(fwd):.2f} ms (64 x 4096 x 2048, float32)")
