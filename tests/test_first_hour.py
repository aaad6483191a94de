"""What a new user ran into in the first hour (issue 14), each now a test."""

from __future__ import annotations

import pytest
import yaml
from typer.testing import CliRunner

from deploy.cli import app
from deploy.spec import JobSpec
from pml_trainer.options import TrainOptions


def pmlctl(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize(
    ("text", "where", "suggestion"),
    [
        ("trainer: {epoch: 3}\n", "trainer.epoch", "epochs"),
        ("replicas: {worker: 2}\n", "replicas.worker", "workers"),
        ("namespce: ml\n", "namespce", "namespace"),
        ("policy: {backof_limit: 2}\n", "policy.backof_limit", "backoff_limit"),
    ],
)
def test_a_typo_in_a_job_file_gets_the_closest_field(tmp_path, text, where, suggestion):
    job = tmp_path / "job.yaml"
    job.write_text(text)
    result = pmlctl("render", "-f", str(job))
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {job}: {where}: unknown field; did you mean `{suggestion}`?"


def test_render_values_lists_every_field_a_job_file_can_set_and_no_random_name():
    result = pmlctl("render", "--values")
    assert result.exit_code == 0, result.output
    doc = yaml.safe_load(result.stdout)
    assert "name" not in doc and "NAME" in result.stdout.splitlines()[0]
    assert set(doc["trainer"]) == set(TrainOptions.model_fields) - {"model_dir"}
    assert set(doc) == set(JobSpec.model_fields) - {"name", "namespace"}
    assert JobSpec.model_validate(doc).trainer.epochs == TrainOptions().epochs  # a job file as it is
    named = yaml.safe_load(pmlctl("render", "--values", "--name", "study").stdout)
    assert named["name"] == "study" and named["trainer"]["model_dir"] == "runs/study"


def test_pmlctl_has_a_version():
    from importlib.metadata import version

    result = pmlctl("--version")
    assert result.exit_code == 0 and result.stdout == f"pmlctl {version('parallel-ml')}\n"


def test_submit_help_gives_pmlctls_own_model_dir_default():
    text = " ".join(pmlctl("submit", "--help").stdout.split())
    assert "[default: runs/<job name>]" in text and "runs/model" not in text
