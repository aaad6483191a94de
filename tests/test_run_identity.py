"""A run knows what it is (issue 12, item 5): run.json beside its first checkpoint names the
settings that define it, and a relaunch that differs is refused in one line, before any task
starts, unless --restart discards the old run. More epochs on the same run is a resume.

The first tests need no TensorFlow: run.json is written as the chief writes it. The slow ones
train a real run first and relaunch the trainer and pmlctl on copies of its model dir.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest
from conftest import metrics, pmlctl, said
from storage_servers import remote, server  # noqa: F401 (fixtures)

from pml_trainer import exits, fingerprint
from pml_trainer.options import TrainOptions

# A small run: 1080 training examples in 10 steps of 108 per epoch, 180 test examples.
RUN = ["--neurons", "64", "--seed", "3", "--train-examples", "1200", "--batch-size", "108", "--epochs", "1"]
STEPS_PER_EPOCH = 10
WAY_OUT = "use another --model-dir, or --restart to discard that run and start afresh"


def options(model_dir, *argv: str) -> TrainOptions:
    from pml_trainer.options import parse_args

    return parse_args([*RUN, *argv, "--model-dir", str(model_dir)])


def trainer(*argv: str, cwd: pathlib.Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pml_trainer", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )


def refusal(model_dir, *differences: str) -> str:
    return f"error: --model-dir {model_dir} holds another run ({'; '.join(differences)}): {WAY_OUT}"


def snapshot(folder: pathlib.Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


# --- without TensorFlow -------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path) -> pathlib.Path:
    """A model dir as a 64-neuron run leaves it (its settings, and files for --restart to delete)."""
    model_dir = tmp_path / "model"
    fingerprint.write(options(model_dir), model_dir)
    for name in (
        "checkpoints/checkpoint",
        "checkpoints/ckpt-10.index",
        "metrics.jsonl",
        "logs/train/events",
        "saved_model/saved_model.pb",
        "result.json",
        "eval.jsonl",
    ):
        (model_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (model_dir / name).write_text("old run")
    (model_dir / "notes.txt").write_text("the user's own file")
    return model_dir


def test_pmlctl_refuses_other_neurons_in_one_line(run_dir, tmp_path, pml_home):
    result = pmlctl(
        "submit", "--name", "again", "--dry-run", *RUN, "--neurons", "256", "--model-dir", str(run_dir), cwd=tmp_path
    )
    assert result.returncode == exits.BAD_INPUT
    assert result.stderr.splitlines() == [refusal(run_dir, "--neurons 64 there, 256 here")]
    assert result.stdout == ""  # not even the plan


def test_the_trainer_refuses_before_tensorflow_loads(run_dir, tmp_path):
    before = snapshot(run_dir)
    # `python -m pml_trainer`'s main(), then whether it imported TensorFlow.
    probe = "import sys; from pml_trainer.__main__ import main; code = main(sys.argv[1:]); print(sorted(m for m in sys.modules if m == 'tensorflow')); sys.exit(code)"
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            *RUN,
            "--neurons",
            "256",
            "--seed",
            "4",
            "--learning-rate",
            "0.05",
            "--model-dir",
            str(run_dir),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == exits.BAD_INPUT
    assert [said(line) for line in result.stderr.splitlines()] == [
        refusal(
            run_dir, "--neurons 64 there, 256 here", "--seed 3 there, 4 here", "--learning-rate 0.001 there, 0.05 here"
        )
    ]
    assert result.stdout == "[]\n"
    assert snapshot(run_dir) == before


def test_what_may_change_on_a_resume(run_dir):
    """More epochs, another model dir path, checkpointing, threads, data location: the same run."""
    same = options(
        run_dir,
        "--epochs",
        "9",
        "--checkpoint-every-steps",
        "7",
        "--keep-checkpoints",
        "1",
        "--steps-per-execution",
        "3",
        "--intra-op-threads",
        "1",
        "--data-dir",
        "/elsewhere",
    )
    assert fingerprint.admit(same, may_discard=True) is None
    assert fingerprint.resumes(same)
    assert (run_dir / "checkpoints" / "ckpt-10.index").is_file()


def test_the_cnn_has_no_neurons_to_differ_in(tmp_path):
    cnn = options(tmp_path, "--model", "cnn")
    fingerprint.write(cnn, tmp_path)
    assert fingerprint.differences(fingerprint.read(cnn), options(tmp_path, "--model", "cnn", "--neurons", "9")) == []
    assert fingerprint.differences(fingerprint.read(cnn), options(tmp_path)) == ["--model cnn there, mlp here"]


def test_restart_discards_the_other_run_only(run_dir):
    restart = options(run_dir, "--neurons", "256", "--restart")
    assert not fingerprint.resumes(restart)  # a mirrored worker that looks first starts afresh too
    note = fingerprint.admit(restart, may_discard=False)
    assert note == f"--restart: the chief discards the run in {run_dir} (--neurons 64 there, 256 here) when it starts"
    assert (run_dir / fingerprint.FILE).is_file()

    note = fingerprint.admit(restart, may_discard=True)
    assert (
        note == f"--restart: discarded the run in {run_dir} (--neurons 64 there, 256 here): 8 file(s); starting afresh"
    )
    assert snapshot(run_dir).keys() == {"notes.txt"}
    # The same run, relaunched with the same flags (a chief restarted after a preemption), resumes.
    fingerprint.write(restart, run_dir)
    assert fingerprint.admit(restart, may_discard=True) is None and fingerprint.resumes(restart)


def test_an_unreadable_run_json_is_refused_unless_restarted(run_dir):
    (run_dir / fingerprint.FILE).write_text("{not json")
    with pytest.raises(fingerprint.Mismatch, match=re.escape(f"--model-dir {run_dir}: its run.json is not what")):
        fingerprint.admit(options(run_dir), may_discard=True)
    assert "discarded" in fingerprint.admit(options(run_dir, "--restart"), may_discard=True)


CUT_SHORT = "its run.json is empty or cut short (a crash while it was written); resuming as without one"


@pytest.mark.parametrize(
    "left",
    [b"", b"\0" * 300, b'{\n  "settings": {\n    "--model": "mlp",\n    "--neu'],
    ids=["empty", "zero-filled", "a prefix"],
)
def test_a_run_json_a_crash_cut_short_resumes_the_run_it_names(run_dir, left, tmp_path, pml_home):
    """Issue 25, defect 7: what a power loss leaves of a run.json renamed before its data reached
    the disk. The checkpoints prove a run is there; refusing (exit 2, or --restart, which discards
    it) made a crash the job should survive fatal to the run."""
    (run_dir / fingerprint.FILE).write_bytes(left)
    note = fingerprint.admit(options(run_dir), may_discard=True)
    assert note.startswith(f"--model-dir {run_dir}: {CUT_SHORT}")
    assert fingerprint.resumes(options(run_dir)) and fingerprint.read(options(run_dir)) is None
    assert (run_dir / "checkpoints" / "ckpt-10.index").is_file()
    result = pmlctl("submit", "--name", "again", "--dry-run", *RUN, "--model-dir", str(run_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"note: {note}"]
    # --restart discards it, as a run that never saved its settings: nothing shows it to be this run.
    note = fingerprint.admit(options(run_dir, "--restart"), may_discard=True)
    why = "its run.json is empty or cut short"
    assert note == f"--restart: discarded the run in {run_dir} ({why}): 8 file(s); starting afresh"


def test_a_run_json_that_is_not_cut_short_is_refused_with_a_way_out_that_keeps_the_run(run_dir):
    """Garbage, or JSON of another shape, is not what a crash leaves: it may be another program's
    file, so it is refused; deleting it resumes the run as a model dir from before run.json."""
    for text in ("{not json", '{"other": 1}', "[1, 2]"):
        (run_dir / fingerprint.FILE).write_text(text)
        with pytest.raises(fingerprint.Mismatch) as refused:
            fingerprint.admit(options(run_dir), may_discard=True)
        assert "delete its run.json to resume with this launch's settings" in str(refused.value)
    (run_dir / fingerprint.FILE).unlink()
    assert fingerprint.admit(options(run_dir), may_discard=True) is None and fingerprint.resumes(options(run_dir))


def test_pmlctl_says_what_restart_will_discard(run_dir, tmp_path, pml_home):
    result = pmlctl(
        "submit",
        "--name",
        "again",
        "--dry-run",
        *RUN,
        "--neurons",
        "256",
        "--restart",
        "--model-dir",
        str(run_dir),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"note: --restart: the chief discards the run in {run_dir} (--neurons 64 there, 256 here) when it starts"
    ]
    assert re.search(r"command: .* --restart True\b", result.stdout)  # passed on to every task
    assert (run_dir / "checkpoints" / "ckpt-10.index").is_file()  # pmlctl itself deletes nothing


# --- real runs ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> pathlib.Path:
    """The model dir of a real 64-neuron run of one epoch; tests relaunch on copies of it."""
    work = tmp_path_factory.mktemp("trained")
    result = trainer(*RUN, "--model-dir", str(work / "model"), cwd=work)
    assert result.returncode == 0, result.stderr[-3000:]
    return work / "model"


@pytest.fixture
def model_dir(trained, tmp_path) -> pathlib.Path:
    shutil.copytree(trained, tmp_path / "model")
    return tmp_path / "model"


@pytest.mark.slow
def test_a_relaunch_at_256_neurons_is_refused_before_any_task_starts(model_dir, tmp_path, pml_home):
    assert json.loads((model_dir / fingerprint.FILE).read_text())["settings"]["--neurons"] == 64
    before = snapshot(model_dir)
    result = pmlctl(
        "submit",
        "--name",
        "again",
        "--workers",
        "2",
        "--ps",
        "1",
        *RUN,
        "--neurons",
        "256",
        "--model-dir",
        str(model_dir),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == exits.BAD_INPUT
    assert result.stderr.splitlines() == [refusal(model_dir, "--neurons 64 there, 256 here")]
    assert not (pml_home / "jobs" / "again").exists()  # no task was started, not even planned
    assert snapshot(model_dir) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "difference"),
    [
        (["--neurons", "256"], "--neurons 64 there, 256 here"),
        (["--model", "cnn"], "--model mlp there, cnn here"),
        (["--seed", "4"], "--seed 3 there, 4 here"),  # used to resume, train nothing, report the old weights
        (["--learning-rate", "0.05"], "--learning-rate 0.001 there, 0.05 here"),  # used to keep 0.001
        (["--batch-size", "54"], "--batch-size 108 there, 54 here"),
    ],
)
def test_the_chief_refuses_another_run_in_one_line(model_dir, tmp_path, flags, difference):
    before = snapshot(model_dir)
    result = trainer(*RUN, *flags, "--model-dir", str(model_dir), cwd=tmp_path)
    assert result.returncode == exits.BAD_INPUT and not exits.is_retryable(result.returncode)
    assert [said(line) for line in result.stderr.splitlines()] == [refusal(model_dir, difference)]
    assert snapshot(model_dir) == before


@pytest.mark.slow
def test_more_epochs_resume_the_same_run(model_dir, tmp_path):
    result = trainer(*RUN, "--epochs", "2", "--model-dir", str(model_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from checkpoint at step {STEPS_PER_EPOCH} (epoch 2)" in result.stderr
    assert [(e["epoch"], e["step"]) for e in metrics(model_dir)] == [(1, STEPS_PER_EPOCH), (2, 2 * STEPS_PER_EPOCH)]
    assert json.loads((model_dir / "result.json").read_text())["steps"] == 2 * STEPS_PER_EPOCH


@pytest.mark.slow
def test_restart_starts_afresh_and_a_restarted_chief_then_resumes_its_own_run(model_dir, tmp_path):
    result = trainer(*RUN, "--neurons", "256", "--restart", "--model-dir", str(model_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"--restart: discarded the run in {model_dir} (--neurons 64 there, 256 here)" in result.stderr
    assert "resumed" not in result.stderr
    assert json.loads((model_dir / fingerprint.FILE).read_text())["settings"]["--neurons"] == 256
    assert [e["epoch"] for e in metrics(model_dir)] == [1]
    # The same flags again, as a chief restarted after a preemption has them: its own run resumes
    # (restoring the 256-neuron checkpoint, every object matched), nothing is discarded.
    result = trainer(
        *RUN, "--neurons", "256", "--restart", "--epochs", "2", "--model-dir", str(model_dir), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "discarded" not in result.stderr
    assert f"resumed from checkpoint at step {STEPS_PER_EPOCH} (epoch 2)" in result.stderr
    assert [e["epoch"] for e in metrics(model_dir)] == [1, 2]


@pytest.mark.slow
def test_a_checkpoint_of_another_network_without_run_json_is_refused_in_one_line(model_dir, tmp_path):
    """A model dir from before run.json: the restore itself checks that every object matched."""
    (model_dir / fingerprint.FILE).unlink()
    result = trainer(*RUN, "--neurons", "256", "--model-dir", str(model_dir), cwd=tmp_path)
    assert result.returncode == exits.BAD_INPUT, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert re.fullmatch(
        rf"error: --model-dir {re.escape(str(model_dir))}: checkpoint ckpt-(\S+-)?{STEPS_PER_EPOCH} does not "
        rf"fit this model \(.+\): {re.escape(WAY_OUT)}",
        said(result.stderr.splitlines()[-1]),
    )
    # The same network resumes, and the run gets its run.json.
    result = trainer(*RUN, "--epochs", "2", "--model-dir", str(model_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from checkpoint at step {STEPS_PER_EPOCH}" in result.stderr
    saved = json.loads((model_dir / fingerprint.FILE).read_text())["settings"]
    assert saved == fingerprint.defining_settings(options(model_dir))


@pytest.mark.slow
def test_the_chief_resumes_past_an_empty_run_json_and_writes_it_again(model_dir, tmp_path):
    """A power loss after run.json's rename but before its data: the next start resumes, not exit 2."""
    (model_dir / fingerprint.FILE).write_bytes(b"")
    result = trainer(*RUN, "--epochs", "2", "--model-dir", str(model_dir), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert CUT_SHORT in result.stderr
    assert f"resumed from checkpoint at step {STEPS_PER_EPOCH} (epoch 2)" in result.stderr
    saved = json.loads((model_dir / fingerprint.FILE).read_text())["settings"]
    assert saved == fingerprint.defining_settings(options(model_dir))


@pytest.mark.slow
def test_a_remote_run_is_refused_by_pmlctl_and_by_the_chief(remote, tmp_path, pml_home):
    result = trainer(*RUN, "--model-dir", remote.uri(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(remote.store().get_bytes(fingerprint.FILE))["settings"]["--neurons"] == 64
    submitted = pmlctl(
        "submit",
        "--name",
        "again",
        "--workers",
        "0",
        "--ps",
        "0",
        *RUN,
        "--neurons",
        "256",
        "--model-dir",
        remote.uri(),
        cwd=tmp_path,
        timeout=120,
    )
    assert submitted.returncode == exits.BAD_INPUT
    assert submitted.stderr.splitlines() == [refusal(remote.uri(), "--neurons 64 there, 256 here")]
    assert not (pml_home / "jobs" / "again").exists()
    result = trainer(*RUN, "--neurons", "256", "--model-dir", remote.uri(), cwd=tmp_path)
    assert result.returncode == exits.BAD_INPUT
    assert [said(line) for line in result.stderr.splitlines()] == [
        refusal(remote.uri(), "--neurons 64 there, 256 here")
    ]
