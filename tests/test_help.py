"""Every `--help` of both programs answers: a help text with a stray % once crashed the
trainer's, although the trainer's own usage errors send users to it."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer
from conftest import ROOT
from typer.testing import CliRunner

from deploy.cli import app


def commands(group, path: tuple[str, ...] = ()):
    yield path
    for name, sub in getattr(group, "commands", {}).items():
        yield from commands(sub, (*path, name))


ALL = sorted(commands(typer.main.get_command(app)))


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "pmlctl")
def test_every_pmlctl_help(path):
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "Traceback" not in result.output


def test_the_trainer_help_lists_every_flag():
    from pml_trainer.options import PARAM_FLAG, TrainOptions, flag

    done = subprocess.run(
        [sys.executable, "-m", "pml_trainer", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    flags = [PARAM_FLAG if name == "params" else flag(name) for name in TrainOptions.model_fields]
    assert [f for f in flags if f not in done.stdout] == []
    assert "20% (the study's flowers)" in done.stdout
