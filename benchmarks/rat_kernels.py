"""Check and time RAT's Triton kernels on a GPU; writes one JSON file.

    python3 benchmarks/rat_kernels.py --out DIR [--sections ceil,check,train,decode]
    (benchmarks/compile_check.py gives the sm_90 register report without a GPU)

Setup of the RAT paper: d_model 2048, 16 heads of 128, qk_groups 2, chunk 16, bf16,
262,144 tokens per batch (64x4096, 16x16384, 4x65536, 2x131072). Inputs are strided views
into one projection output (z, v, g, q, k). Times are medians of triton.testing.do_bench;
decode runs one step at batch 512 replayed from a CUDA graph. FLOPs: 4*D per scored
(query, key) pair per head (forward), twice that for the backward; minimal bytes: every
input read once and every output written once.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import sys
import time
import traceback
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

from archlab.kernels.rat import triton_attention, triton_decode, triton_scan
from archlab.kernels.rat.shapes import scored_pairs
from archlab.kernels.rat.triton_ops import rat_core_triton, rat_decode_triton

H, D, G, L = 16, 128, 2, 16
WIDTH = 3 * H * D + 2 * G * D
PAPER_TRAIN_MS = {4096: 129.9, 16384: 137.7, 65536: 167.7, 131072: 206.2}  # whole layer
PAPER_PREFILL_MS = {4096: 36.6, 16384: 39.3, 65536: 48.0, 131072: 58.7}
PAPER_DECODE_MS = {4096: 0.94, 16384: 1.18, 65536: 4.00}
DECODE_BATCH = 512


def median_ms(fn, **kw):
    return do_bench(
        fn, warmup=kw.pop("warmup", 25), rep=kw.pop("rep", 100), return_mode="median", **kw
    )


def views(proj):
    """q, k, v, gate logits as slices of the projection (each slice's backward fills a
    zeroed projection-sized gradient, and autograd adds them up)."""
    HD, GD = H * D, G * D
    v = proj[..., HD : 2 * HD].unflatten(-1, (H, D))
    gl = proj[..., 2 * HD : 3 * HD].unflatten(-1, (H, D))
    q = proj[..., 3 * HD : 3 * HD + GD].unflatten(-1, (G, D))
    k = proj[..., 3 * HD + GD :].unflatten(-1, (G, D))
    return q, k, v, gl


def split_views(proj):
    """The same tensors through one `split`, as the rat block takes them (its backward is
    one concatenation)."""
    HD, GD = H * D, G * D
    _, v, gl, q, k = proj.split([HD, HD, HD, GD, GD], dim=-1)
    return (
        q.unflatten(-1, (G, D)),
        k.unflatten(-1, (G, D)),
        v.unflatten(-1, (H, D)),
        gl.unflatten(-1, (H, D)),
    )


# (channels per program, warps) of the backward scan, and (BLOCK_N, warps, stages) of the
# decode kernel, timed against the defaults
SCAN_BWD_CHOICES = [(16, 4, False), (16, 4, True), (8, 4, True), (16, 2, True), (32, 4, True)]
DECODE_CHOICES = [
    (64, 4, 3),
    (64, 1, 3),
    (32, 1, 3),
    (32, 2, 3),
    (64, 2, 2),
    (64, 2, 4),
    (128, 2, 3),
    (128, 2, 2),
]


def ceilings():
    x = torch.empty(2 * 1024**3 // 2, dtype=torch.bfloat16, device="cuda").normal_()
    y = torch.empty_like(x)
    t = median_ms(lambda: y.copy_(x))
    bw = 2 * x.numel() * 2 / (t * 1e-3)
    t = median_ms(lambda: x.sum(dtype=torch.float32))  # reading alone (decode mostly reads)
    read = x.numel() * 2 / (t * 1e-3)
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = median_ms(lambda: a @ b)
    return {
        "copy_GBps": bw / 1e9,
        "read_GBps": read / 1e9,
        "bf16_matmul_TFLOPs": 2 * 8192**3 / (t * 1e-3) / 1e12,
    }


def check():
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))  # the tests' helpers
    spec = importlib.util.spec_from_file_location(
        "test_rat_triton", Path(__file__).parent.parent / "tests/kernels/test_rat_triton.py"
    )
    tests = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tests)
    out = {}
    for case in [
        (1, 4096, H, G, D, L, True),
        (2, 1000, H, G, D, 64, True),
        (1, 700, H, G, D, 128, True),
        (1, 300, H, G, D, 1000, True),
    ]:
        got, ref, low = tests.run_both(*case, torch.bfloat16, "cuda", seed=case[1])
        errs, bad = tests.bf16_rule(got, ref, low)  # the GPU test's own rule
        out["core B,T,H,G,D,L,rope=" + ",".join(map(str, case))] = {
            "pass": not bad,
            "rel_l2 (kernel, reference on bf16 inputs)": errs,
        }
    for T_prompt, tp, ns in [(64, False, None), (65, True, None), (79, True, 4)]:
        err = tests._decode_case("cuda", torch.float32, 3, H, G, D, L, T_prompt, 20, tp, ns)
        out[f"decode prompt={T_prompt} tensor_pos={tp} splits={ns}"] = {
            "max_abs_err": err,
            "pass": err < 1e-4,
        }
    return out


def train_case(B, T, ceil, sweep=False):
    torch.manual_seed(0)
    proj = torch.randn(B, T, WIDTH, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(H * D, device="cuda", dtype=torch.bfloat16)
    dy = torch.randn(B, T, H, D, device="cuda", dtype=torch.bfloat16)
    q, k, v, gl = views(proj)
    res = {"B": B, "T": T}
    with torch.no_grad():
        res["fwd_ms"] = median_ms(lambda: rat_core_triton(q, k, v, gl, bias, L))
    proj_g = proj.clone().requires_grad_()
    bias_g = bias.clone().requires_grad_()

    def fwd_bwd():
        qq, kk, vv, gg = views(proj_g)
        rat_core_triton(qq, kk, vv, gg, bias_g, L).backward(dy)

    res["fwd_bwd_ms"] = median_ms(fwd_bwd, grad_to_none=[proj_g, bias_g])

    def fwd_bwd_split():
        qq, kk, vv, gg = split_views(proj_g)
        rat_core_triton(qq, kk, vv, gg, bias_g, L).backward(dy)

    res["fwd_bwd_split_ms"] = median_ms(fwd_bwd_split, grad_to_none=[proj_g, bias_g])
    # the parts, on the same inputs
    with torch.no_grad():
        parts = {}
        parts["scan_fwd"] = median_ms(
            lambda: triton_scan.scan_forward(q, k, v, gl, bias, L, True, 10000.0)
        )
        q_rot, v_run, s_self, k_end, v_end = triton_scan.scan_forward(
            q, k, v, gl, bias, L, True, 10000.0
        )
        parts["attn_fwd"] = median_ms(
            lambda: triton_attention.attention_forward(
                q_rot, k_end, v_end, v_run, s_self, L, torch.bfloat16
            )
        )
        y, lse = triton_attention.attention_forward(
            q_rot, k_end, v_end, v_run, s_self, L, torch.bfloat16
        )
        parts["delta"] = median_ms(lambda: triton_attention.attention_delta(y, dy))
        delta = triton_attention.attention_delta(y, dy)
        parts["attn_bwd"] = median_ms(
            lambda: triton_attention.attention_backward(q_rot, k_end, v_end, dy, lse, delta, L)
        )
        dke, dve, dqi = triton_attention.attention_backward(q_rot, k_end, v_end, dy, lse, delta, L)
        parts["scan_bwd"] = median_ms(
            lambda: triton_scan.scan_backward(
                q, k, v, gl, bias, s_self, dy, lse, delta, dke, dve, dqi, L, True, 10000.0
            )
        )
        knobs = ("CHANNEL_BLOCK", "CHANNEL_WARPS", "CHANNEL_MAJOR")
        default = [getattr(triton_scan, n) for n in knobs]
        for choice in SCAN_BWD_CHOICES if sweep else []:
            for n, val in zip(knobs, choice, strict=True):
                setattr(triton_scan, n, val)
            block, warps, major = choice
            order = "channel_major" if major else "segment_major"
            parts[f"scan_bwd_channels{block}_warps{warps}_{order}"] = median_ms(
                lambda: triton_scan.scan_backward(
                    q, k, v, gl, bias, s_self, dy, lse, delta, dke, dve, dqi, L, True, 10000.0
                )
            )
        for n, val in zip(knobs, default, strict=True):
            setattr(triton_scan, n, val)
        parts["scan_ds"] = median_ms(lambda: scan_ds_only(v, gl, bias, s_self, dy, lse, delta))
        res["parts_ms"] = parts
    res["autotuned"] = {
        name: str(fn.best_config)
        for name, fn in (
            ("attn_fwd", triton_attention.fwd_tuned),
            ("attn_dkv", triton_attention.dkv_tuned),
            ("attn_dq", triton_attention.dq_tuned),
        )
        if getattr(fn, "best_config", None)
    }
    flops_fwd = 4 * D * H * B * scored_pairs(T, L)
    in_bytes = B * T * (2 * G * D + 2 * H * D) * 2
    out_bytes = B * T * H * D * 2
    bytes_fwd = in_bytes + out_bytes
    bytes_bwd = in_bytes + 2 * out_bytes + in_bytes  # + y and dy read, grads written
    res["flops_fwd"] = flops_fwd
    res["flops_fwd_bwd"] = 3 * flops_fwd
    res["min_bytes_fwd"] = bytes_fwd
    res["min_bytes_fwd_bwd"] = bytes_fwd + bytes_bwd
    for tag, fl, by in (
        ("fwd", flops_fwd, bytes_fwd),
        ("fwd_bwd", 3 * flops_fwd, bytes_fwd + bytes_bwd),
    ):
        ms = res[f"{tag}_ms"]
        res[f"{tag}_TFLOPs"] = fl / (ms * 1e-3) / 1e12
        res[f"{tag}_GBps"] = by / (ms * 1e-3) / 1e9
        floor = max(fl / (ceil["bf16_matmul_TFLOPs"] * 1e12), by / (ceil["copy_GBps"] * 1e9))
        res[f"{tag}_floor_ms"] = floor * 1e3
    res["paper_layer_train_ms"] = PAPER_TRAIN_MS.get(T)
    res["paper_layer_prefill_ms"] = PAPER_PREFILL_MS.get(T)
    return res


def scan_ds_only(v, gl, bias, s_self, dy, lse, delta):
    """The backward scan's first pass alone (p and ds), as `scan_backward` launches it."""
    return triton_scan.own_key_grads(v, gl, bias, s_self, dy, lse, delta, L)


def decode_case(B, T, ceil, graph=True, n_splits=None, own_last=False, tile=None):
    torch.manual_seed(0)
    C_max = T // L + 1
    kc = torch.empty(B, C_max, H, D, device="cuda", dtype=torch.bfloat16).normal_()
    vc = torch.empty_like(kc).normal_()
    proj = torch.randn(B, WIDTH, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(H * D, device="cuda", dtype=torch.bfloat16)
    HD, GD = H * D, G * D
    v = proj[:, HD : 2 * HD].unflatten(-1, (H, D))
    gl = proj[:, 2 * HD : 3 * HD].unflatten(-1, (H, D))
    q = proj[:, 3 * HD : 3 * HD + GD].unflatten(-1, (G, D))
    k = proj[:, 3 * HD + GD :].unflatten(-1, (G, D))
    pos = torch.tensor(T, device="cuda")  # T tokens cached: the step reads T // L chunk ends

    default_tile = triton_decode.BLOCK_N, triton_decode.NUM_WARPS, triton_decode.NUM_STAGES
    if tile is not None:
        triton_decode.BLOCK_N, triton_decode.NUM_WARPS, triton_decode.NUM_STAGES = tile
    if n_splits is None and not own_last:

        def step():
            return rat_decode_triton(q, k, v, gl, bias, kc, vc, pos, L)
    else:

        def step():
            return triton_decode.decode_step(
                q, k, v, gl, bias, kc, vc, pos, -1, L, True, 10000.0, n_splits, own_last
            )

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    if graph:
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            step()
        ms = median_ms(g.replay, warmup=50, rep=300)
    else:
        ms = median_ms(step)
    tile_used = triton_decode.BLOCK_N, triton_decode.NUM_WARPS, triton_decode.NUM_STAGES
    triton_decode.BLOCK_N, triton_decode.NUM_WARPS, triton_decode.NUM_STAGES = default_tile
    c = T // L
    read = 2 * B * c * H * D * 2 + B * (2 * G * D + 2 * H * D) * 2
    bound_ms = read / (ceil["copy_GBps"] * 1e9) * 1e3
    res = {
        "B": B,
        "T": T,
        "ms": ms,
        "graph": graph,
        "own_key_last": own_last,
        "tile": dict(zip(("BLOCK_N", "num_warps", "num_stages"), tile_used, strict=True)),
        "n_splits": n_splits or triton_decode.num_splits(B * H, C_max, kc.device, 64),
        "flops": 4 * D * H * B * (c + 1),
        "min_bytes": read,
        "GBps": read / (ms * 1e-3) / 1e9,
        "bound_ms": bound_ms,
        "x_bound": ms / bound_ms,
        "x_read_bound": ms / (read / (ceil.get("read_GBps", ceil["copy_GBps"]) * 1e9) * 1e3),
    }
    if B == DECODE_BATCH and T in PAPER_DECODE_MS:
        res["paper_layer_decode_ms"] = PAPER_DECODE_MS[T]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sections", default="ceil,check,train,decode")
    ap.add_argument("--train", default="64x4096,16x16384,4x65536,2x131072")
    ap.add_argument("--decode-T", default="4096,16384,65536")
    args = ap.parse_args()
    train_shapes = [tuple(map(int, s.split("x"))) for s in args.train.split(",") if s]
    decode_T = [int(t) for t in args.decode_T.split(",") if t]
    sections = args.sections.split(",")
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d")
    report = {
        "command": "python3 " + " ".join(sys.argv),
        "date": date,
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "setup": {"heads": H, "head_dim": D, "qk_groups": G, "chunk": L, "dtype": "bfloat16"},
    }
    path = Path(args.out) / f"rat_kernels_{date}.json"

    def save():
        path.write_text(json.dumps(report, indent=1))

    def section(name, fn):
        t0 = time.time()
        try:
            report[name] = fn()
        except Exception:  # keep what the other sections measure
            report[name] = {"error": traceback.format_exc()[-3000:]}
            print(report[name]["error"], flush=True)
        print(f"[{name}] {time.time() - t0:.1f}s", flush=True)
        save()

    ceil = {"copy_GBps": 4300.0, "bf16_matmul_TFLOPs": 790.0}
    if "ceil" in sections:
        section("ceilings", ceilings)
        if "error" not in report["ceilings"]:
            ceil = report["ceilings"]
    if "check" in sections:
        section("check", check)
    if "train" in sections:
        section(
            "train",
            lambda: [train_case(B, T, ceil, sweep=i == 0) for i, (B, T) in enumerate(train_shapes)],
        )
    if "decode" in sections:
        section(
            "decode",
            lambda: (
                [decode_case(DECODE_BATCH, T, ceil) for T in decode_T]
                + [decode_case(DECODE_BATCH, T, ceil, own_last=True) for T in decode_T]
                + [
                    decode_case(8, max(decode_T), ceil, n_splits=1),
                    decode_case(8, max(decode_T), ceil),
                ]
                + [
                    decode_case(DECODE_BATCH, T, ceil, tile=tile)
                    for T in (min(decode_T), max(decode_T))
                    for tile in DECODE_CHOICES
                ]
            ),
        )
    print(json.dumps(report.get("ceilings", {})))
    for name, val in (report.get("check") or {}).items():
        if isinstance(val, dict):
            print("check", name, "PASS" if val.get("pass") else "FAIL")
    for r in report.get("train", []) if isinstance(report.get("train"), list) else []:
        print(
            f"train B={r['B']} T={r['T']}: fwd {r['fwd_ms']:.2f} ms ({r['fwd_TFLOPs']:.0f} TF/s,"
            f" floor {r['fwd_floor_ms']:.2f}) fwd+bwd {r['fwd_bwd_ms']:.2f} ms "
            f"({r['fwd_bwd_TFLOPs']:.0f} TF/s, floor {r['fwd_bwd_floor_ms']:.2f}; through one "
            f"split {r['fwd_bwd_split_ms']:.2f}) parts "
            + " ".join(f"{k}={v:.2f}" for k, v in r["parts_ms"].items())
        )
    for r in report.get("decode", []) if isinstance(report.get("decode"), list) else []:
        print(
            f"decode B={r['B']} T={r['T']} splits={r['n_splits']}"
            f"{' own key last' if r.get('own_key_last') else ''} tile {tuple(r['tile'].values())}"
            f": {r['ms']:.3f} ms "
            f"({r['GBps']:.0f} GB/s, {r['x_bound']:.2f}x bound {r['bound_ms']:.3f}, "
            f"{r['x_read_bound']:.2f}x the read-only bound)"
        )
    print("wrote", path)


if __name__ == "__main__":
    main()
