"""The RAT Triton kernels compile for the H200 (sm_90) with this machine's Triton, without a
GPU: `benchmarks/compile_check.py` on the paper's case (bf16, head_dim 128, chunk 16), every
launcher and autotune candidate. It runs in a subprocess, since it swaps Triton's driver."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _nvidia_backend() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDABackend  # noqa: F401
    except Exception:  # noqa: BLE001 - no CUDA backend in this Triton build
        return False
    return (Path(sys.modules["triton"].__file__).parent / "backends/nvidia/bin/ptxas").exists()


@pytest.mark.skipif(not _nvidia_backend(), reason="Triton without its NVIDIA backend and ptxas")
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "compile_check.py"), "--case", "d128 L16 bf16"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    summary = run.stdout.strip().splitlines()[-1]
    assert " 0 failures, 0 over shared memory" in summary, summary
    assert int(summary.split()[0]) >= 10, summary  # every kernel was compiled
