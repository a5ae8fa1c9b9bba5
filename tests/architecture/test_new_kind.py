"""A new block kind is one folder: written into a temporary copy of the package, with no
other file touched, it validates, shows, costs (training memory and crossovers too),
builds, decodes, profiles on the CPU, is listed by `archlab kinds` and the schema, and
passes the contract suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from dwconv_kind import LAYER, RECORD

ROOT = Path(__file__).resolve().parents[2]

SPEC = """\
archlab: 1
name: conv-hybrid
model: {d_model: 32, vocab_size: 64, max_seq_len: 64, dtype: float32}
defaults: {attention: {heads: 2}}
symbols: {P: {parallel: [dwconv, attention]}}
stack: "(C- A-)x2 P-"
"""
OTHER = """\
archlab: 1
name: attention-only
model: {d_model: 32, vocab_size: 64, max_seq_len: 64, dtype: float32}
defaults: {attention: {heads: 2}}
stack: "(A-)x3"
"""
DRIVER = """\
import json, sys
import torch
import archlab
from archlab.cli import main

spec, other = sys.argv[1], sys.argv[2]
fast = ["--repeats", "1", "--warmup", "0", "--max-time", "0.05", "--seq", "16"]
commands = [
    ["validate", spec],
    ["show", spec],
    ["cost", spec, "--seq", "64,1k", "--train-memory", "--by-kind"],
    ["cost", spec, other, "--crossover"],
    ["build", spec, "--seq", "8"],
    ["kinds"],
    ["profile", spec, "--mode", "train,prefill,decode", "--d-model", "32", *fast],
    ["profile", spec, "--layer", "dwconv:width=3", "--mode", "train", *fast],
]
for args in commands:
    rc = main(args)
    assert rc == 0, (args, rc)
    print("ok:", " ".join(args[:1]), flush=True)
from archlab.lang.spec import json_schema
assert "dwconv" in json.dumps(json_schema())
model = archlab.build(spec, dtype=torch.float32)
ids = torch.randint(0, 64, (2, 12))
with torch.no_grad():
    full = model(ids)
    cache = model.allocate_cache(2, 12)
    out = [model.prefill(ids[:, :5], cache)]
    out += [model.step(ids[:, t : t + 1], cache) for t in range(5, 12)]
err = (torch.cat(out, 1) - full).abs().max().item()
assert err < 1e-4, err
assert archlab.cost(spec).params == sum(p.numel() for p in model.parameters())
print("ok: decode", flush=True)
"""


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A copy of the package with blocks/dwconv/ added, importable as `archlab`."""
    top = tmp_path_factory.mktemp("pkg")
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "archlab", top / "archlab", ignore=ignore)
    shutil.copytree(ROOT / "blocks", top / "archlab" / "blocks", ignore=ignore)
    shutil.copytree(ROOT / "kernels", top / "archlab" / "kernels", ignore=ignore)
    room = top / "archlab" / "blocks" / "dwconv"
    room.mkdir()
    (room / "__init__.py").write_text(RECORD)
    (room / "layer.py").write_text(LAYER)
    (top / "conv.yaml").write_text(SPEC)
    (top / "attn.yaml").write_text(OTHER)
    return top


def _run(package: Path, *args: str, timeout: float = 600) -> str:
    env = {**os.environ, "PYTHONPATH": str(package), "TRITON_INTERPRET": "1"}
    done = subprocess.run(
        [sys.executable, *args],
        cwd=package,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def test_the_copy_is_what_runs(package):
    out = _run(package, "-c", "import archlab.blocks.dwconv as k; print(k.__file__)")
    assert out.strip().startswith(str(package))


def test_every_command_runs_the_new_kind(package):
    out = _run(package, "-c", DRIVER, "conv.yaml", "attn.yaml")
    assert "ok: decode" in out
    assert "dwconv" in out  # listed by `archlab kinds`, shown by `show`


def test_contract_suite_covers_the_new_kind(package):
    out = _run(
        package,
        "-m",
        "pytest",
        str(ROOT / "tests" / "blocks" / "test_contract.py"),
        "-p",
        "no:cacheprovider",
        "-k",
        "dwconv",
        f"--rootdir={ROOT}",
    )
    summary = out.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, out
