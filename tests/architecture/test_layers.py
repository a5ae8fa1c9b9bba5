"""The package's shape: imports run one way through the layers (docs/architecture.md),
with no circle; the spec language and the cost model load no torch; `validate` starts
fast; no file outside kernels/ grows past about 400 lines."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parents[2]
FOLDERS = {
    "archlab": ROOT / "archlab",
    "archlab.blocks": ROOT / "blocks",
    "archlab.kernels": ROOT / "kernels",
}
# Higher layers may import lower ones (and their own); never the other way.
LAYERS = [
    ("archlab.kernels", 0),
    ("archlab.blocks", 1),
    ("archlab.lang", 2),
    ("archlab.cost", 3),
    ("archlab.model", 4),
    ("archlab.measure", 5),
    ("archlab.report", 6),
    ("archlab.cli", 7),
    ("archlab", 7),  # the public API (archlab/__init__.py)
]


def layer(module: str) -> int:
    return next(
        rank for prefix, rank in LAYERS if module == prefix or module.startswith(prefix + ".")
    )


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *rel)).removesuffix(".__init__")
            if package == "archlab" and rel[0] in ("blocks", "kernels"):
                continue
            found[name] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """archlab modules that `path` imports, anywhere in the file (lazy imports count)."""
    out = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def graph() -> nx.DiGraph:
    mods = modules()
    g = nx.DiGraph()
    for name, path in mods.items():
        g.add_node(name)
        for target in imports(path, name, set(mods)):
            g.add_edge(name, target)
    return g


def test_no_upward_import():
    g = graph()
    upward = [(a, b) for a, b in g.edges if layer(b) > layer(a)]
    assert not upward, "imports that go up a layer: " + ", ".join(f"{a} -> {b}" for a, b in upward)


def test_no_import_circle():
    g = graph()
    # a package's __init__ importing its own modules is how packages re-export: not a circle
    g.remove_edges_from([(a, b) for a, b in list(g.edges) if b.startswith(a + ".")])
    cycles = list(nx.simple_cycles(g))
    assert not cycles, f"import circles: {cycles[:5]}"


def test_kernels_import_nothing_from_blocks():
    g = graph()
    bad = [(a, b) for a, b in g.edges if a.startswith("archlab.kernels") and layer(b) > 0]
    assert not bad, bad


TORCH_FREE = """
import sys
import archlab, archlab.cli
from archlab.cost.analytic import spec_cost
from archlab.cost.crossover import crossovers
from archlab.cost.memory import train_memory
from archlab.lang.spec import json_schema
from archlab.blocks.registry import kinds
plan = archlab.compile("specs/paper/rat.yaml")
spec_cost(plan); train_memory(plan); json_schema(); kinds()
crossovers(plan, archlab.compile("specs/paper/attention.yaml"), "cache_bytes")
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "triton"))
print(heavy)
"""


def test_language_and_cost_load_no_torch():
    out = subprocess.run(
        [sys.executable, "-c", TORCH_FREE], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout[:500]


def test_validate_starts_fast():
    """`archlab validate` of the paper's specs, wall time (printed; fails above 2 s)."""
    specs = sorted(str(p) for p in (ROOT / "specs" / "paper").glob("*.yaml"))
    best = float("inf")
    for _ in range(2):
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "archlab.cli", "validate", *specs],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        best = min(best, time.perf_counter() - start)
    print(f"archlab validate of {len(specs)} paper specs: {best:.2f} s")
    assert best < 2.0


def test_files_stay_small():
    long = []
    for name, path in modules().items():
        if name.startswith("archlab.kernels"):
            continue
        n = len(path.read_text().splitlines())
        if n > 420:
            long.append(f"{path.relative_to(ROOT)}: {n} lines")
    assert not long, long


def test_docs_table_of_kinds_is_the_registry():
    """docs/blocks.md holds `archlab kinds --markdown` as it prints now."""
    from archlab.cli.kinds import markdown

    assert markdown() in (ROOT / "docs" / "blocks.md").read_text(), (
        "regenerate the table in docs/blocks.md with `archlab kinds --markdown`"
    )
