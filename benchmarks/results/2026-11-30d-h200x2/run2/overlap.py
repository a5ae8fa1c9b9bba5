"""Can a layer's memory-bound decode attention and compute-bound GEMMs overlap on two CUDA
streams? Half of Table 1's RAT batch (1448 of 2896) per stream: attention over 224 cached
chunk ends (archlab's decode_attention kernel standing in for RAT's, same read pattern),
and one RAT+MLP layer's GEMMs (in 4608, out 2048, MLP 8192 GELU). Times: do_bench medians."""
import json, sys, torch, torch.nn.functional as F
from triton.testing import do_bench
from archlab.kernels.attention_decode import decode_attention
dev, bf = "cuda", torch.bfloat16
B, H, D, S, L, DM = 1448, 16, 128, 256, 224, 2048
mk = lambda *s: torch.randn(*s, device=dev, dtype=bf) * 0.05
q, kc, vc = mk(B, H, D), mk(B, S, H, D), mk(B, S, H, D)
q2, kc2, vc2 = mk(B, H, D), mk(B, S, H, D), mk(B, S, H, D)
x, x2 = mk(B, DM), mk(B, DM)
w_in, w_o, w1, w2 = mk(4608, DM), mk(DM, DM), mk(4 * DM, DM), mk(DM, 4 * DM)
def attn(a=(q, kc, vc)): return decode_attention(a[0], a[1], a[2], L)
def gemm(xx=x): return F.gelu((xx @ w_in.T)[:, :DM] @ w_o.T @ w1.T) @ w2.T
s1, s2 = torch.cuda.Stream(), torch.cuda.Stream()
hi = torch.cuda.Stream(priority=-1)
def two(f, g, sa=s1, sb=s2):
    cur = torch.cuda.current_stream()
    sa.wait_stream(cur); sb.wait_stream(cur)
    with torch.cuda.stream(sa): f()
    with torch.cuda.stream(sb): g()
    cur.wait_stream(sa); cur.wait_stream(sb)
def pipeline(n=24):  # two half batches, each layer: attn then gemm, offset by half a layer
    cur = torch.cuda.current_stream()
    s1.wait_stream(cur); s2.wait_stream(cur)
    with torch.cuda.stream(s2): gemm(x2)
    for _ in range(n):
        with torch.cuda.stream(s1): attn(); gemm()
        with torch.cuda.stream(s2): attn((q2, kc2, vc2)); gemm(x2)
    cur.wait_stream(s1); cur.wait_stream(s2)
def serial(n=24):
    for _ in range(n):
        attn(); gemm(); attn((q2, kc2, vc2)); gemm(x2)
res = {}
for name, fn in [("attn", attn), ("gemm", gemm), ("attn+gemm serial", lambda: (attn(), gemm())),
                 ("attn || gemm (2 streams)", lambda: two(attn, gemm)),
                 ("attn || gemm (gemm high priority)", lambda: two(attn, gemm, s1, hi)),
                 ("attn || attn", lambda: two(attn, lambda: attn((q2, kc2, vc2)))),
                 ("24 layers x 2 halves serial", serial),
                 ("24 layers x 2 halves on 2 streams", pipeline)]:
    res[name] = do_bench(fn, warmup=50, rep=300, return_mode="median")
    print(f"{name:40s} {res[name]:8.3f} ms", flush=True)
gb = 2 * B * L * H * D * 2 / 1e9
print(f"attention reads {gb:.2f} GB: {gb / res['attn'] * 1e3:.0f} GB/s")
json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "ms": res,
           "attn_GBps": gb / res["attn"] * 1e3}, open(sys.argv[1], "w"), indent=1)
