"""What `pip install parallel-ml` gets: a wheel that renders jobs and makes clusters without a checkout."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys
import zipfile

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_wheel_carries_the_chart_and_the_cluster_files_and_renders_outside_a_checkout(tmp_path):
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("parallel_ml-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    chart = {
        p.relative_to(ROOT / "charts" / "parallel-ml").as_posix()
        for p in (ROOT / "charts" / "parallel-ml").rglob("*")
        if p.is_file()
    }
    assert {f"deploy/helm_chart/{name}" for name in chart} <= names
    assert {
        f"deploy/{p.relative_to(ROOT / 'deploy').as_posix()}"
        for folder in ("kind", "gke")
        for p in (ROOT / "deploy" / folder).iterdir()
    } <= names
    assert "deploy/k8s/kubeflow.org_tfjobs.yaml" in names  # the CRD a namespaced user validates against

    site = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-2000:]
    # The installed copy, not this checkout, is imported: it comes first on the path.
    run = subprocess.run(
        [sys.executable, "-c", "import deploy.chart as c; print(c.chart_dir())"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert run.stdout.strip() == str(site / "deploy" / "helm_chart")
    render = subprocess.run(
        [sys.executable, "-m", "deploy", "render", "--name", "study", "--workers", "6", "--ps", "3"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(site)},
    )
    assert render.returncode == 0, render.stderr
    tfjob = next(o for o in yaml.safe_load_all(render.stdout) if o and o["kind"] == "TFJob")
    assert {k: v["replicas"] for k, v in tfjob["spec"]["tfReplicaSpecs"].items()} == {"Chief": 1, "Worker": 6, "PS": 3}
