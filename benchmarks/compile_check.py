"""Compile every RAT Triton kernel for the H200 (sm_90) on a machine without a GPU.

GPU time is scarce; compiler errors, shared-memory overflows and register spills are not
worth a GPU run to find. This script swaps Triton's driver for a compile-only one that
reports an sm_90 target, makes every launch a compile (`warmup`), compiles every autotune
candidate, and reads each binary's registers, spills and shared memory.

    python benchmarks/compile_check.py [--arch 90] [--json FILE] [--case "d128 L16 bf16"]

It drives the real launchers in `archlab.kernels.rat` (forward, backward, prefill, decode)
over head dims, chunk sizes, dtypes and RoPE on/off, with CPU tensors that are never read.
Exit status 1 when a kernel fails to compile or needs more shared memory than sm_90 has.
"""

# fmt: off
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)  # compile for real, never interpret

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.runtime import driver  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

SMEM_LIMIT = 232448  # bytes a block may use on sm_90 (227 KiB)


class CompileOnlyDriver:
    """The part of Triton's driver interface a launch touches before it runs anything."""

    def __init__(self, arch: int):
        self.target = GPUTarget("cuda", arch, 32)

    def get_current_target(self):
        return self.target

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0


def _resources(cubin: bytes, sass: bool) -> dict:
    """Registers and stack frame of a cubin (ptxas's resource report); with `sass`, how many
    Hopper matrix instructions (HGMMA, i.e. wgmma) and local loads (LDL) its code holds."""
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()

        def dump(flag):
            return subprocess.run([tool, flag, f.name], capture_output=True, text=True).stdout

        usage = dump("--dump-resource-usage")
        code = dump("--dump-sass") if sass else ""
    out = {}
    for key, pat in (("regs", r"REG:(\d+)"), ("stack", r"STACK:(\d+)")):
        m = re.search(pat, usage)
        out[key] = int(m.group(1)) if m else None
    if sass:
        out["hgmma"], out["ldl"] = code.count("HGMMA"), code.count("LDL")
    return out


class Recorder:
    def __init__(self):
        self.rows: dict[tuple, dict] = {}
        self.case = ""

    def add(self, fn: JITFunction, kernel, kwargs: dict) -> None:
        consts = {k: v for k, v in kwargs.items()
                  if k in ("BM", "BN", "BT", "D", "D2", "H", "G", "ROPE", "SPLIT", "SINGLE",
                           "CORE", "PARTIAL", "DOT_PREC")}
        md = kernel.metadata
        key = (fn.__name__, kernel.hash if hasattr(kernel, "hash") else id(kernel))
        if key in self.rows:
            return
        row = {"kernel": fn.__name__, "case": self.case, **consts,
               "num_warps": md.num_warps, "num_stages": md.num_stages, "shared": md.shared}
        row.update(_resources(kernel.asm["cubin"], sass="attn" in fn.__name__))
        self.rows[key] = row


def install(arch: int, rec: Recorder) -> None:
    driver.set_active(CompileOnlyDriver(arch))
    jit_run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        kernel = jit_run(self, *args, grid=grid, warmup=True, **kwargs)
        rec.add(self, kernel, kwargs)
        return kernel

    def every_config(self, *args, **kwargs):
        for config in self.configs:
            self.fn.run(*args, **kwargs, **config.all_kwargs())

    JITFunction.run = compile_only
    Autotuner.run = every_config


def cases():
    """(label, B, T, H, G, D, chunk, dtype, rope): head dims, chunk sizes from 1 to longer
    than T (and a T that no chunk divides), dtypes, RoPE on and off."""
    yield "d128 L16 bf16", 1, 256, 16, 2, 128, 16, torch.bfloat16, True
    yield "d128 L1 bf16", 1, 256, 16, 2, 128, 1, torch.bfloat16, True
    yield "d128 L64 bf16", 1, 256, 16, 2, 128, 64, torch.bfloat16, True
    yield "d128 L128 bf16 norope", 1, 300, 16, 2, 128, 128, torch.bfloat16, False
    yield "d128 L512>T bf16", 1, 300, 16, 2, 128, 512, torch.bfloat16, True
    yield "d64 L16 bf16", 1, 256, 32, 4, 64, 16, torch.bfloat16, True
    yield "d128 L16 fp32", 1, 256, 16, 2, 128, 16, torch.float32, True
    yield "d64 L64 fp32", 1, 256, 8, 8, 64, 64, torch.float32, True


def launches(B, T, H, G, D, L, dtype, rope) -> dict:
    """Every launcher of one case, as named thunks."""
    from archlab.kernels.rat import triton_decode, triton_ops

    def t(*shape):
        return torch.randn(*shape, dtype=dtype)

    q, k, v, gl = t(B, T, G, D), t(B, T, G, D), t(B, T, H, D), t(B, T, H, D)
    bias = torch.randn(H * D, dtype=torch.float32)
    slots, ends = -(-T // L), max(T // L, 1)
    proj = t(B, T, (3 * H + 2 * G) * D)
    return {
        "gated forward": lambda: triton_ops.rat_gated_fwd(proj, bias, H, G, L, rope, 1e4),
        "gated backward": lambda: triton_ops.rat_gated_bwd(
            t(B, T, H * D), proj, bias, t(B, T, H * D), torch.randn(B, H, T), q,
            t(B, H, ends, D), t(B, H, ends, D), torch.randn(B, H, T), H, G, L, rope, 1e4),
        "gated prefill": lambda: triton_ops.rat_prefill_triton(
            q, k, v, gl, bias, t(B, slots, H, D), t(B, slots, H, D), L, rope, 1e4,
            z=t(B, T, H * D)),
        "forward": lambda: triton_ops.rat_core_fwd(q, k, v, gl, bias, L, rope, 1e4),
        "backward": lambda: triton_ops.rat_core_bwd(
            t(B, T, H, D), q, k, v, gl, bias, t(B, T, H, D), torch.randn(B, H, T), q,
            t(B, H, ends, D), t(B, H, ends, D), torch.randn(B, H, T), L, rope, 1e4),
        "prefill": lambda: triton_ops.rat_prefill_triton(
            q, k, v, gl, bias, t(B, slots, H, D), t(B, slots, H, D), L, rope, 1e4),
        "prefill cache": lambda: triton_ops.rat_prefill_cache_triton(
            k, v, gl, bias, t(B, slots, H, D), t(B, slots, H, D), L, rope, 1e4),
        "decode one split": lambda: triton_decode.decode_step(
            t(64, G, D), t(64, G, D), t(64, H, D), t(64, H, D), bias,
            t(64, slots, H, D), t(64, slots, H, D), None, T - 1, L, rope, 1e4),
        "decode split": lambda: triton_decode.decode_step(
            t(1, G, D), t(1, G, D), t(1, H, D), t(1, H, D), bias,
            t(1, 4096, H, D), t(1, 4096, H, D), torch.tensor(T - 1), 0, L, rope, 1e4,
            own_last=True),
    }


def drive(rec: Recorder, only: str = "") -> list[str]:
    """Run every launcher once per case (those whose label contains `only`); return the
    failures."""
    from archlab.kernels.rat import triton_attention

    triton_attention.gpu_tiles = lambda device: True
    failures = []
    for label, *shape in cases():
        if only not in label:
            continue
        rec.case = label
        for name, step in launches(*shape).items():
            try:
                step()
            except Exception as exc:  # a compile error: report it, go on
                failures.append(f"{label} {name}: {type(exc).__name__}: {str(exc)[:2000]}")
    return failures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", type=int, default=90, help="compute capability (90 = Hopper)")
    ap.add_argument("--json", help="write every compiled kernel's resources here")
    ap.add_argument("--case", default="", help="only the cases whose label contains this")
    args = ap.parse_args(argv)
    rec = Recorder()
    install(args.arch, rec)
    failures = drive(rec, args.case)
    rows = sorted(rec.rows.values(), key=lambda r: (r["kernel"], r["case"]))
    print(f"{'kernel':28} {'case':22} {'BM':>4} {'BN':>4} {'BT':>4} {'w':>2} {'st':>2} "
          f"{'smem':>7} {'regs':>4} {'stack':>5} {'hgmma':>5}")
    over = []
    for r in rows:
        print(f"{r['kernel']:28} {r['case'][:22]:22} {r.get('BM', ''):>4} {r.get('BN', ''):>4} "
              f"{r.get('BT', ''):>4} {r['num_warps']:>2} {r['num_stages']:>2} {r['shared']:>7} "
              f"{r['regs'] or '?':>4} {r['stack'] if r['stack'] is not None else '?':>5} "
              f"{r.get('hgmma', ''):>5}")
        if r["shared"] > SMEM_LIMIT:
            over.append(r)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"triton": triton.__version__, "arch": args.arch, "kernels": rows,
                       "failures": failures}, f, indent=1)
    for r in over:
        print(f"OVER SHARED MEMORY: {r['kernel']} {r['case']} {r['shared']} > {SMEM_LIMIT}")
    for f in failures:
        print("FAILED:", f)
    spilled = [r for r in rows if r["stack"]]
    print(f"{len(rows)} binaries, {len(failures)} failures, {len(over)} over shared memory, "
          f"{len(spilled)} with a stack frame (spills)")
    return 1 if failures or over else 0


if __name__ == "__main__":
    sys.exit(main())
