"""RAT layer benchmark: archlab's `triton` and `flex` RAT backends, attention
(SDPA) and local attention (window of 1024 earlier tokens) as single layers with their
projections, in the RAT paper's efficiency setup, against the paper's published
implementation timed on an H200 (`PUBLISHED` below; docs/rat_kernels.md reads the results).

    python benchmarks/rat_layer.py --out results/rat_layer.json          # on an H200
    python benchmarks/rat_layer.py --small                               # a CPU smoke run

Setup (the paper's): d_model 2048, 16 heads of 128, qk_groups 2, bf16, 262,144 tokens per
batch (64 x 4K ... 2 x 128K); train = forward + backward; prefill = forward; decode = one
step at position T for 512 sequences (CUDA graph). Prints a table with the ratio to the
published figures and achieved TFLOP/s and GB/s against the device's measured peaks, and
writes JSON with the command, device, versions and date. OOM is a result, not a crash.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys

import torch

import archlab
from archlab.measure.profile import LayerTarget, Settings, measure
from archlab.measure.throughput import device_peaks

# The RAT paper's published implementation (each layer with its projections, the setup
# above) timed on one H200, milliseconds.
PUBLISHED = {
    "train": {4096: 129.9, 16384: 137.7, 65536: 167.7, 131072: 206.2},
    "prefill": {4096: 36.6, 16384: 39.3, 65536: 48.0, 131072: 58.7},
    "decode": {4096: 0.94, 16384: 1.18, 65536: 4.00},
}
PUBLISHED_ATTENTION_TRAIN = {4096: 78.9, 16384: 161.9, 65536: 485.3, 131072: 936.5}
VARIANTS = [  # (label, block)
    ("rat L=16 triton", {"kind": "rat", "chunk_size": 16, "backend": "triton"}),
    ("rat L=16 flex", {"kind": "rat", "chunk_size": 16, "backend": "flex"}),
    ("rat L=64 triton", {"kind": "rat", "chunk_size": 64, "backend": "triton"}),
    ("rat L=128 triton", {"kind": "rat", "chunk_size": 128, "backend": "triton"}),
    ("attention sdpa", {"kind": "attention", "backend": "sdpa"}),
    ("local_attention w=1025", {"kind": "local_attention", "window": 1025}),
    ("rat L=16 reference", {"kind": "rat", "chunk_size": 16, "backend": "reference"}),
]


def spec(d_model: int, heads: int, dtype: str) -> dict:
    head = {"heads": heads, "head_dim": d_model // heads}
    return {
        "name": "rat-layer-bench",
        "model": {"d_model": d_model, "vocab_size": 256, "dtype": dtype},
        "stack": [{**head, **block} for _, block in VARIANTS],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON here")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU smoke run)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--variants", default="", help="comma-separated labels to keep")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    if args.small or not cuda:
        d_model, heads, dtype, tokens = 256, 2, "float32", 512
        seqs, decode_seqs, decode_batch = [64, 256], [64, 256], 4
        variants = VARIANTS if cuda else [v for v in VARIANTS if "flex" not in v[0]]
    else:
        d_model, heads, dtype, tokens = 2048, 16, "bfloat16", 262144
        seqs, decode_seqs, decode_batch = list(PUBLISHED["train"]), [4096, 16384, 65536], 512
        variants = [v for v in VARIANTS if "reference" not in v[0]]
    if args.variants:
        keep = set(args.variants.split(","))
        variants = [v for v in variants if v[0] in keep]
    plan = archlab.compile(spec(d_model, heads, dtype))
    settings = Settings(warmup=1 if args.small else 3, repeats=args.repeats, max_time_s=20.0)
    peaks = device_peaks(device, getattr(torch, dtype)) if cuda else None
    rows, results = [], []
    labels = [label for label, _ in VARIANTS]
    for label, _ in variants:
        block = plan.blocks[labels.index(label)]
        try:
            target = LayerTarget(plan, block, device)
        except Exception as e:  # noqa: BLE001 - a backend that cannot run here is a result
            rows.append([label, "-", "-", f"unavailable: {e}", "", "", ""])
            continue
        cases = [("train", tokens // T, T) for T in seqs] + [
            ("prefill", tokens // T, T) for T in seqs
        ]
        cases += [("decode", decode_batch, T) for T in decode_seqs]
        for mode, B, T in cases:
            r = measure(target, mode, B, T, settings, peaks)
            d = r.to_dict()
            d["variant"] = label
            ms = r.timing.median_s * 1e3 if r.timing else None
            published = (
                PUBLISHED.get(mode, {}).get(T) if not args.small and "rat" in label else None
            )
            if mode == "train" and label.startswith("attention") and not args.small:
                published = PUBLISHED_ATTENTION_TRAIN.get(T)
            d["published_ms"] = published
            d["speedup_vs_published"] = published / ms if (published and ms) else None
            results.append(d)
            rate = (
                f"{r.tflops:.0f} TFLOP/s"
                if mode != "decode" and r.tflops
                else f"{r.gbps:.0f} GB/s"
                if r.gbps
                else ""
            )
            frac = r.flops_frac if mode != "decode" else r.bw_frac
            rows.append(
                [
                    label,
                    mode,
                    f"{B}x{T}",
                    f"{ms:.3f} ms" if ms is not None else r.status.upper(),
                    f"{published} ms" if published else "",
                    f"x{published / ms:.2f}" if (published and ms) else "",
                    f"{rate}" + (f" ({frac:.0%})" if frac else ""),
                ]
            )
            print(" | ".join(rows[-1]), flush=True)  # progress, and kept if the run is cut
        save(results, peaks, args.out)
        del target
        if cuda:
            torch.cuda.empty_cache()
    from archlab.report.tables import table

    print(
        table(
            ["variant", "mode", "BxT", "median", "published", "speed-up", "rate"],
            rows,
            right={3, 4, 5, 6},
        )
    )
    save(results, peaks, args.out)
    return 0


def save(results: list, peaks, out: str | None) -> None:
    """Write the JSON (after every variant, so that a cut run keeps what it measured)."""
    if not out:
        return
    cuda = torch.cuda.is_available()
    doc = {
        "command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "triton": _triton_version(),
        "peaks": peaks,
        "results": results,
    }
    with open(out, "w") as f:
        json.dump(doc, f, indent=1, default=str)


def _triton_version() -> str | None:
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


if __name__ == "__main__":
    sys.exit(main())
