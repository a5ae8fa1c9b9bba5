"""Time RAT's three attention kernels (forward, dK/dV, dQ) at every tile of a candidate list,
each beside the autotuned default on the same inputs; writes JSON.

    python3 benchmarks/rat_attention_tiles.py --out DIR [--shapes 16x16384,2x131072]

Setup of the RAT paper (16 heads of 128, qk_groups 2, chunk 16, bf16, 262,144 tokens). A
tile is (BM, BN, warps, stages) as in `kernels/rat/triton_attention.py`: for the forward
and dQ kernels BM query rows per program and BN chunk ends per iteration; for dK/dV BN
chunk ends per program and BM query rows per iteration. Each kernel's autotuner is given
one tile at a time (its cache cleared), so a tile runs through the real launcher. Times are
medians of triton.testing.do_bench; `max_err` is the largest absolute difference from the
default's output (a tile that computes something else shows here); a tile that fails to
compile or runs out of resources is reported with its error.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

from archlab.kernels.rat import triton_attention as attn
from archlab.kernels.rat import triton_scan

H, D, G, L = 16, 128, 2, 16
# fmt: off
FWD = [(128, 64, 8, 3), (128, 128, 8, 2), (128, 128, 8, 3), (128, 64, 4, 3), (128, 64, 4, 4),
       (64, 128, 4, 3), (64, 64, 4, 3), (64, 64, 4, 4), (128, 32, 4, 4), (256, 64, 8, 3),
       (128, 64, 8, 4), (64, 128, 8, 3), (64, 64, 8, 3), (128, 32, 8, 3)]
DKV = [(64, 64, 8, 3), (64, 64, 8, 2), (32, 64, 4, 3), (64, 128, 8, 2), (32, 128, 8, 3),
       (32, 128, 4, 3), (64, 128, 8, 3), (128, 128, 8, 2), (128, 64, 8, 2), (32, 64, 4, 4),
       (64, 64, 4, 3), (16, 128, 4, 3), (32, 128, 8, 4), (128, 64, 8, 3), (64, 128, 4, 2)]
DQ = [(64, 64, 4, 3), (64, 64, 8, 3), (64, 128, 8, 2), (64, 32, 8, 3), (128, 64, 8, 3),
      (128, 64, 8, 2), (128, 32, 8, 3), (128, 128, 8, 2), (64, 64, 4, 4), (64, 32, 4, 3),
      (128, 32, 4, 3), (128, 64, 4, 3), (64, 128, 4, 3), (32, 64, 4, 3)]
# fmt: on
KERNELS = {"fwd": (attn.fwd_tuned, FWD), "dkv": (attn.dkv_tuned, DKV), "dq": (attn.dq_tuned, DQ)}


def inputs(B: int, T: int):
    """The attention's inputs as the scan's forward makes them, and dy, lse, delta."""
    torch.manual_seed(0)
    dev, bf = "cuda", torch.bfloat16
    q = torch.randn(B, T, G, D, device=dev, dtype=bf)
    k = torch.randn(B, T, G, D, device=dev, dtype=bf)
    v = torch.randn(B, T, H, D, device=dev, dtype=bf)
    gl = torch.randn(B, T, H, D, device=dev, dtype=bf)
    bias = torch.randn(H * D, device=dev, dtype=bf)
    q_rot, v_run, s_self, k_end, v_end = triton_scan.scan_forward(q, k, v, gl, bias, L, True, 1e4)
    y, lse = attn.attention_forward(q_rot, k_end, v_end, v_run, s_self, L, bf)
    dy = torch.randn_like(y)
    delta = attn.attention_delta(y, dy)
    return q_rot, v_run, s_self, k_end, v_end, dy, lse, delta


def runner(name: str, x):
    """The call that runs kernel `name` (the backward runs both of its kernels; the other
    one keeps its autotuned tile) and the output that kernel writes."""
    q_rot, v_run, s_self, k_end, v_end, dy, lse, delta = x
    if name == "fwd":
        return lambda: attn.attention_forward(
            q_rot, k_end, v_end, v_run, s_self, L, torch.bfloat16
        )[0]
    pick = 0 if name == "dkv" else 2
    return lambda: attn.attention_backward(q_rot, k_end, v_end, dy, lse, delta, L)[pick]


def one_kernel(name: str, x, rep: int) -> dict:
    tuned, tiles = KERNELS[name]
    call = runner(name, x)
    saved = tuned.configs
    base = call().float()
    default = str(tuned.best_config)
    rows = [
        {"tile": "default", "config": default, "ms": do_bench(call, rep=rep, return_mode="median")}
    ]
    for bm, bn, warps, stages in tiles:
        row = {"tile": [bm, bn, warps, stages]}
        tuned.configs = [triton.Config({"BM": bm, "BN": bn}, num_warps=warps, num_stages=stages)]
        tuned.cache = {}
        try:
            row["max_err"] = (call().float() - base).abs().max().item()
            row["ms"] = do_bench(call, rep=rep, return_mode="median")
        except Exception as e:  # noqa: BLE001  (a tile that cannot run is a result)
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"
        rows.append(row)
        print(name, row, flush=True)
    tuned.configs, tuned.cache = saved, {}
    call()  # the default tile again, for the next kernel's runs
    return {"default": default, "tiles": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--shapes", default="16x16384,2x131072")
    ap.add_argument("--kernels", default="fwd,dkv,dq")
    ap.add_argument("--rep", type=int, default=60, help="do_bench's rep (ms)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("rat_attention_tiles.py times the Triton kernels on a CUDA GPU; there is none here")
        return 2
    report = {
        "command": "python3 " + " ".join(sys.argv),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "shapes": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "rat_attention_tiles.json"
    for shape in args.shapes.split(","):
        B, T = map(int, shape.split("x"))
        x = inputs(B, T)
        entry = {"B": B, "T": T, "kernels": {}}
        report["shapes"].append(entry)
        for name in args.kernels.split(","):
            entry["kernels"][name] = one_kernel(name, x, args.rep)
            rows = [r for r in entry["kernels"][name]["tiles"] if "ms" in r]
            best = min(rows, key=lambda r: r["ms"])
            print(f"{B}x{T} {name}: default {rows[0]['ms']:.3f} ms, best {best}", flush=True)
            path.write_text(json.dumps(report, indent=1))
        del x
        torch.cuda.empty_cache()
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
