"""`pmlctl compare -t k8s`: the study's comparison submitted to a cluster (the fake API server of
tests/k8s_fake.py), each run's metrics read from its model dir on an S3 server (moto), and a run
that fails reported in its row without losing the others. The cluster's part is played by a
thread: for each TFJob the CLI creates, it writes what the chief would write, then ends the job.
"""

from __future__ import annotations

import json
import threading

import pytest
from storage_servers import S3Server
from test_k8s import crd, kube  # noqa: F401 (fixtures)
from typer.testing import CliRunner

from deploy.cli import app
from pml_trainer import storage

SECONDS = {"cmp-0-0": 100.0, "cmp-2-0": 40.0}  # the baseline, and the 2x1 cluster; cmp-1-0 fails


@pytest.fixture
def s3(tmp_path, monkeypatch):
    server = S3Server(tmp_path / "s3")
    server.start()
    server.make_bucket("models")
    for key, value in server.env().items():
        monkeypatch.setenv(key, value)
    yield server
    server.stop()


def model_dir_of(tfjob: dict) -> str:
    args = tfjob["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]["args"]
    return args[args.index("--model-dir") + 1]


def play_the_cluster(kube, s3) -> None:
    """Each run, one after another: the chief's metrics in S3 and the TFJob Succeeded, or Failed."""
    for name in ("cmp-0-0", "cmp-1-0", "cmp-2-0"):
        tfjob = kube.wait_for(lambda name=name: kube.objects("tfjobs").get(name))
        if name not in SECONDS:
            kube.set_status(
                "tfjobs",
                name,
                {
                    "conditions": [
                        {
                            "type": "Failed",
                            "status": "True",
                            "reason": "TFJobFailed",
                            "message": f"TFJob default/{name} has failed because 1 Chief replica(s) failed.",
                        }
                    ]
                },
            )
            continue
        store = storage.open_store(model_dir_of(tfjob), s3.url)
        store.put_bytes(
            b'{"epoch": 1, "step": 50, "loss": 0.9, "accuracy": 0.7, "val_accuracy": 0.68}\n'
            b'{"epoch": 2, "step": 100, "loss": 0.5, "accuracy": 0.8, "val_accuracy": 0.79}\n',
            "metrics.jsonl",
        )
        store.put_bytes(
            json.dumps(
                {"test_accuracy": 0.81, "train_seconds": SECONDS[name], "steps": 100, "global_batch": 256}
            ).encode(),
            "result.json",
        )
        kube.set_status(
            "tfjobs",
            name,
            {
                "conditions": [
                    {
                        "type": "Succeeded",
                        "status": "True",
                        "reason": "TFJobSucceeded",
                        "message": f"TFJob default/{name} successfully completed.",
                    }
                ]
            },
        )


def test_compare_on_kubernetes_reads_each_runs_metrics_from_s3_and_keeps_going_after_a_failure(kube, s3, tmp_path):
    cluster = threading.Thread(target=play_the_cluster, args=(kube, s3), daemon=True)
    cluster.start()
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "compare",
            "-t",
            "k8s",
            "--name",
            "cmp",
            "--shape",
            "1x0",
            "--shape",
            "2x1",
            "--epochs",
            "2",
            "--model-dir",
            "s3://models/study",
            "--s3-endpoint",
            s3.url,
            "--out",
            str(out),
        ],
    )
    cluster.join(10)
    assert result.exit_code == 1, result.output  # a run failed; the table says which, and the others ran
    assert result.stderr.splitlines()[-1] == "error: 1 run(s) failed; their rows say why"

    tfjobs = kube.objects("tfjobs")
    assert sorted(tfjobs) == ["cmp-0-0", "cmp-1-0", "cmp-2-0"]
    assert {n: {k: v["replicas"] for k, v in j["spec"]["tfReplicaSpecs"].items()} for n, j in tfjobs.items()} == {
        "cmp-0-0": {"Chief": 1},
        "cmp-1-0": {"Chief": 1, "Worker": 1},
        "cmp-2-0": {"Chief": 1, "Worker": 2, "PS": 1},
    }
    assert {j["metadata"]["labels"]["parallel-ml/experiment"] for j in tfjobs.values()} == {"cmp"}
    assert {model_dir_of(j) for j in tfjobs.values()} == {f"s3://models/study/{n}" for n in tfjobs}

    rows = json.loads((out / "compare.json").read_text())["tables"][0]["rows"]
    assert [(r["shape"], r["runs"], r["seconds"], r["speedup"]) for r in rows] == [
        ("1 process", 1, 100.0, 1.0),
        ("1 chief, 1 worker, 0 ps", 0, None, None),
        ("1 chief, 2 workers, 1 ps", 1, 40.0, 2.5),
    ]
    assert rows[1]["failed"] == [
        "job cmp-1-0 failed: TFJob/cmp-1-0: TFJobFailed TFJob default/cmp-1-0 has "
        "failed because 1 Chief replica(s) failed.; `pmlctl logs cmp-1-0 -t k8s` shows the "
        "chief's log"
    ]
    assert rows[0]["loss"] == 0.5 and rows[0]["test_accuracy"] == 0.81 and rows[2]["examples_per_sec"] == 100 * 256 / 40
    table = result.stdout.splitlines()
    assert any(line.startswith("1 chief, 1 worker, 0 ps") and "failed: job cmp-1-0 failed" in line for line in table)

    listed = CliRunner().invoke(app, ["list", "-t", "k8s"]).stdout.splitlines()
    assert [line.split()[:3] for line in listed[1:]] == [["cmp", "tfjob", "Failed"]]
    assert "experiment: 3 runs (2 Succeeded, 1 Failed)" in listed[1]


def test_compare_on_kubernetes_needs_a_model_dir_it_can_read(kube, tmp_path):
    result = CliRunner().invoke(app, ["compare", "-t", "k8s", "--shape", "1x0", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and not kube.calls("POST")
    assert (
        result.stderr.startswith("error: --model-dir runs/compare-")
        and "give --model-dir gs://BUCKET/PATH or s3://BUCKET/PATH, where pmlctl reads their metrics" in result.stderr
    )


def test_sweeping_cores_is_refused_where_tasks_cannot_be_pinned(kube, tmp_path):
    result = CliRunner().invoke(app, ["sweep", "-t", "k8s", "--param", "cores=1", "--model-dir", "s3://models/x"])
    assert result.exit_code == 2 and not kube.calls("POST")
    assert "--param cores: -t k8s cannot pin a job to CPUs" in result.stderr
