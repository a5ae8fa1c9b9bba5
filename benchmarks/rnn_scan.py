"""Time the `rnn` block's core (fused gates + gated linear recurrence) on a GPU; writes JSON.

    python benchmarks/rnn_scan.py --out results/rnn_scan.json [--sweep]   # on an H200
    python benchmarks/rnn_scan.py --small [--sweep]                       # a CPU smoke run

Setup: d_model D = 2048, bf16, 262,144 tokens per batch (64x4096, 16x16384, 4x65536,
2x131072). The core maps the in_proj output u = [z | v | gpre] [B, T, 3D] and gate_bias
[D] to y [B, T, D] (kernels/rnn/reference.py). Variants:
- `triton`: `archlab.kernels.rnn.triton_rnn.rnn_core_triton`;
- `reference`: today's path of blocks/rnn (gates in PyTorch, then
  `archlab.kernels.rat.scan.chunk_scan_parallel`, a float32 log-depth scan);
- `assoc_scan`: the same gates and `torch._higher_order_ops.associative_scan` on (g, (1-g) v)
  pairs, under `torch.compile` (a failure is reported as the variant's result).
`train` = forward + backward of the core (gradients of u and gate_bias), `forward` = the
forward alone under no_grad (for `triton`: its forward-only tile, what prefill runs), both
medians of `triton.testing.do_bench`. `decode` = one step at batch 512: `rnn_step_triton`
against the PyTorch step of blocks/rnn. `--sweep` also times the Triton core at each tile
choice of SWEEP (BT tokens, BD channels, warps) and shape, both ways: `forward_ms` with
that tile as the forward-only tile (`triton_rnn.GPU_FORWARD_TILES`) and `train_ms` with it
as the training tile (`triton_rnn.GPU_TILES`, forward and backward). GB/s counts the bytes
every pass must move: forward reads u and writes y (8 bytes per token-channel in bf16),
backward reads u and dy and writes du (14). With --small (or without a GPU) the sizes are
tiny, the Triton kernels run under TRITON_INTERPRET=1 and times are wall-clock medians
(there --sweep sets the interpreter's tiles instead: a smoke run of the code, not a timing).

JSON: {command, date, device, torch, triton, setup: {d_model, dtype, decode_batch,
compile_backend, small, triton_gpu_tiles and triton_gpu_forward_tiles: [{min_batch, BT, BD,
warps}]}, train: [one row per shape], decode: {B, D, triton_ms, torch_ms, triton_graph_ms,
torch_graph_ms, *_GBps, or *_error}}. A train row: {B, T, D, variants: {name: {forward_ms,
train_ms, train_peak_GB (GPU), wall_s, y_rel_err_vs_triton; triton also forward_GBps,
train_GBps} or {error, wall_s}}}, with --sweep also sweep: [{BT, BD, warps, forward_ms,
train_ms, train_peak_GB} or {BT, BD, warps, error}] and sweep_best: {forward: {BT, BD, warps,
ms}, train: {BT, BD, warps, ms}} (the fastest tile each way; a way is absent where every
tile failed).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import torch

if not torch.cuda.is_available():  # before any Triton kernel is decorated
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402

from archlab.kernels.rnn import triton_rnn  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks' shared timing
from scan_timing import median_ms, print_variant_rows, time_forward_and_train  # noqa: E402

D_MODEL = 2048
SHAPES = [(64, 4096), (16, 16384), (4, 65536), (2, 131072)]
DECODE_BATCH = 512
SWEEP = [  # (BT, BD, warps); the first was triton_rnn's default before the sweep chose by batch
    (32, 32, 4),
    (64, 32, 4),
    (64, 32, 8),
    (32, 16, 2),
    (32, 64, 4),
    (16, 32, 2),
    (64, 16, 2),
    (128, 32, 8),
    (32, 16, 1),
    (64, 64, 8),
    (32, 32, 8),
]
SMALL = {"d_model": 24, "shapes": [(2, 20), (1, 37)], "decode_batch": 4}


# --- the variants: each maps (u, gate_bias) to y ----------------------------------------------


def core_triton(u, gate_bias):
    return triton_rnn.rnn_core_triton(u, gate_bias)[0]


def core_reference(u, gate_bias):
    """blocks/rnn's forward without the projections."""
    from archlab.kernels.rat.scan import chunk_scan_parallel

    z, v, g = u.chunk(3, dim=-1)
    v, g = v.float(), torch.sigmoid(g.float() + gate_bias.float())
    s = chunk_scan_parallel(v, g, max(u.shape[1], 1))
    return torch.sigmoid(z) * s.to(z.dtype)


def _combine(left, right):
    # (a1, b1) then (a2, b2): s -> a2 * (a1 * s + b1) + b2
    return left[0] * right[0], right[0] * left[1] + right[1]


def make_assoc_scan(backend: str):
    """The recurrence through associative_scan under torch.compile (pointwise combine on a
    GPU, generic elsewhere)."""
    from torch._higher_order_ops.associative_scan import associative_scan

    def core(u, gate_bias):
        z, v, g = u.chunk(3, dim=-1)
        g = torch.sigmoid(g.float() + gate_bias.float())
        mode = "pointwise" if u.is_cuda else "generic"
        _, s = associative_scan(_combine, (g, (1 - g) * v.float()), dim=1, combine_mode=mode)
        return torch.sigmoid(z) * s.to(z.dtype)

    return torch.compile(core, backend=backend, dynamic=False)


def step_torch(u, gate_bias, state, has_state):
    """blocks/rnn's step without the projections (the state updated in place)."""
    z, v, g = u.chunk(3, dim=-1)
    g = torch.sigmoid(g.float() + gate_bias.float())
    s = (1 - g) * v.float()
    if has_state:
        s = s + g * state.float()
    state.copy_(s)
    return torch.sigmoid(z) * s.to(z.dtype)


def step_triton(u, gate_bias, state, has_state):
    return triton_rnn.rnn_step_triton(u, gate_bias, state, has_state)


# --- measurements -----------------------------------------------------------------------------


def time_core(fn, u, gate_bias, dy, cuda, reps):
    """{forward_ms, train_ms, train_peak_GB (train), y} of one variant, or {error}."""
    leaf = u.detach().requires_grad_()
    bias = gate_bias.detach().requires_grad_()

    def train():
        leaf.grad = bias.grad = None
        fn(leaf, bias).backward(dy)

    return time_forward_and_train(lambda: fn(u, gate_bias), train, cuda, reps)


def train_case(B, T, D, variants, cuda, reps, sweep, backend):
    dev = "cuda" if cuda else "cpu"
    gen = torch.Generator(device=dev).manual_seed(0)
    u = torch.randn(B, T, 3 * D, device=dev, generator=gen).to(torch.bfloat16)
    gate_bias = torch.randn(D, device=dev, generator=gen)
    dy = torch.randn(B, T, D, device=dev, generator=gen).to(torch.bfloat16)
    row = {"B": B, "T": T, "D": D, "variants": {}}
    for name in variants:
        fn = {"triton": core_triton, "reference": core_reference}.get(name)
        if name == "assoc_scan":
            fn = make_assoc_scan(backend)  # compiles at the first call (errors are caught there)
        t0 = time.time()
        res = time_core(fn, u, gate_bias, dy, cuda, reps)
        res["wall_s"] = round(time.time() - t0, 1)
        row["variants"][name] = res
        print(
            f"  {B}x{T} {name}: "
            + ", ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={str(v)[:200]}"
                for k, v in res.items()
                if k != "y"
            ),
            flush=True,
        )
    ref_y = row["variants"].get("triton", {}).get("y")
    for res in row["variants"].values():  # agreement with the Triton core's y
        y = res.pop("y", None)
        if y is not None and ref_y is not None:
            res["y_rel_err_vs_triton"] = (
                (y.double() - ref_y.double()).norm() / ref_y.double().norm()
            ).item()
    tri = row["variants"].get("triton", {})
    if "train_ms" in tri:
        tok = B * T * D
        tri["forward_GBps"] = 8 * tok / (tri["forward_ms"] * 1e-3) / 1e9
        tri["train_GBps"] = 22 * tok / (tri["train_ms"] * 1e-3) / 1e9
    if sweep:
        row["sweep"] = sweep_tiles(u, gate_bias, dy, cuda, reps)
        row["sweep_best"] = best_tiles(row["sweep"])
    return row


TILE_GLOBALS = ("GPU_TILES", "GPU_FORWARD_TILES", "BT_CPU", "BD_CPU", "CPU_FORWARD_TILES")


def use_tile(BT, BD, warps):
    """Make (BT, BD, warps) triton_rnn's training and forward-only tile at every batch (on
    the GPU tables and the interpreter's)."""
    tile = (BT, BD, warps)
    triton_rnn.GPU_TILES = triton_rnn.GPU_FORWARD_TILES = ((0, tile),)
    triton_rnn.BT_CPU, triton_rnn.BD_CPU, triton_rnn.CPU_FORWARD_TILES = BT, BD, tile


def sweep_tiles(u, gate_bias, dy, cuda, reps):
    """The Triton core at each (BT, BD, warps) of SWEEP: forward_ms (the forward alone,
    under no_grad: the forward-only tile) and train_ms (the training tile); the module's
    tiles restored."""
    saved = {name: getattr(triton_rnn, name) for name in TILE_GLOBALS}
    out = []
    try:
        for BT, BD, warps in SWEEP:
            use_tile(BT, BD, warps)
            res = time_core(core_triton, u, gate_bias, dy, cuda, reps)
            res.pop("y", None)
            out.append({"BT": BT, "BD": BD, "warps": warps, **res})
            cells = ", ".join(
                f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={str(v)[:200]}"
                for k, v in res.items()
            )
            print(f"  sweep BT={BT} BD={BD} warps={warps}: {cells}", flush=True)
    finally:
        for name, value in saved.items():
            setattr(triton_rnn, name, value)
    return out


def best_tiles(sweep):
    """{forward, train: {BT, BD, warps, ms}}: the fastest tile of the sweep each way."""
    best = {}
    for mode in ("forward", "train"):
        timed = [r for r in sweep if f"{mode}_ms" in r]
        if timed:
            r = min(timed, key=lambda r: r[f"{mode}_ms"])
            best[mode] = {"BT": r["BT"], "BD": r["BD"], "warps": r["warps"], "ms": r[f"{mode}_ms"]}
    return best


def graphed(fn):
    """fn captured in a CUDA graph (after a warm-up that compiles the kernels): its replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def decode_case(batch, D, cuda, reps):
    """One step (state read and overwritten) of each step function: launched eagerly, and on
    a GPU also replayed from a CUDA graph (the launch overhead left out)."""
    dev = "cuda" if cuda else "cpu"
    u = torch.randn(batch, 3 * D, device=dev).to(torch.bfloat16)
    gate_bias = torch.randn(D, device=dev)
    row = {"B": batch, "D": D}
    for name, step in (("triton", step_triton), ("torch", step_torch)):
        state = torch.randn(batch, D, device=dev).to(torch.bfloat16)

        def fn(step=step, state=state):
            return step(u, gate_bias, state, True)

        try:
            with torch.no_grad():
                row[f"{name}_ms"] = median_ms(fn, cuda, reps)
                if cuda:
                    row[f"{name}_graph_ms"] = median_ms(graphed(fn), cuda, reps)
        except Exception as e:
            row[f"{name}_error"] = f"{type(e).__name__}: {e}"[:2000]
    # bytes: u read (6), gate_bias, state read and written (2 + 2), y written (2) per channel
    for key in ("triton_ms", "triton_graph_ms"):
        if key in row:
            row[key.replace("_ms", "_GBps")] = batch * D * 12 / (row[key] * 1e-3) / 1e9
    return row


def fmt(x):
    return f"{x:9.3f}" if isinstance(x, float) else f"{str(x):>9}"  # also None


def print_sweep(row):
    """The sweep of one shape: forward and train ms per tile, then the fastest each way."""
    print(f"\nsweep {row['B']}x{row['T']} (ms):   BT   BD warps   forward     train")
    for r in row["sweep"]:
        times = " ".join(fmt(r.get(k, "error")) for k in ("forward_ms", "train_ms"))
        print(f"{'':>18}{r['BT']:>5}{r['BD']:>5}{r['warps']:>6} {times}")
    for mode, r in row["sweep_best"].items():
        print(f"  fastest {mode}: BT={r['BT']} BD={r['BD']} warps={r['warps']} {r['ms']:.3f} ms")


def print_table(report, variants):
    print("\ncore (ms, median; ratio = variant / triton)")
    print_variant_rows(report["train"], variants, ("train", "forward"))
    for row in report["train"]:
        if "sweep" in row:
            print_sweep(row)
    d = report.get("decode") or {}
    for suffix, what in (("_ms", "eager launches"), ("_graph_ms", "CUDA graph replay")):
        tri, tor = d.get("triton" + suffix), d.get("torch" + suffix)
        if tri is not None or tor is not None:
            ratio = f", torch / triton {tor / tri:.2f}" if tri and tor else ""
            print(
                f"decode step B={d['B']} D={d['D']} ({what}): triton {fmt(tri)} ms, "
                f"torch {fmt(tor)} ms{ratio}"
            )
    for key in ("triton_error", "torch_error"):
        if key in d:
            print(f"decode {key}: {d[key][:300]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON here")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU smoke run)")
    parser.add_argument("--variants", default="triton,reference,assoc_scan")
    parser.add_argument(
        "--sweep", action="store_true", help="also time the Triton tile choices, both ways"
    )
    parser.add_argument(
        "--compile-backend",
        default=None,
        help="torch.compile backend of assoc_scan (inductor; aot_eager if --small)",
    )
    parser.add_argument("--reps", type=int, default=1, help="timed calls without a GPU")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    small = args.small or not cuda
    D = SMALL["d_model"] if small else D_MODEL
    shapes = SMALL["shapes"] if small else SHAPES
    decode_batch = SMALL["decode_batch"] if small else DECODE_BATCH
    backend = args.compile_backend or ("aot_eager" if small else "inductor")
    variants = [v for v in args.variants.split(",") if v]
    report = {
        "command": "python "
        + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else "cpu (TRITON_INTERPRET=1)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "setup": {
            "d_model": D,
            "dtype": "bfloat16",
            "decode_batch": decode_batch,
            "compile_backend": backend,
            "small": small,
            **{
                f"triton_{key}": [
                    {"min_batch": least, "BT": BT, "BD": BD, "warps": warps}
                    for least, (BT, BD, warps) in getattr(triton_rnn, key.upper())
                ]
                for key in ("gpu_tiles", "gpu_forward_tiles")
            },
        },
        "train": [],
    }
    for B, T in shapes:
        print(f"[{B}x{T}]", flush=True)
        report["train"].append(train_case(B, T, D, variants, cuda, args.reps, args.sweep, backend))
    report["decode"] = decode_case(decode_batch, D, cuda, args.reps)
    print_table(report, variants)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
