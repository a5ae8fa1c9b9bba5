"""Sweep and probe tests: the commands run through `archlab.cli.main`, with `sweep` and
`probe` registered here until archlab/cli/__init__.py lists them; peaks cached in a temp
dir."""

from __future__ import annotations

import pytest
import torch

import archlab.cli as cli
from archlab.cli import probe, sweep


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg"))


@pytest.fixture
def archlab_main(monkeypatch):
    """`archlab.cli.main` with the sweep and probe commands registered."""
    names = {m.__name__ for m in cli.COMMANDS}
    extra = tuple(m for m in (sweep, probe) if m.__name__ not in names)
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, *extra))
    return cli.main


@pytest.fixture
def one_thread():
    """One torch thread: steady on a shared 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
