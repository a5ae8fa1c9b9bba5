"""archlab: design, validate, cost and profile hybrid sequence-model architectures.

import archlab
spec = archlab.load_spec("specs/paper/rat.yaml")   # a path, a YAML string or a dict
plan = archlab.compile(spec)                        # the validated, expanded Plan
model = archlab.build(spec, device="cpu")           # an nn.Module
c = archlab.cost(spec, batch=1, seq_len=4096)       # analytic parameters, FLOPs, cache

Importing archlab, compiling and costing load no torch; `build` imports it.
"""

from __future__ import annotations

from pathlib import Path

# The package `archlab.cost` shares its name with the API function below: it is imported
# first so that the function defined afterwards is what `archlab.cost` means;
# `from archlab.cost.analytic import ...` still reaches the modules through sys.modules.
import archlab.cost as _cost_package  # noqa: F401
from archlab.lang.errors import SpecError, SpecIssue, UsageError
from archlab.lang.loader import Source, load_source
from archlab.lang.plan import Plan

__all__ = [
    "SpecError",
    "SpecIssue",
    "UsageError",
    "Plan",
    "load_spec",
    "compile",
    "build",
    "cost",
]
__version__ = "0.1.0"


def load_spec(spec: str | Path | dict, roots=None) -> Source:
    """Load a spec (a path, a YAML string or a dict) and resolve `extends` (which may also
    reach the folders in `roots`, see docs/language.md). Raises SpecError for unreadable
    files and YAML errors."""
    return load_source(spec, roots=roots)


def compile(spec: str | Path | dict | Source | Plan, roots=None) -> Plan:  # noqa: A001
    """The validated, expanded Plan of a spec. Raises SpecError listing every problem."""
    from archlab.lang.compiler import compile_spec

    return spec if isinstance(spec, Plan) else compile_spec(spec, roots=roots)


def build(spec, device="cpu", dtype=None, force: bool = False):
    """Build the model of a spec (path, YAML string, dict, Source or Plan) on `device`
    (a string or torch.device); `dtype` (a torch.dtype or its name) overrides the spec's
    `model.dtype`. A model whose weights would not fit in the device's free memory raises
    `archlab.model.ModelTooLarge` (a ValueError) unless `force`."""
    from archlab.model import build_model

    return build_model(compile(spec), device=device, dtype=dtype, force=force)


def cost(spec, batch: int = 1, seq_len: int | None = None):
    """Analytic parameters, FLOPs and cache bytes of a spec (see archlab.cost)."""
    from archlab.cost.analytic import spec_cost

    return spec_cost(compile(spec), batch=batch, seq_len=seq_len)
