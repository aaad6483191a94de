"""What every test of the hosts tier needs: root, and an environment for jobs on test hosts."""

from __future__ import annotations

import os
import pathlib

import pytest

TESTS = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def as_root():
    if os.geteuid() != 0:
        pytest.skip("the hosts tier makes network namespaces: run it as root (`make test-hosts`)")


@pytest.fixture
def hosts_env(as_root, tmp_path, monkeypatch) -> pathlib.Path:
    """PML_HOME for the jobs' records, and tests/ on PYTHONPATH for their supervisor (hosts.supervise)."""
    home = tmp_path / "pml-home"
    monkeypatch.setenv("PML_HOME", str(home))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
    return home
