"""Time one decode step's attention: the Triton kernel against torch's sdpa; writes JSON.

    python benchmarks/decode_attention.py --out results/decode_attention.json   # on a GPU
    python benchmarks/decode_attention.py --small                               # CPU smoke run

One query per head against a cache [B, S, K, D] of which `length` slots are read, the
attention block's layout (kernels/attention_decode.py). Variants: `triton`
(`decode_attention`), `sdpa` (torch's own choice of kernel, on the cache slice as the
block's decode step ran it before), and sdpa held to one backend each: `sdpa_cudnn`,
`sdpa_flash`, `sdpa_efficient` (a backend that refuses the shape is reported as its error).
Cache lengths come in pairs, a multiple of 64 and one past it: torch's choice changes with
the length. Times: medians of `triton.testing.do_bench` (wall-clock medians on the CPU,
under TRITON_INTERPRET=1); GB/s counts the keys and values read (2 x B x K x length x D
elements). `max_rel_diff`: the largest relative difference of a variant from float32
attention, over the case.

JSON: {command, date, device, torch, triton, rows: [{B, H, K, D, S, length, case,
variants: {name: {ms, GBps, rel_err} or {error}}}]}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():  # before any Triton kernel is decorated
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from archlab.kernels.attention_decode import decode_attention  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks' shared timing
from scan_timing import median_ms  # noqa: E402

# (case, B, H, K, D, S, lengths): Table 1's attention model (prompt 3072, 1024 generated),
# the peers' decode shapes, grouped heads, a sliding window's full ring buffer
CASES = [
    ("table1", 176, 16, 16, 128, 4096, (3136, 3137, 4032, 4033)),
    ("peers 4K", 512, 16, 16, 128, 4097, (4096, 4097)),
    ("peers 16K", 512, 16, 16, 128, 16385, (16384, 16385)),
    ("gqa 32K", 64, 32, 8, 128, 32769, (32768, 32769)),
    ("window 1024", 512, 16, 16, 128, 1024, (1024,)),
]
SMALL = [("small", 2, 4, 2, 16, 80, (64, 65))]
SDPA = {
    "sdpa": None,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def sdpa_step(q, k_cache, v_cache, length, backend):
    """The block's former decode attention: sdpa on the cache slice, [B, H, D] out."""
    k, v = k_cache[:, :length].transpose(1, 2), v_cache[:, :length].transpose(1, 2)
    qh = q[:, :, None]
    gqa = q.shape[1] != k.shape[1]
    if backend is None:
        return F.scaled_dot_product_attention(qh, k, v, enable_gqa=gqa)[:, :, 0]
    with sdpa_kernel(backend):
        return F.scaled_dot_product_attention(qh, k, v, enable_gqa=gqa)[:, :, 0]


def reference(q, k_cache, v_cache, length):
    H, K = q.shape[1], k_cache.shape[2]
    k = k_cache[:, :length].float().repeat_interleave(H // K, dim=2)
    v = v_cache[:, :length].float().repeat_interleave(H // K, dim=2)
    s = torch.einsum("bhd,bshd->bhs", q.float(), k) * q.shape[-1] ** -0.5
    return torch.einsum("bhs,bshd->bhd", s.softmax(-1), v)


def run_case(case, B, H, K, D, S, length, cuda: bool, dtype) -> dict:
    dev = "cuda" if cuda else "cpu"
    q = torch.randn(B, H, D, device=dev, dtype=dtype)
    k_cache = torch.randn(B, S, K, D, device=dev, dtype=dtype)
    v_cache = torch.randn(B, S, K, D, device=dev, dtype=dtype)
    ref = reference(q, k_cache, v_cache, length)
    gbytes = 2 * B * K * length * D * k_cache.element_size() / 1e9
    fns = {"triton": lambda: decode_attention(q, k_cache, v_cache, length)}
    for name, backend in SDPA.items():
        fns[name] = lambda b=backend: sdpa_step(q, k_cache, v_cache, length, b)
    variants = {}
    for name, fn in fns.items():
        try:
            y = fn()
            err = ((y.float() - ref).norm() / ref.norm()).item()
            ms = median_ms(fn, cuda, reps=20 if cuda else 3)
            variants[name] = {"ms": ms, "GBps": gbytes / (ms / 1e3), "rel_err": err}
        except Exception as e:  # noqa: BLE001  (a backend refusing the shape is a result)
            variants[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    return {
        "case": case,
        "B": B,
        "H": H,
        "K": K,
        "D": D,
        "S": S,
        "length": length,
        "variants": variants,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--small", action="store_true", help="tiny CPU shapes")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.small
    dtype = torch.bfloat16 if cuda else torch.float32
    rows = []
    names = ["triton", *SDPA]
    print("case          B     length  " + "  ".join(f"{n:>14}" for n in names) + "  (ms)")
    for case, B, H, K, D, S, lengths in CASES if cuda else SMALL:
        for length in lengths:
            row = run_case(case, B, H, K, D, S, length, cuda, dtype)
            rows.append(row)
            cells = [
                f"{v['ms']:14.4f}" if "ms" in v else f"{'error':>14}"
                for v in row["variants"].values()
            ]
            print(f"{case:12}  {B:4}  {length:7}  " + "  ".join(cells), flush=True)
            if cuda:
                torch.cuda.empty_cache()
    result = {
        "command": " ".join(["python", sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "rows": rows,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
