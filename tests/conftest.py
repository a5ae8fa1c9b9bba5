"""Test-session setup. Without a GPU, Triton kernels run under Triton's interpreter: the
variable must be set before any module decorates a kernel, so it is set here, first."""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_runtest_logreport(report):
    """With ARCHLAB_INSTAFAIL=1, print each failure as it happens (a GPU run that hits its
    time limit keeps the failures it already saw)."""
    if report.failed and os.environ.get("ARCHLAB_INSTAFAIL"):
        print(
            f"\nFAILED {report.nodeid} ({report.when})\n{report.longreprtext[-4000:]}\n", flush=True
        )
