"""Peak memory and time of one RAT block's train step at 16 x 16384 (bf16, d_model 2048): the
gated op on the whole projection (the block's triton forward now) against the former
composition (the core op on the split projection, then sigmoid(z) * y in PyTorch), same
block and weights, one process. Also the gradients of the two paths against each other."""
import json, sys, torch
from triton.testing import do_bench
from archlab.blocks.base import ModelConfig
from archlab.blocks.rat import Params
from archlab.blocks.rat.layer import RATBlock, ROPE_THETA

B, T = int(sys.argv[1]), int(sys.argv[2])
block = RATBlock(Params(heads=16, head_dim=128, chunk_size=16, qk_groups=2, backend="triton"),
                 ModelConfig(d_model=2048, vocab_size=8, dtype="bfloat16"))
block = block.to("cuda", torch.bfloat16)
block.select_backend(torch.device("cuda"))
x = torch.randn(B, T, 2048, device="cuda", dtype=torch.bfloat16, requires_grad=True)
dout = torch.randn(B, T, 2048, device="cuda", dtype=torch.bfloat16)

def former():
    z, q, k, v, gl = block.project(x)
    y = block._core(q, k, v, gl, block.gate_bias, 16, True, ROPE_THETA)
    return block.output(z, y)

res = {"B": B, "T": T}
grads = {}
for name, fn in (("gated", lambda: block(x)), ("former", former)):
    def step():
        fn().backward(dout)
    for p in (x, *block.parameters()):
        p.grad = None
    step()
    grads[name] = [p.grad.float().clone() for p in (x, block.in_proj.weight, block.gate_bias)]
    for p in (x, *block.parameters()):
        p.grad = None
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    res[f"{name}_peak_GiB_above_start"] = (torch.cuda.max_memory_allocated() - base) / 2**30
    for p in (x, *block.parameters()):
        p.grad = None
    res[f"{name}_train_ms"] = do_bench(step, grad_to_none=[x, *block.parameters()], rep=200, return_mode="median")
res["grad_rel_diff"] = [((a - b).norm() / b.norm()).item() for a, b in zip(grads["gated"], grads["former"])]
print(json.dumps(res))
