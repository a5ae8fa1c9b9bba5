"""Time one decode step's attention: the Triton kernel against torch's sdpa; writes JSON.

    python benchmarks/decode_attention.py --out results/decode_attention.json   # on a GPU
    python benchmarks/decode_attention.py --sweep --out ...                     # + the tiles
    python benchmarks/decode_attention.py --small                               # CPU smoke run

One query per head against a cache [B, S, K, D] of which `length` slots are read, the
attention block's layout (kernels/attention_decode.py). Variants: `triton`
(`decode_attention`), `sdpa` (torch's own choice of kernel, on the cache slice as the
block's decode step ran it before), sdpa held to one backend each (`sdpa_cudnn`,
`sdpa_flash`, `sdpa_efficient`; a backend that refuses the shape is reported as its
error), and `sdpa_masked` / `sdpa_masked_cudnn`: sdpa over the length rounded up to a
multiple of BUCKET with the rest masked (one shape per BUCKET steps). Cache lengths come
in pairs, a multiple of 64 and one past it. Times: medians of `triton.testing.do_bench`
(wall-clock medians on the CPU, under TRITON_INTERPRET=1); GB/s counts the keys and values
read (2 x B x K x length x D elements); `rel_err`: the relative error against float32
attention over the first 8 rows. On a GPU `fresh_lengths_ms` is the mean time of a call at
a cache length not run before (cuDNN builds a plan per shape: a generation pays it at every
step). `--sweep` times the Triton kernel at every tile of SWEEP on the first five cases.
`--stages` times the default tile at each of STAGES' pipeline stage counts beside cuDNN at
long caches (LONG_CASES), in interleaved rounds so that drift touches every variant alike.

JSON: {command, date, device, torch, triton, dtype, rows: [{case, B, H, K, D, S, length,
variants: {name: {ms, GBps, rel_err[, fresh_lengths_ms]} or {error}}}], sweep: [{case,
length, tiles: [{block_n, warps, stages, programs_per_sm, ms or error}]}], stages: [{case,
B, length, rounds, ms: {variant: [ms per round]}, median_ms: {variant: ms}}]}.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():  # before any Triton kernel is decorated
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from torch.nn.attention import SDPBackend, sdpa_kernel  # noqa: E402

from archlab.blocks.attention import common  # noqa: E402
from archlab.kernels import attention_decode  # noqa: E402
from archlab.kernels.attention_decode import (  # noqa: E402
    decode_attention,
    decode_attention_reference,
)

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
    # the same reads from caches of other capacities: a batch stride that is a power of two
    # (16 MiB here) or not, and Table 1's rows at the peers' batch
    ("table1 S+64", 176, 16, 16, 128, 4160, (3137,)),
    ("table1 B512", 512, 16, 16, 128, 4096, (3137,)),
    ("peers 4K S", 512, 16, 16, 128, 4096, (4096,)),
]
SMALL = [("small", 2, 4, 2, 16, 80, (64, 65))]
SDPA_ALL = [
    SDPBackend.CUDNN_ATTENTION,
    SDPBackend.FLASH_ATTENTION,
    SDPBackend.EFFICIENT_ATTENTION,
    SDPBackend.MATH,
]
BUCKET = 256  # sdpa_masked's rounding of the cache length
# --sweep: the Triton kernel's tiles (attention_decode.Tile: keys per iteration, warps,
# stages, programs per SM)
SWEEP = [(bn, w, st, ps) for bn in (64, 128) for w in (2, 4, 8) for st in (2, 3) for ps in (4, 16)]
SWEEP_CASES = CASES[:5]
# --stages: (case, B, H, K, D, S, length); 128 rows at 64K slots fill 69 GB of cache
LONG_CASES = [
    ("peers 16K", 512, 16, 16, 128, 16385, 16385),
    ("64K", 128, 16, 16, 128, 65537, 65537),
]
STAGES = (2, 3, 4)
SDPA = {
    "sdpa": None,
    "sdpa_cudnn": SDPBackend.CUDNN_ATTENTION,
    "sdpa_flash": SDPBackend.FLASH_ATTENTION,
    "sdpa_efficient": SDPBackend.EFFICIENT_ATTENTION,
}


def sdpa_step(q, k_cache, v_cache, length, backend):
    """The block's former decode attention (`common.sdpa_attention` on the cache slice),
    held to `backend` when one is given; [B, H, D] out."""
    args = (q[:, None], k_cache[:, :length], v_cache[:, :length])
    with sdpa_kernel(backend) if backend is not None else contextlib.nullcontext():
        return common.sdpa_attention(*args)[:, 0]


def masked_step(q, k_cache, v_cache, length, backend):
    """sdpa over the length rounded up to a multiple of BUCKET (at most the cache), the
    slots past `length` masked: one shape per BUCKET steps of a generation."""
    padded = min(k_cache.shape[1], -(-length // BUCKET) * BUCKET)
    mask = torch.zeros(1, 1, 1, padded, device=q.device, dtype=q.dtype)
    mask[..., length:] = float("-inf")
    k, v = k_cache[:, :padded].transpose(1, 2), v_cache[:, :padded].transpose(1, 2)
    gqa = q.shape[1] != k.shape[1]
    with sdpa_kernel(backend or SDPA_ALL):
        y = F.scaled_dot_product_attention(q[:, :, None], k, v, attn_mask=mask, enable_gqa=gqa)
    return y[:, :, 0]


def fresh_lengths_ms(fn, length: int, calls: int = 24) -> float:
    """Mean time of `calls` calls at lengths never run before (length - 1, length - 2, ...):
    what a generation pays when every step has a new cache length."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(1, calls + 1):
        fn(length - i)
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e3


def sweep_case(B, H, K, D, S, length, dtype) -> list[dict]:
    """The Triton kernel at every tile of SWEEP (ms, or the error)."""
    q = torch.randn(B, H, D, device="cuda", dtype=dtype)
    k_cache = torch.randn(B, S, K, D, device="cuda", dtype=dtype)
    v_cache = torch.randn(B, S, K, D, device="cuda", dtype=dtype)
    saved, rows = attention_decode.GPU_TILE, []
    for block_n, warps, stages, per_sm in SWEEP:
        attention_decode.GPU_TILE = attention_decode.Tile(block_n, warps, stages, per_sm, stages)
        row = {"block_n": block_n, "warps": warps, "stages": stages, "programs_per_sm": per_sm}
        try:
            row["ms"] = median_ms(lambda: decode_attention(q, k_cache, v_cache, length), True, 10)
        except Exception as e:  # noqa: BLE001  (a tile that does not compile is a result)
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
        rows.append(row)
    attention_decode.GPU_TILE = saved
    return rows


def stages_case(B, H, K, D, S, length, dtype, rounds: int = 5) -> dict:
    """The default tile at each of STAGES and sdpa held to cuDNN, `rounds` interleaved
    rounds of do_bench medians (ms per round and variant)."""
    q = torch.randn(B, H, D, device="cuda", dtype=dtype)
    k_cache = torch.randn(B, S, K, D, device="cuda", dtype=dtype)
    v_cache = torch.randn(B, S, K, D, device="cuda", dtype=dtype)
    saved = attention_decode.GPU_TILE

    def triton_at(stages):
        def call():
            attention_decode.GPU_TILE = dataclasses.replace(
                saved, stages=stages, long_stages=stages
            )
            try:
                return decode_attention(q, k_cache, v_cache, length)
            finally:
                attention_decode.GPU_TILE = saved

        return call

    fns = {f"triton_{st}_stages": triton_at(st) for st in STAGES}
    fns["sdpa_cudnn"] = lambda: sdpa_step(q, k_cache, v_cache, length, SDPA["sdpa_cudnn"])
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(median_ms(fn, True, 10))
    return {
        "B": B,
        "length": length,
        "rounds": rounds,
        "ms": times,
        "median_ms": {name: statistics.median(ms) for name, ms in times.items()},
    }


def run_case(case, B, H, K, D, S, length, cuda: bool, dtype) -> dict:
    dev = "cuda" if cuda else "cpu"
    q = torch.randn(B, H, D, device=dev, dtype=dtype)
    k_cache = torch.randn(B, S, K, D, device=dev, dtype=dtype)
    v_cache = torch.randn(B, S, K, D, device=dev, dtype=dtype)
    ref = decode_attention_reference(q[:8], k_cache[:8], v_cache[:8], length)  # errors over 8 rows
    gbytes = 2 * B * K * length * D * k_cache.element_size() / 1e9
    fns = {"triton": lambda: decode_attention(q, k_cache, v_cache, length)}
    for name, backend in SDPA.items():
        fns[name] = lambda b=backend: sdpa_step(q, k_cache, v_cache, length, b)
    fns["sdpa_masked"] = lambda: masked_step(q, k_cache, v_cache, length, None)
    fns["sdpa_masked_cudnn"] = lambda: masked_step(
        q, k_cache, v_cache, length, SDPBackend.CUDNN_ATTENTION
    )
    variants = {}
    for name, fn in fns.items():
        try:
            y = fn()
            err = ((y[:8].float() - ref).norm() / ref.norm()).item()
            ms = median_ms(fn, cuda, reps=20 if cuda else 3)
            variants[name] = {"ms": ms, "GBps": gbytes / (ms / 1e3), "rel_err": err}
        except Exception as e:  # noqa: BLE001  (a backend refusing the shape is a result)
            variants[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"}
    if cuda:  # each call at a cache length not seen before, as in a generation
        for name, fn in (
            ("triton", lambda n: decode_attention(q, k_cache, v_cache, n)),
            ("sdpa", lambda n: sdpa_step(q, k_cache, v_cache, n, None)),
            ("sdpa_masked", lambda n: masked_step(q, k_cache, v_cache, n, None)),
        ):
            if "ms" in variants[name]:
                variants[name]["fresh_lengths_ms"] = fresh_lengths_ms(fn, length)
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
    parser.add_argument("--sweep", action="store_true", help="also time every tile of SWEEP")
    parser.add_argument("--only-sweep", action="store_true", help="the sweep, not the rows")
    parser.add_argument(
        "--stages", action="store_true", help="only the stage counts beside cuDNN, long caches"
    )
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.small
    dtype = torch.bfloat16 if cuda else torch.float32
    rows = []
    names = ["triton", *SDPA, "sdpa_masked", "sdpa_masked_cudnn"]
    args.sweep |= args.only_sweep
    only = args.only_sweep or args.stages
    if not only:
        print("case          B     length  " + "  ".join(f"{n:>14}" for n in names) + "  (ms)")
    stages = []
    if args.stages and not cuda:
        print("--stages times long caches on a GPU: nothing to time here")
    for case, B, H, K, D, S, length in LONG_CASES if cuda and args.stages else []:
        stages.append({"case": case, **stages_case(B, H, K, D, S, length, dtype)})
        print(f"stages {case}: {stages[-1]['median_ms']}", flush=True)
        torch.cuda.empty_cache()
    for case, B, H, K, D, S, lengths in [] if only else CASES if cuda else SMALL:
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
    sweep = []
    for case, B, H, K, D, S, lengths in SWEEP_CASES if cuda and args.sweep else []:
        tiles = sweep_case(B, H, K, D, S, lengths[-1], dtype)
        sweep.append({"case": case, "length": lengths[-1], "tiles": tiles})
        best = min((r for r in tiles if "ms" in r), key=lambda r: r["ms"], default=None)
        print(f"sweep {case}: best {best}", flush=True)
        torch.cuda.empty_cache()
    result = {
        "command": " ".join(["python", sys.argv[0], *(sys.argv[1:] if argv is None else argv)]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dtype": str(dtype).removeprefix("torch."),
        "rows": rows,
        "sweep": sweep,
        "stages": stages,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
