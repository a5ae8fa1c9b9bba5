"""Time Mamba-1's selective scan on a GPU: the Triton kernel against the reference; writes JSON.

    python benchmarks/selective_scan.py --out results/selective_scan.json   # on a GPU
    python benchmarks/selective_scan.py --small                             # a CPU smoke run

Setup: the scan of Mamba-1 1.3B (d_model 2048 -> d_inner E = 4096, d_state N = 16), at
65,536 tokens per batch (16x4096 and 4x16384), with the dtypes the `mamba` block passes: x in
bf16, dt, A, B, C in float32 (kernels/selective_scan/reference.py has the maths). Variants:
- `triton`: `archlab.kernels.selective_scan.triton.selective_scan_triton`;
- `reference`: `reference.selective_scan`, a loop over tokens (every state kept under
  autograd: it may run out of memory, which is reported as its result);
- `compiled`: the same loop with its step (`reference.selective_scan_step`) under
  `torch.compile` (compiling the whole loop would unroll T steps into one graph).
`forward` = the forward alone (no autograd), `train` = forward + backward (the gradients of
x, dt, A, B, C), both medians of `triton.testing.do_bench` on a GPU; `train_peak_GB` is the
peak allocation during train (inputs included). `y_rel_err_vs_triton` compares each
variant's forward output with the kernel's. With --small (or without a GPU) the sizes are
tiny, the Triton kernels run under TRITON_INTERPRET=1 and times are wall-clock medians.
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
import torch.nn.functional as F

if not torch.cuda.is_available():  # before any Triton kernel is decorated
    os.environ.setdefault("TRITON_INTERPRET", "1")

import triton  # noqa: E402

from archlab.kernels.selective_scan import triton as ss_triton  # noqa: E402
from archlab.kernels.selective_scan.reference import (  # noqa: E402
    selective_scan,
    selective_scan_step,
)

sys.path.insert(0, str(Path(__file__).parent))  # the benchmarks' shared timing
from scan_timing import print_variant_rows, time_forward_and_train  # noqa: E402

D_INNER, D_STATE = 4096, 16
SHAPES = [(16, 4096), (4, 16384)]
SMALL = {"d_inner": 24, "d_state": 4, "shapes": [(2, 8), (1, 19)]}


def make_inputs(B, T, E, N, device):
    """x (bf16, after SiLU), dt (softplus, around mamba's dt init), A (mamba's -1..-N), B, C
    (float32), and dy."""
    gen = torch.Generator(device=device).manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, device=device, generator=gen)

    x = F.silu(randn(B, T, E)).bfloat16()
    dt = F.softplus(randn(B, T, E) - 4.0)
    A = -torch.arange(1, N + 1, device=device, dtype=torch.float32).repeat(E, 1)
    return [x, dt, A, randn(B, T, N), randn(B, T, N)], randn(B, T, E)


def make_compiled(backend: str):
    """The reference's loop over tokens with its step compiled (one graph per step)."""
    step = torch.compile(selective_scan_step, backend=backend, dynamic=False)

    def scan(x, dt, A, Bm, Cm):
        h = torch.zeros(x.shape[0], x.shape[2], A.shape[1], device=x.device)
        ys = []
        for t in range(x.shape[1]):
            y, h = step(x[:, t], dt[:, t], A, Bm[:, t], Cm[:, t], h)
            ys.append(y)
        return torch.stack(ys, dim=1), h

    return scan


def time_variant(fn, inputs, dy, cuda, reps):
    """{forward_ms, train_ms, train_peak_GB, y} of one variant, or {error}."""
    leaves = [t.detach().requires_grad_() for t in inputs]

    def train():
        for leaf in leaves:
            leaf.grad = None
        fn(*leaves)[0].backward(dy)

    return time_forward_and_train(lambda: fn(*inputs)[0], train, cuda, reps)


def run_shape(B, T, E, N, variants, cuda, reps, backend):
    """One row of the report: every variant at B x T."""
    inputs, dy = make_inputs(B, T, E, N, "cuda" if cuda else "cpu")
    fns = {"triton": ss_triton.selective_scan_triton, "reference": selective_scan}
    row = {"B": B, "T": T, "E": E, "N": N, "variants": {}}
    for name in variants:
        fn = make_compiled(backend) if name == "compiled" else fns[name]
        t0 = time.time()
        res = time_variant(fn, inputs, dy, cuda, reps)
        res["wall_s"] = round(time.time() - t0, 1)
        row["variants"][name] = res
        shown = {k: v for k, v in res.items() if k != "y"}
        print(f"  {B}x{T} {name}: {shown}", flush=True)
    ref_y = row["variants"].get("triton", {}).get("y")
    for res in row["variants"].values():
        y = res.pop("y", None)
        if y is not None and ref_y is not None:
            res["y_rel_err_vs_triton"] = (
                (y.double() - ref_y.double()).norm() / ref_y.double().norm()
            ).item()
    return row


def print_table(report, variants):
    print("\nselective scan (ms, median; ratio = variant / triton)")
    print_variant_rows(report["results"], variants, ("forward", "train"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="write the JSON here")
    parser.add_argument("--small", action="store_true", help="tiny sizes (CPU smoke run)")
    parser.add_argument("--variants", default=None, help="default: triton,reference,compiled")
    parser.add_argument(
        "--compile-backend", default=None, help="of `compiled` (inductor; aot_eager if --small)"
    )
    parser.add_argument("--reps", type=int, default=1, help="timed calls without a GPU")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    small = args.small or not cuda
    E, N = (SMALL["d_inner"], SMALL["d_state"]) if small else (D_INNER, D_STATE)
    shapes = SMALL["shapes"] if small else SHAPES
    backend = args.compile_backend or ("aot_eager" if small else "inductor")
    default = "triton,reference" if small else "triton,reference,compiled"
    variants = [v for v in (args.variants or default).split(",") if v]
    report = {
        "command": "python "
        + " ".join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:])),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if cuda else "cpu (TRITON_INTERPRET=1)",
        "torch": torch.__version__,
        "triton": triton.__version__,
        "setup": {
            "d_inner": E,
            "d_state": N,
            "dtypes": {"x": "bfloat16", "dt, A, B, C": "float32"},
            "compile_backend": backend,
            "small": small,
            "triton_gpu_sizes": {
                "BD": ss_triton.BD_GPU,
                "CH": ss_triton.CH_GPU,
                "warps": ss_triton.WARPS_GPU,
            },
        },
        "results": [],
    }
    for B, T in shapes:
        print(f"[{B}x{T}]", flush=True)
        report["results"].append(run_shape(B, T, E, N, variants, cuda, args.reps, backend))
    print_table(report, variants)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
        print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
