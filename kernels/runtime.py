"""Where the Triton kernels can run: the one place that reads TRITON_INTERPRET."""

from __future__ import annotations

import os


def triton_interpreted() -> bool:
    """True under Triton's interpreter (TRITON_INTERPRET=1): kernels run on the CPU,
    slowly; the tests use it, `auto` backends never pick it."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def triton_can_run(device, asked_by_name: bool) -> str | None:
    """A backend check for a Triton kernel: None on CUDA (Triton installed), and on the
    CPU under the interpreter when the backend is asked for by name; else why not."""
    if getattr(device, "type", str(device)) != "cuda" and not (
        asked_by_name and triton_interpreted()
    ):
        return "needs a CUDA device"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "needs Triton (pip install triton)"
    return None
