"""Where the peak memory of one RAT block train step goes, gated op against the former
composition: every tensor an aten op or custom op creates is tracked until freed; at the
peak, the live tensors by creating op (GiB). CUDA, bf16, B x T from argv."""
import sys, weakref, torch
from torch.utils._python_dispatch import TorchDispatchMode
from archlab.blocks.base import ModelConfig
from archlab.blocks.rat import Params
from archlab.blocks.rat.layer import RATBlock, ROPE_THETA

class Live(TorchDispatchMode):
    def __init__(self):
        super().__init__(); self.live = {}; self.total = 0; self.peak = 0; self.at_peak = []
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor) and t.device.type == "cuda":
                st = t.untyped_storage(); key = st.data_ptr(); n = st.nbytes()
                if key in self.live or n == 0: continue
                self.live[key] = (str(func), n); self.total += n
                if self.total > self.peak:
                    self.peak = self.total
                    self.at_peak = sorted(self.live.values(), key=lambda r: -r[1])[:14]
                def fin(k=key, n=n):
                    if k in self.live: self.live.pop(k); self.total -= n
                weakref.finalize(st, fin)
        return out

B, T = int(sys.argv[1]), int(sys.argv[2])
block = RATBlock(Params(heads=16, head_dim=128, chunk_size=16, qk_groups=2, backend="triton"),
                 ModelConfig(d_model=2048, vocab_size=8, dtype="bfloat16")).to("cuda", torch.bfloat16)
block.select_backend(torch.device("cuda"))
x = torch.randn(B, T, 2048, device="cuda", dtype=torch.bfloat16, requires_grad=True)
dout = torch.randn(B, T, 2048, device="cuda", dtype=torch.bfloat16)
def former():
    z, q, k, v, gl = block.project(x)
    return block.output(z, block._core(q, k, v, gl, block.gate_bias, 16, True, ROPE_THETA))
for name, fn in (("gated", lambda: block(x)), ("former", former)):
    fn().backward(dout)  # autotuning
    x.grad = None
    for p in block.parameters(): p.grad = None
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    m = Live()
    with m:
        fn().backward(dout)
    torch.cuda.synchronize()
    print(f"{name}: allocator peak above start {(torch.cuda.max_memory_allocated() - base) / 2**30:.3f} GiB; tracked peak {m.peak / 2**30:.3f} GiB")
    for op, n in m.at_peak:
        print(f"    {n / 2**30:7.3f}  {op}")
    x.grad = None
    for p in block.parameters(): p.grad = None
