"""rg_lru at the contract shape on CUDA: errors against the float32 reference of
the fast path in float32, in bf16, the reference in bf16, and fla's chunk_hgrn vs the loop."""
import sys, torch
sys.path.insert(0, sys.argv[1] + "/tests")
from numerics import rel_err
from archlab.blocks.base import ModelConfig
from archlab.blocks.registry import kinds
D, T, B = 2048, 4096, 1
MODEL = ModelConfig(d_model=D, vocab_size=32000, max_seq_len=T, dtype="bfloat16")
rec = kinds()["rg_lru"]
def make(backend):
    torch.manual_seed(0)
    b = rec.build(rec.params(kind="rg_lru", backend=backend), MODEL).cuda().float()
    b.select_backend("cuda"); return b
def run(block, x, dy):
    x = x.detach().clone().requires_grad_(True)
    y = block(x); y.backward(dy.to(y.dtype))
    return [y.detach().float(), x.grad.float()] + [p.grad.float() for p in block.parameters()]
x = torch.randn(B, T, D, device="cuda"); dy = torch.randn(B, T, D, device="cuda")
print("tf32", torch.backends.cuda.matmul.allow_tf32, torch.get_float32_matmul_precision())
ref = run(make("reference"), x, dy)
fast32 = run(make("triton"), x, dy)
low = run(make("reference").bfloat16(), x.bfloat16(), dy)
fast = run(make("triton").bfloat16(), x.bfloat16(), dy)
names = ["y", "dx"] + [n for n, _ in make("reference").named_parameters()]
for n, r, f32, l, f in zip(names, ref, fast32, low, fast):
    print(f"{n:22s} fast32 {rel_err(f32, r):.2e} ref-bf16 {rel_err(l, r):.5f} fast-bf16 {rel_err(f, r):.5f} fast-vs-refbf16 {rel_err(f, l):.5f}")
from archlab.kernels.lru.reference import linear_recurrence
from archlab.kernels.lru.fla_backend import linear_recurrence_fla
torch.manual_seed(1)
la = -torch.rand(B, T, D * 3 // 2 if False else 2560, device="cuda") * 0.5
xx = torch.randn_like(la)
h_loop, _ = linear_recurrence(la, xx, method="loop")
h_scan, _ = linear_recurrence(la, xx)
h_fla, _ = linear_recurrence_fla(la, xx)
print("fla vs loop", rel_err(h_fla, h_loop), "scan vs loop", rel_err(h_scan, h_loop))
