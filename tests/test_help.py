"""Every `--help` of both programs answers: a help text with a stray % once crashed the
trainer's, although the trainer's own usage errors send users to it. Its examples stay whole:
click rewraps a paragraph to the terminal unless it begins with \\b, and once broke
`--model-dir` in two."""

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


ROOT_COMMAND = typer.main.get_command(app)
ALL = sorted(commands(ROOT_COMMAND))


def examples(path: tuple[str, ...]) -> list[str]:
    command = ROOT_COMMAND
    for name in path:
        command = command.commands[name]
    lines = (
        line.strip().removeprefix("Example:").removeprefix("Examples:").strip()
        for line in (command.help or "").splitlines()
    )
    return [line for line in lines if line.startswith("pmlctl ")]


@pytest.mark.parametrize("path", ALL, ids=lambda p: " ".join(p) or "pmlctl")
def test_every_pmlctl_help(path):
    result = CliRunner().invoke(app, [*path, "--help"], terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "Traceback" not in result.output
    shown = {line.strip() for line in result.output.splitlines()}
    assert [example for example in examples(path) if example not in shown] == []


def test_the_examples_are_found():
    assert "pmlctl plan -f job.yaml --budget 5usd -o json" in examples(("plan",))


def test_the_trainer_help_lists_every_flag():
    from pml_trainer.options import PARAM_FLAG, TrainOptions, flag

    done = subprocess.run(
        [sys.executable, "-m", "pml_trainer", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    flags = [PARAM_FLAG if name == "params" else flag(name) for name in TrainOptions.model_fields]
    assert [f for f in flags if f not in done.stdout] == []
    assert "20% (the study's flowers)" in done.stdout
