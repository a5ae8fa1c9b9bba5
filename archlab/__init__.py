"""archlab: design, validate, cost and profile hybrid sequence-model architectures.

import archlab
spec = archlab.load_spec("specs/paper/rat.yaml")   # a path, a YAML string or a dict
plan = archlab.compile(spec)                        # the validated, expanded Plan
model = archlab.build(spec, device="cpu")           # an nn.Module
"""

from __future__ import annotations

from pathlib import Path

import torch

# The submodules `archlab.build` and `archlab.cost` share their names with the API
# functions below. They are imported first so that the functions defined afterwards
# are what `archlab.build` / `archlab.cost` mean; `from archlab.build import ...` still
# reaches the modules through sys.modules.
import archlab.build as _build_module  # noqa: E402, F401
import archlab.cost as _cost_module  # noqa: F401
from archlab.errors import SpecError, SpecIssue
from archlab.loader import Source, load_source
from archlab.plan import Plan

__all__ = ["SpecError", "SpecIssue", "Plan", "load_spec", "compile", "build", "cost"]
__version__ = "0.1.0"


def load_spec(spec: str | Path | dict) -> Source:
    """Load a spec (a path, a YAML string or a dict) and resolve `extends`.
    Raises SpecError for unreadable files and YAML errors."""
    return load_source(spec)


def compile(spec: str | Path | dict | Source | Plan) -> Plan:  # noqa: A001
    """The validated, expanded Plan of a spec. Raises SpecError listing every problem."""
    from archlab.compiler import compile_spec

    return spec if isinstance(spec, Plan) else compile_spec(spec)


def build(spec, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None):
    """Build the model of a spec (path, YAML string, dict, Source or Plan) on `device`;
    `dtype` overrides the spec's `model.dtype`."""
    return _build_module.build_model(compile(spec), device=device, dtype=dtype)


def cost(spec, batch: int = 1, seq_len: int | None = None):
    """Analytic parameters, FLOPs and cache bytes of a spec (see archlab.cost)."""
    return _cost_module.spec_cost(compile(spec), batch=batch, seq_len=seq_len)
