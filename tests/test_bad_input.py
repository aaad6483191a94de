"""Bad input, one table: every case runs the real command and is refused the same way.

`pmlctl` or `python -m pml_trainer` runs as a subprocess with flags, job or values files, TF_CONFIG,
storage locations, credentials or a kubeconfig that are wrong. Each case must end with exactly one
line on stderr, `error: ...`, that names the field and the fix; with exit code 2 (bad input) or 3
(data or storage unavailable, trainer/exits.py); without a traceback; and without leaving
anything behind: no file in the work dir or $PML_HOME, no bucket, no process. Every input is
refused before training starts, most before TensorFlow is even imported.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import shlex
import subprocess
import sys
import urllib.request
from typing import NamedTuple

import pytest
import yaml
from conftest import processes_mentioning, said
from k8s_fake import TOKEN, FakeKube
from storage_servers import ACCESS_KEY, SECRET_KEY, S3Server

COMMANDS = {"pmlctl": [sys.executable, "-m", "deploy"], "trainer": [sys.executable, "-m", "pml_trainer"]}
# The environment a case starts from: none of the machine's credentials, clusters or TF_CONFIG.
CLEARED = (
    "TF_CONFIG",
    "KUBECONFIG",
    "STORAGE_EMULATOR_HOST",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ENDPOINT_URL",
    "PML_TFJOB_CRD",
)


class Case(NamedTuple):
    id: str
    command: str  # "pmlctl ..." or "trainer ..."; {s3} is the S3 server that checks keys
    code: int
    field: str  # a distinctive part of the error line naming what is wrong...
    fix: str  # ...and of the part saying how to fix it
    files: dict = {}  # noqa: RUF012 (a NamedTuple's default, never mutated); written into the work dir first; {kube} is the fake API server
    env: dict = {}  # noqa: RUF012


def tf_config(cluster, task=None) -> dict:
    return {"TF_CONFIG": json.dumps({"cluster": cluster, **({"task": task} if task else {})})}


def kubeconfig(
    server: str = "{kube}", token: str = TOKEN, current: str | None = "kind-pml", cluster: str = "fake"
) -> dict:
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "dev", "user": {"token": token}}],
        "contexts": [{"name": "kind-pml", "context": {"cluster": cluster, "user": "dev"}}],
    }
    if current:
        doc["current-context"] = current
    return {"kubeconfig": yaml.safe_dump(doc)}


KUBE = {"KUBECONFIG": "kubeconfig"}
JOB = "pmlctl submit --dry-run -f job.yaml"
VALUES = "pmlctl render --no-validate -f values.yaml"
CHIEF = {"type": "chief", "index": 0}
S3_WRONG_KEY = {"AWS_ENDPOINT_URL": "{s3}", "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
NO_S3 = "--s3-endpoint http://127.0.0.1:1"  # never reached: the case is refused before

CASES = [
    # pmlctl flags
    Case(
        "epochs-zero",
        "pmlctl submit --dry-run --epochs 0",
        2,
        "--epochs (trainer.epochs)",
        "greater than or equal to 1",
    ),
    Case(
        "workers-negative",
        "pmlctl submit --dry-run --workers -1",
        2,
        "--workers (replicas.workers)",
        "greater than or equal to 0",
    ),
    Case(
        "ps-without-workers",
        "pmlctl submit --dry-run --workers 0 --ps 2",
        2,
        "ps need at least one worker",
        "add --workers 1 or set --ps 0",
    ),
    Case("name-not-dns", "pmlctl submit --dry-run --name Bad_Name", 2, "name:", "must be lowercase letters"),
    Case("name-too-long", f"pmlctl submit --dry-run --name {'a' * 52}", 2, "name:", "at most 51 characters"),
    Case("model-unknown", "pmlctl submit --dry-run --model rnn", 2, "--model (trainer.model)", "'mlp' or 'cnn'"),
    Case(
        "learning-rate-zero",
        "pmlctl submit --dry-run --learning-rate 0",
        2,
        "--learning-rate (trainer.learning_rate)",
        "greater than 0",
    ),
    Case(
        "batch-size-not-a-number",
        "pmlctl submit --dry-run --batch-size lots",
        2,
        "'--batch-size'",
        "should be a valid integer",
    ),
    Case(
        "option-misspelt",
        "pmlctl submit --dry-run --epoch 3",
        2,
        "No such option: --epoch",
        "Possible options: --epochs",
    ),
    Case(
        "max-restarts-negative",
        "pmlctl submit --dry-run --max-restarts -1",
        2,
        "'--max-restarts'",
        "greater than or equal to 0",
    ),
    Case(
        "submit-target-unknown", "pmlctl submit --dry-run --target mars", 2, "--target mars", "use local, docker or k8s"
    ),
    Case(
        "preset-unknown", "pmlctl submit --dry-run --preset huge", 2, "--preset huge", "use fashion-mlp or flowers-cnn"
    ),
    Case("status-target-unknown", "pmlctl status x --target mars", 2, "'--target'", "use local, docker or k8s"),
    Case("status-unknown-job", "pmlctl status nosuchjob", 2, "job nosuchjob not found", "`pmlctl list`"),
    Case("logs-unknown-job", "pmlctl logs nosuchjob", 2, "job nosuchjob not found", "`pmlctl list`"),
    # trainer flags
    Case(
        "trainer-batch-size-not-a-number", "trainer --batch-size lots", 2, "--batch-size:", "should be a valid integer"
    ),
    Case(
        "trainer-unknown-flag",
        "trainer --no-such-flag 1",
        2,
        "unrecognized arguments: --no-such-flag",
        "`python -m pml_trainer --help`",
    ),
    Case("trainer-flag-without-value", "trainer --epochs", 2, "argument --epochs", "expected one argument"),
    Case("trainer-validation-split-one", "trainer --validation-split 1", 2, "--validation-split:", "less than 1"),
    # TF_CONFIG (tests/test_tf_config.py has more)
    Case(
        "tf-config-not-an-object",
        "trainer",
        2,
        "TF_CONFIG: not a JSON object",
        "use an object such as",
        env={"TF_CONFIG": "[1, 2]"},
    ),
    Case(
        "tf-config-cluster-a-list",
        "trainer",
        2,
        '"cluster" is not an object',
        'list of "host:port"',
        env=tf_config(["h:1"], CHIEF),
    ),
    Case(
        "tf-config-negative-index",
        "trainer",
        2,
        "task.index -1",
        "use 0 for the first task",
        env=tf_config({"chief": ["h:1"]}, {"type": "chief", "index": -1}),
    ),
    Case(
        "tf-config-task-without-cluster",
        "trainer",
        2,
        "a task is given but the cluster is empty",
        "list the cluster's addresses",
        env=tf_config({}, CHIEF),
    ),
    Case(
        "tf-config-ps-without-chief",
        "trainer",
        2,
        "ps tasks without a chief",
        "needs a chief to coordinate",
        env=tf_config({"worker": ["h:1"], "ps": ["h:2"]}, {"type": "worker", "index": 0}),
    ),
    Case(
        "tf-config-address-without-host",
        "trainer",
        2,
        "address ':2222' of chief has no host",
        'write it as "host:2222"',
        env=tf_config({"chief": [":2222"]}, CHIEF),
    ),
    # job files
    Case(
        "job-file-missing",
        "pmlctl submit --dry-run -f missing.yaml",
        2,
        "-f missing.yaml: no such file",
        "give the path of a job YAML file",
    ),
    Case(
        "job-file-a-folder",
        "pmlctl submit --dry-run -f .",
        2,
        "-f .: cannot read it (Is a directory)",
        "give the path of a job YAML file",
    ),
    Case(
        "job-file-binary",
        JOB,
        2,
        "-f job.yaml: cannot read it (not UTF-8 text)",
        "give the path of a job YAML file",
        files={"job.yaml": b"\xff\xfe\x00\x01"},
    ),
    Case(
        "job-file-not-yaml",
        JOB,
        2,
        "job.yaml: not valid YAML at line 2",
        "expected ',' or '}'",
        files={"job.yaml": "replicas: {workers: 2\n"},
    ),
    Case(
        "job-file-a-list",
        JOB,
        2,
        "job.yaml: a job file is a mapping",
        "keys such as name, replicas, trainer",
        files={"job.yaml": "- name: a\n"},
    ),
    Case(
        "job-file-unknown-field",
        JOB,
        2,
        "trainer.epochz: unknown field",
        "did you mean `epochs`?",
        files={"job.yaml": "trainer: {epochz: 3}\n"},
    ),
    Case(
        "job-file-section-a-number",
        JOB,
        2,
        "job.yaml: replicas must be a mapping",
        "`pmlctl render --values`",
        files={"job.yaml": "replicas: 3\n"},
    ),
    Case(
        "job-file-tf-config-in-env",
        JOB,
        2,
        "env: TF_CONFIG is built for each task",
        "remove it from env",
        files={"job.yaml": "env: {TF_CONFIG: '{}'}\n"},
    ),
    # datasets
    Case(
        "dataset-unknown",
        "pmlctl submit --dry-run --dataset imagenet",
        2,
        "unknown dataset 'imagenet'",
        "use synthetic[:HxWxC], fashion_mnist",
    ),
    Case(
        "dataset-synthetic-shape",
        "trainer --dataset synthetic:28x28",
        2,
        "unknown dataset 'synthetic:28x28'",
        "use synthetic[:HxWxC]",
    ),
    Case(
        "dataset-npz-missing",
        "trainer --dataset npz:nowhere/data.npz",
        3,
        "--dataset npz:nowhere/data.npz: no such file",
        "give the path of an .npz file",
    ),
    Case(
        "dataset-images-missing",
        "trainer --dataset images:photos",
        3,
        "--dataset images:photos: no such folder",
        "one sub-folder per class",
    ),
    Case(
        "dataset-in-bucket-without-bucket",
        JOB,
        2,
        "--dataset (trainer.dataset)",
        "no bucket; write s3://BUCKET/PATH",
        files={"job.yaml": "trainer: {dataset: 'npz:s3:///data.npz'}\n"},
    ),
    Case(
        "data-dir-without-bucket",
        "trainer --data-dir gs:///cache",
        2,
        "--data-dir: gs:///cache: no bucket",
        "write gs://BUCKET/PATH",
    ),
    # storage locations
    Case(
        "model-dir-unknown-scheme",
        "pmlctl submit --dry-run --model-dir gcs://models/run",
        2,
        "--model-dir (trainer.model_dir): gcs://models/run: unknown scheme",
        "use gs://BUCKET/PATH, s3://BUCKET/PATH",
    ),
    Case(
        "model-dir-bucket-too-short",
        "trainer --model-dir s3://ab/run",
        2,
        "'ab' is not a bucket name",
        "use 3-63 lowercase letters",
    ),
    Case(
        "model-dir-dot-dot",
        "trainer --model-dir gs://models/a/../b",
        2,
        "--model-dir: gs://models/a/../b",
        "write it as a/b/c",
    ),
    Case("model-dir-empty", "trainer --model-dir ''", 2, "--model-dir: empty path", "give a folder, gs://BUCKET/PATH"),
    Case(
        "s3-endpoint-without-scheme",
        "trainer --s3-endpoint minio:9000",
        2,
        "--s3-endpoint: S3 endpoint 'minio:9000'",
        "write it as http://HOST:PORT",
    ),
    Case(
        "artifacts-bad-bucket",
        "pmlctl artifacts s3://Models/run",
        2,
        "'Models' is not a bucket name",
        "use 3-63 lowercase letters",
    ),
    # credentials
    Case(
        "s3-key-without-secret",
        f"trainer --model-dir s3://models/run {NO_S3}",
        3,
        "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is not",
        "set both",
        env={"AWS_ACCESS_KEY_ID": ACCESS_KEY},
    ),
    Case(
        "s3-secret-without-key",
        f"trainer --model-dir s3://models/run {NO_S3}",
        3,
        "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is not",
        "set both",
        env={"AWS_SECRET_ACCESS_KEY": SECRET_KEY},
    ),
    Case(
        "s3-wrong-key-artifacts",
        "pmlctl artifacts s3://models/run",
        3,
        "access denied (InvalidAccessKeyId)",
        "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY",
        env=S3_WRONG_KEY,
    ),
    Case(
        "gcs-key-file-missing",
        "trainer --model-dir gs://models/run",
        3,
        "no usable Google credentials",
        "set GOOGLE_APPLICATION_CREDENTIALS to a key file",
        env={"GOOGLE_APPLICATION_CREDENTIALS": "missing-key.json"},
    ),
    Case(
        "gcs-key-file-garbage",
        "pmlctl artifacts gs://models/run",
        3,
        "key.json is not a valid json file",
        "set GOOGLE_APPLICATION_CREDENTIALS to a key file",
        files={"key.json": "not json"},
        env={"GOOGLE_APPLICATION_CREDENTIALS": "key.json"},
    ),
    # chart values
    Case(
        "values-cpu-not-a-quantity",
        VALUES,
        2,
        "roles.chief.resources.cpu",
        "must be a Kubernetes quantity",
        files={"values.yaml": "roles: {chief: {resources: {cpu: two}}}\n"},
    ),
    Case(
        "values-toleration-exists-with-value",
        VALUES,
        2,
        "roles.worker.tolerations.0",
        "drop the value or use Equal",
        files={"values.yaml": "roles: {worker: {tolerations: [{operator: Exists, value: x}]}}\n"},
    ),
    Case(
        "values-service-account-unnamed",
        VALUES,
        2,
        "service_account:",
        "name the existing ServiceAccount",
        files={"values.yaml": "service_account: {create: false}\n"},
    ),
    Case(
        "values-pull-policy",
        VALUES,
        2,
        "image_pull_policy:",
        "'Always', 'IfNotPresent' or 'Never'",
        files={"values.yaml": "image_pull_policy: Sometimes\n"},
    ),
    Case(
        "values-root-user",
        VALUES,
        2,
        "security.run_as_user:",
        "greater than or equal to 1",
        files={"values.yaml": "security: {run_as_user: 0}\n"},
    ),
    Case(
        "values-env-name",
        VALUES,
        2,
        "env: '1BAD' is not an environment variable name",
        "use letters, digits",
        files={"values.yaml": "env: {1BAD: x}\n"},
    ),
    Case(
        "values-credentials-without-secret",
        VALUES,
        2,
        "credentials.secret: required but missing",
        "add it",
        files={"values.yaml": "credentials: {env: {AWS_ACCESS_KEY_ID: id}}\n"},
    ),
    Case(
        "values-backoff-limit",
        VALUES,
        2,
        "policy.backoff_limit:",
        "less than or equal to 100",
        files={"values.yaml": "policy: {backoff_limit: 1000}\n"},
    ),
    Case(
        "values-model-dir-read-only",
        VALUES,
        2,
        "--model-dir /data/run: the pods' root filesystem is read-only",
        "use gs://BUCKET/PATH",
        files={"values.yaml": "trainer: {model_dir: /data/run}\n"},
    ),
    Case(
        "render-output-folder-missing",
        "pmlctl render --no-validate -o nowhere/job.yaml",
        2,
        "--output nowhere/job.yaml",
        "give a file in an existing folder",
    ),
    # kubeconfigs
    Case("kubeconfig-missing", "pmlctl status x --target k8s", 2, "no kubeconfig at", "set KUBECONFIG", env=KUBE),
    Case(
        "kubeconfig-not-yaml",
        "pmlctl status x --target k8s",
        2,
        "kubeconfig kubeconfig: not a kubeconfig",
        "fix the file or set KUBECONFIG",
        files={"kubeconfig": "clusters: [\n"},
        env=KUBE,
    ),
    Case(
        "kubeconfig-a-list",
        "pmlctl status x --target k8s",
        2,
        "kubeconfig kubeconfig: not a kubeconfig",
        "fix the file or set KUBECONFIG",
        files={"kubeconfig": "- a\n"},
        env=KUBE,
    ),
    Case(
        "kubeconfig-without-current-context",
        "pmlctl status x --target k8s",
        2,
        "has no current context",
        "pass --context (kind-pml)",
        files=kubeconfig(current=None),
        env=KUBE,
    ),
    Case(
        "kubeconfig-unknown-context",
        "pmlctl status x --target k8s --context gke-prod",
        2,
        "--context gke-prod: not in kubeconfig",
        "use one of kind-pml",
        files=kubeconfig(),
        env=KUBE,
    ),
    Case(
        "kubeconfig-context-without-cluster",
        "pmlctl status x --target k8s",
        2,
        "context kind-pml: Invalid kube-config file. Expected object with name gone",
        "fix it in kubeconfig",
        files=kubeconfig(cluster="gone"),
        env=KUBE,
    ),
    Case(
        "kubeconfig-wrong-token",
        "pmlctl status x --target k8s",
        2,
        "did not accept its credentials",
        "refresh them",
        files=kubeconfig(token="stale"),
        env=KUBE,
    ),
    # A cluster that does not answer is no input to fix: 3, as for any service that is unavailable.
    Case(
        "kubeconfig-cluster-down",
        "pmlctl status x --target k8s",
        3,
        "cannot reach the cluster of context kind-pml",
        "start it (`pmlctl cluster up`",
        files=kubeconfig(server="http://127.0.0.1:1"),
        env=KUBE,
    ),
    Case(
        "kube-job-unknown",
        "pmlctl status nosuchjob --target k8s",
        2,
        "job nosuchjob not found in namespace default",
        "`pmlctl list -t k8s`",
        files=kubeconfig(),
        env=KUBE,
    ),
]


@pytest.fixture(scope="module")
def key_checking_s3(tmp_path_factory):
    """moto, refusing every key: each bucket it holds was made by a case."""
    srv = S3Server(tmp_path_factory.mktemp("s3"), check_credentials=True)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fake_kube():
    fake = FakeKube(crd={})
    yield fake
    fake.close()


def buckets(s3: S3Server) -> list[str]:
    """The buckets moto holds, from its own state (every S3 request needs a key it refuses)."""
    with urllib.request.urlopen(f"{s3.url}/moto-api/data.json", timeout=10) as reply:
        return [b["name"] for b in json.load(reply).get("s3", {}).get("FakeBucket", [])]


def every_file(top: pathlib.Path) -> set[pathlib.Path]:
    return set(top.rglob("*"))


def fill(text, servers: dict[str, str]):
    if isinstance(text, bytes):
        return text
    for name, url in servers.items():
        text = text.replace("{" + name + "}", url)
    return text


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_refused_in_one_line_and_leaves_nothing(case, tmp_path, request):
    text = case.command + json.dumps(case.files, default=repr) + json.dumps(case.env)
    s3 = request.getfixturevalue("key_checking_s3") if "{s3}" in text else None
    servers = {"s3": s3.url if s3 else "", "kube": request.getfixturevalue("fake_kube").url if "{kube}" in text else ""}
    work, home = tmp_path / "work", tmp_path / "pml-home"
    work.mkdir()
    for name, content in case.files.items():
        content = fill(content, servers)
        (work / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    token = f"pml-bad-input-{secrets.token_hex(6)}"  # every process of the case inherits it
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    env.update(
        PML_HOME=str(home),
        HOME=str(tmp_path / "user"),
        KUBECONFIG=str(tmp_path / "no-kubeconfig"),
        PML_DATA_CACHE=str(tmp_path / "cache"),
        PML_STAGING_DIR=str(tmp_path / "staging"),
        PML_CASE=token,
    )
    env.update({k: fill(v, servers) for k, v in case.env.items()})
    program, *args = shlex.split(fill(case.command, servers))
    before = every_file(tmp_path)

    result = subprocess.run(COMMANDS[program] + args, cwd=work, env=env, capture_output=True, text=True, timeout=60)

    assert result.returncode == case.code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    line, *more = result.stderr.splitlines() or [""]
    line = said(line)  # the trainer's own line is a log line, with a time, a level and the task
    assert more == [] and line.startswith("error: "), result.stderr
    assert case.field in line and case.fix in line, line
    assert result.stdout == ""
    assert every_file(tmp_path) == before and not home.exists()
    assert processes_mentioning(token) == []
    if s3 is not None:
        assert buckets(s3) == []
