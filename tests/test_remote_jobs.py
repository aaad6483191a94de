"""Distributed jobs (1 chief, 2 workers, 1 ps) whose model dir is on gs:// or s3://.

Each runs against a real server on 127.0.0.1 (see storage_servers.py), once per backend.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess

import pytest
from conftest import alive, job_state, pmlctl, start_pmlctl, wait_for
from storage_servers import remote, server  # noqa: F401 (fixtures)

from deploy import local
from deploy.spec import JobSpec
from pml_trainer import checkpoints, chiefs, faults
from pml_trainer.staging import folder as staging_dir

pytestmark = pytest.mark.slow
EVERY, EPOCHS = 30, 3
JOB = [
    "--workers",
    "2",
    "--ps",
    "1",
    "--epochs",
    str(EPOCHS),
    "--checkpoint-every-steps",
    str(EVERY),
    "--train-examples",
    "12000",
    "--batch-size",
    "128",
]


def published_steps(store) -> list[int]:
    return [checkpoints.step_of(n) for n in checkpoints.published(store)]


def saved_steps(steps_per_epoch: int) -> list[int]:
    """Every step the chief saves at: each multiple of EVERY, and each epoch's end."""
    total = EPOCHS * steps_per_epoch
    return sorted(set(range(EVERY, total + 1, EVERY)) | {e * steps_per_epoch for e in range(1, EPOCHS + 1)})


def assert_complete(store, keep: int = 3) -> None:
    """The model dir holds the SavedModel, metrics, events, and exactly the last `keep` checkpoints."""
    names = {e.name for e in store.list()}
    epochs = [json.loads(line) for line in store.get_bytes("metrics.jsonl").decode().splitlines()]
    assert [e["epoch"] for e in epochs] == list(range(1, EPOCHS + 1))  # none repeated, none missing
    result = json.loads(store.get_bytes("result.json"))
    assert result["saved_model"] == f"{store.location}/saved_model"
    assert {"saved_model/saved_model.pb", "saved_model/variables/variables.index"} <= names
    assert any(n.startswith("logs/train/events.out.tfevents.") for n in names)
    expected = saved_steps(epochs[0]["step"])[-keep:]
    assert published_steps(store) == expected
    # Exactly the listed checkpoints' files, each complete (ckpt-<incarnation>-<step>.*).
    files = sorted(n for n in names if n.startswith("checkpoints/ckpt-"))
    assert {checkpoints.checkpoint_of(f) for f in files} == set(checkpoints.published(store))
    assert all(checkpoints.missing_files(files, n) == [] for n in checkpoints.published(store))


def test_uploader_killed_mid_upload_leaves_the_previous_checkpoint_and_the_restart_publishes_what_it_staged(
    remote, tmp_path, pml_home, monkeypatch
):
    store = remote.store()
    marker = tmp_path / "paused"
    # The chief's uploader stops for good once the files of the first checkpoint past step 100
    # are up, before it publishes them; the test then kills the chief, uploader and all.
    monkeypatch.setenv(faults.PAUSE_BEFORE_PUBLISH, f"100:{marker}")
    job = start_pmlctl("submit", "--name", "cut", "--model-dir", remote.uri(), *JOB, cwd=tmp_path)
    wait_for(marker.is_file, timeout=300, what="the uploader to pause mid-upload", proc=job)
    cut = int(marker.read_text())
    before = published_steps(store)[-1]
    assert before < cut
    uploaded = {checkpoints.checkpoint_of(e.name) for e in store.list("checkpoints") if e.name.endswith(".index")}
    assert any(checkpoints.step_of(n) == cut for n in uploaded)  # every file is there, yet not published

    chief = next(t for t in job_state(pml_home, "cut")["tasks"] if t["role"] == "chief")
    os.kill(chief["pid"], signal.SIGKILL)
    # Training went on while the uploader was stopped: the chief's staging folder, which its
    # restart on this machine finds again, holds newer complete checkpoints than the pointer.
    wait_for(lambda: not alive(chief["pid"]), timeout=60, what="the chief to die")
    staged = checkpoints.latest_local(staging_dir(remote.uri(), "chief-0") / "checkpoints")
    assert checkpoints.step_of(staged.name) >= cut > before
    output, _ = job.communicate(timeout=600)
    assert job.returncode == 0, output[-3000:]
    assert "chief-0 exited with signal SIGKILL; restarting it" in output
    # It resumes from the newest of them, and publishes it, rather than train that stretch again.
    assert f"{staged.name} on this machine is newer than the published checkpoints" in output
    assert [int(s) for s in re.findall(r"resumed from checkpoint at step (\d+)", output)] == [
        checkpoints.step_of(staged.name)
    ]
    assert_complete(store)
    # The model dir counts the restart, which events and a Job's status may not (pml_trainer.chiefs).
    records = chiefs.parse({e.name: store.get_bytes(e.name) for e in store.list(chiefs.FOLDER)})
    assert [(r.get("how"), r.get("exit_code"), r["job"], r["resumed_from_step"]) for r in records] == [
        (None, None, "cut", 0),
        ("finished", 0, "cut", checkpoints.step_of(staged.name)),
    ]
    assert chiefs.summary(records) == {"chiefs": 2, "restarts": 1, "ended": {"vanished": 1}}

    # The job remembers its S3 endpoint: a later shell need not set it again.
    listing = pmlctl(
        "artifacts", "cut", cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "AWS_ENDPOINT_URL"}
    )
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"checkpoint .* checkpoints/ckpt-[0-9a-f]{8}-\d+ \(latest\)", listing.stdout)
    assert {"metrics.jsonl", "result.json", "saved_model/"} <= set(listing.stdout.split())
    assert "logs/train/events.out.tfevents." in listing.stdout


def test_storage_outage_during_training_loses_no_checkpoint(remote, tmp_path, pml_home):
    store = remote.store()
    job = start_pmlctl("submit", "--name", "outage", "--evaluator", "--model-dir", remote.uri(), *JOB, cwd=tmp_path)
    wait_for(lambda: store.get_bytes("checkpoints/checkpoint"), timeout=300, what="a published checkpoint", proc=job)
    stopped_at = published_steps(store)[-1]
    remote.server.stop()
    log = pml_home / "jobs" / "outage" / "chief-0.log"
    wait_for(
        lambda: re.search(r"WARNING chief-0 cannot ", log.read_text()),
        timeout=120,
        what="the chief's warning about the outage",
        proc=job,
    )
    # Training goes on: the chief saves newer checkpoints locally while the storage is away, until
    # two wait to be published; then it pauses, so that a lost pod loses no more than that.
    staged = staging_dir(remote.uri(), "chief-0") / "checkpoints"
    wait_for(
        lambda: "pausing training: storage" in log.read_text(),
        timeout=300,
        what="training to pause for the outage",
        proc=job,
    )
    assert any(checkpoints.step_of(p.stem) > stopped_at for p in staged.glob("ckpt-*.index"))
    remote.server.start()
    output, _ = job.communicate(timeout=600)
    assert job.returncode == 0, output[-3000:]
    assert re.search(r"answers again: uploaded \S+ after \d+s of retries", output)
    assert re.search(r"training resumes after a pause of \d+s", output)
    assert_complete(store)
    # The evaluator read the checkpoints through the same layer, and evaluated the last one.
    evaluations = [json.loads(line) for line in store.get_bytes("eval.jsonl").decode().splitlines()]
    assert evaluations[-1]["step"] == published_steps(store)[-1]
    assert evaluations[-1]["checkpoint"] == f"{store.location}/checkpoints/{checkpoints.published(store)[-1]}"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="a private mount needs root")
def test_ps_workers_fetch_a_remote_image_folder_to_their_own_disk(remote, tmp_path):
    """On Kubernetes each worker pod has its own disk, yet runs the pipeline the chief built,
    file paths and all. Here the worker's data cache is a private, empty tmpfs at the same path."""
    from PIL import Image

    photos = remote.store("photos")
    for label, name in enumerate(["daisy", "tulips"]):
        for i in range(12):
            png = tmp_path / f"{name}-{i}.png"
            Image.new("RGB", (24, 24), (label * 200, 0, 0)).save(png)
            photos.put_file(png, f"{name}/{i}.png")
    cache = tmp_path / "cache"
    cache.mkdir()
    spec = JobSpec(
        name="pods",
        replicas={"workers": 1, "ps": 1},
        trainer={
            "dataset": f"images:{remote.uri('photos')}",
            "epochs": 2,
            "batch_size": 4,
            "model_dir": str(tmp_path / "model"),
        },
    )
    tasks = local.plan(spec, tmp_path).tasks
    procs = {}
    try:
        for task in tasks:
            argv = task.argv
            if task.role == "worker":
                argv = [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    'mount -t tmpfs pml-cache "$0" && exec "$@"',
                    str(cache),
                    *argv,
                ]
            procs[task.role] = subprocess.Popen(
                argv,
                cwd=tmp_path,
                text=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={**os.environ, **task.env, "PML_DATA_CACHE": str(cache)},
            )
        outputs = {role: proc.communicate(timeout=180)[0] for role, proc in procs.items()}
    finally:
        for proc in procs.values():
            proc.kill()
    assert procs["chief"].returncode == 0, outputs["chief"][-3000:]
    assert procs["worker"].returncode == procs["ps"].returncode == 0, outputs["worker"][-3000:]
    # Both downloaded the folder, each to its own disk, at the same path.
    for role in ("chief", "worker"):
        assert f"downloading {remote.uri('photos')} [" in outputs[role]
    assert f"{remote.uri('photos')}: downloaded to {cache}/" in outputs["worker"]
    # 24 images: 2 for test, 2 for validation, 20 to train on in 5 steps of 4 per epoch.
    assert json.loads((tmp_path / "model" / "result.json").read_text())["steps"] == 10
