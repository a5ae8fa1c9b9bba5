"""The RAT backward scan's program shape (channels of each RoPE half per program, warps) at
16 x 16384, paper setup, bf16: each choice's kernel time, then the rat block's train step at
64 x 4096 and 16 x 16384 with the default and with the fastest choice, interleaved rounds
in one process, and the gradients of the two against each other."""
import json, statistics, sys, torch
from triton.testing import do_bench
from archlab.blocks.base import ModelConfig
from archlab.blocks.rat import Params
from archlab.blocks.rat.layer import RATBlock
from archlab.kernels.rat import triton_attention as attn, triton_scan as scan

H, D, G, L = 16, 128, 2, 16
CHOICES = [(16, 2), (16, 1), (8, 1), (8, 2), (32, 2), (32, 1), (16, 4), (64, 4)]
res = {"choices": {}}

def set_choice(c):
    scan.CHANNEL_BLOCK, scan.CHANNEL_WARPS = c

B, T = 16, 16384
torch.manual_seed(0)
bf = torch.bfloat16
proj = torch.randn(B, T, (3 * H + 2 * G) * D, device="cuda", dtype=bf)
z, v, gl, q, k = proj.split([H * D, H * D, H * D, G * D, G * D], dim=-1)
q, k = q.unflatten(-1, (G, D)), k.unflatten(-1, (G, D))
v, gl = v.unflatten(-1, (H, D)), gl.unflatten(-1, (H, D))
bias = torch.randn(H * D, device="cuda", dtype=bf)
q_rot, v_run, s_self, k_end, v_end = scan.scan_forward(q, k, v, gl, bias, L, True, 1e4)
y, lse = attn.attention_forward(q_rot, k_end, v_end, v_run, s_self, L, bf)
dy = torch.randn_like(y)
delta = attn.attention_delta(y, dy)
dke, dve, dqi = attn.attention_backward(q_rot, k_end, v_end, dy, lse, delta, L)
call = lambda: scan.scan_backward(q, k, v, gl, bias, s_self, dy, lse, delta, dke, dve, dqi, L, True, 1e4)
set_choice(CHOICES[0]); ref = [t.float() for t in call()]
for c in CHOICES:
    set_choice(c)
    try:
        out = [t.float() for t in call()]
        err = max(((a - b).norm() / b.norm()).item() for a, b in zip(out, ref))
        ms = do_bench(call, rep=100, return_mode="median")
        res["choices"][str(c)] = {"ms": ms, "max_rel_diff_vs_default": err}
    except Exception as e:  # noqa: BLE001
        res["choices"][str(c)] = {"error": str(e)[:200]}
    print(c, res["choices"][str(c)], flush=True)
ok = {k: v for k, v in res["choices"].items() if "ms" in v}
best = min(ok, key=lambda k: ok[k]["ms"])
res["best"] = best
best = tuple(int(x) for x in best.strip("()").split(","))
del proj, q_rot, v_run, s_self, k_end, v_end, y, dy, dke, dve, dqi
torch.cuda.empty_cache()

block = RATBlock(Params(heads=16, head_dim=128, chunk_size=16, qk_groups=2, backend="triton"),
                 ModelConfig(d_model=2048, vocab_size=8, dtype="bfloat16")).to("cuda", bf)
block.select_backend(torch.device("cuda"))
res["layer_train_ms"] = {}
for B, T in ((64, 4096), (16, 16384)):
    x = torch.randn(B, T, 2048, device="cuda", dtype=bf, requires_grad=True)
    dout = torch.randn(B, T, 2048, device="cuda", dtype=bf)
    params = [x, *block.parameters()]
    def step():
        block(x).backward(dout)
    grads = {}
    for c in (CHOICES[0], best):
        set_choice(c)
        for p in params: p.grad = None
        step()
        grads[c] = [p.grad.float().clone() for p in params]
    diff = max(((a - b).norm() / b.norm()).item() for a, b in zip(grads[CHOICES[0]], grads[best]))
    times = {str(CHOICES[0]): [], str(best): []}
    for _ in range(5):
        for c in (CHOICES[0], best):
            set_choice(c)
            times[str(c)].append(do_bench(step, grad_to_none=params, rep=200, return_mode="median"))
    res["layer_train_ms"][f"{B}x{T}"] = {"rounds": times, "median": {k: statistics.median(v) for k, v in times.items()}, "grad_rel_diff": diff}
    print(B, T, res["layer_train_ms"][f"{B}x{T}"]["median"], "grad diff", diff, flush=True)
    del x, dout, grads
    torch.cuda.empty_cache()
set_choice(CHOICES[0])
print(json.dumps(res))
