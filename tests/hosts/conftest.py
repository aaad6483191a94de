"""What the hosts tier's tests need: root, an environment for jobs on test hosts, and the
undisturbed run the scenarios compare themselves with."""

from __future__ import annotations

import os
import pathlib

import pytest

from hosts.scenario import HostJob, median_rate, result

TESTS = pathlib.Path(__file__).resolve().parents[1]


def require_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("the hosts tier makes network namespaces: run it as root (`make test-hosts`)")


@pytest.fixture
def as_root():
    require_root()


@pytest.fixture(scope="session")
def hosts_env(tmp_path_factory):
    """PML_HOME for the jobs' records, and tests/ on PYTHONPATH for their supervisor (hosts.supervise)."""
    require_root()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PML_HOME", str(tmp_path_factory.mktemp("pml-home")))
        patch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TESTS), os.environ.get("PYTHONPATH")])))
        yield


@pytest.fixture(scope="session")
def undisturbed(hosts_env, tmp_path_factory) -> dict:
    """The scenarios' job left alone, once per session: its test accuracy and examples/s."""
    model_dir = tmp_path_factory.mktemp("undisturbed") / "model"
    with HostJob("calm", model_dir) as job:
        job.submit()
        outcome = job.wait()
        assert outcome.exit_code == 0, job.output()[-3000:]
    return {"accuracy": result(model_dir)["test_accuracy"], "rate": median_rate(model_dir)}
