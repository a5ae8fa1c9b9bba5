"""Sharded-training tests run on the CPU over gloo; device peaks are cached in a temp dir
(the spawned ranks inherit the variable)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.getbasetemp() / "xdg"))
