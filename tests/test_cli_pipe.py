"""Every command survives a closed pipe (`archlab ... | head -1`): it ends quietly with
status 0, never with a traceback or an "internal error"."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RAT = str(ROOT / "specs" / "paper" / "rat.yaml")
TINY = str(ROOT / "specs" / "tiny" / "rat.yaml")
COMMANDS = [
    ["schema"],
    ["kinds"],
    ["show", RAT],
    ["cost", RAT, "--by-block", "--seq", "1k,2k,4k"],
    ["validate", RAT, RAT, RAT],
    ["build", TINY, "--full"],
]


@pytest.mark.parametrize("argv", COMMANDS, ids=lambda a: a[0])
def test_closed_pipe_ends_quietly(argv):
    cmd = [sys.executable, "-m", "archlab.cli", *argv]
    writer = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    writer.stdout.read(1)  # one byte, then the reader leaves
    writer.stdout.close()
    err = writer.stderr.read().decode()
    status = writer.wait(timeout=120)
    assert status == 0, err
    assert "Traceback" not in err and "internal error" not in err, err
