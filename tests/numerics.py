"""Numerical helpers shared by the tests (importable from every test folder: pytest puts
tests/ on sys.path for its conftest.py)."""

from __future__ import annotations

import torch


def rel_err(a: torch.Tensor, b: torch.Tensor, floor: float = 1e-12) -> float:
    """||a - b|| / ||b|| in float64 (the denominator at least `floor`)."""
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(floor)).item()
