"""The chart's native-mode pods, run for real: every pod template, started as a kubelet would.

The Helm chart renders a Job and a headless Service per task. Each Job's pod template becomes one
`docker run`, read from the rendered object rather than from what the chart is known to say:
image, command and args, env (Secret references resolved from a test Secret, whose values go
through a 0600 --env-file), user and group, read-only root, dropped capabilities,
no-new-privileges, one tmpfs per emptyDir, and the Services' DNS names as network aliases. A field
this translation does not know fails the test rather than being skipped. The model dir is on moto's
S3 server, bound to the gateway address of the test's own Docker network.

Opt-in (`make test-pods`); it shares the daemon and image of `make test-docker`.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import socket
import subprocess
import time

import pytest
from dockerd import docker, docker_env, trainer_image, wait_until  # noqa: F401 (fixtures)
from storage_servers import ACCESS_KEY, BIN, SECRET_KEY, S3Server, Server

pytestmark = pytest.mark.docker

JOB, NAMESPACE, SECRET = "podspec", "pml-pods", "pml-s3"
# The test's Secret, with keys named unlike the variables so that the spec's env -> key map counts.
SECRET_DATA = {"access-key": ACCESS_KEY, "secret-key": SECRET_KEY}
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "access-key", "AWS_SECRET_ACCESS_KEY": "secret-key"}
TIMEOUT = 900  # for the whole job: image cached, 6 containers on 2 cores

# What the translation below reads; anything else in a pod fails the test until it is mapped.
POD_FIELDS = {
    "containers",
    "volumes",
    "securityContext",
    "restartPolicy",
    "serviceAccountName",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "priorityClassName",
    "nodeSelector",
    "tolerations",
    "affinity",
    "hostname",
    "subdomain",
}
POD_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "supplementalGroups", "seccompProfile"}
CONTAINER_FIELDS = {
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "workingDir",
    "env",
    "ports",
    "resources",
    "securityContext",
    "volumeMounts",
}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "runAsUser",
    "runAsGroup",
    "capabilities",
    "privileged",
    "seccompProfile",
}
POD_NAME_LETTERS = "bcdfghjklmnpqrstvwxz2456789"  # what the Job controller's generated names use


class GatewayS3(S3Server):
    """moto on the Docker network's gateway: the address of this machine that containers reach."""

    def __init__(self, workdir: pathlib.Path, host: str):
        super().__init__(workdir)
        self.host = host
        with socket.socket() as s:
            s.bind((host, 0))
            self.port = s.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [str(BIN / "moto_server"), "-H", self.host, "-p", str(self.port)]

    def client(self):
        from minio import Minio

        return Minio(
            f"{self.host}:{self.port}", access_key=ACCESS_KEY, secret_key=SECRET_KEY, secure=False, region="us-east-1"
        )

    def start(self) -> None:  # Server.start probes 127.0.0.1
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

        def up() -> bool:
            try:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return True
            except OSError:
                return self.proc.poll() is not None

        wait_until(up, 30, "moto_server on the gateway")
        assert self.proc.poll() is None, (self.workdir / "server.log").read_text()[-2000:]

    def stop(self) -> None:
        Server.stop(self)  # nothing to keep for a restart


def selects(service: dict, labels: dict) -> bool:
    selector = service["spec"].get("selector") or {}
    return bool(selector) and selector.items() <= labels.items()


def service_names(service: dict) -> list[str]:
    """The names cluster DNS answers for a Service, short ones through the pod's search path."""
    name, namespace = service["metadata"]["name"], service["metadata"]["namespace"]
    return [name, f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"]


def known(fields: dict, allowed: set[str], where: str) -> None:
    unknown = set(fields) - allowed
    assert not unknown, f"{where}: {sorted(unknown)} not mapped to docker yet; add them to the translation"


def kubelet_argv(
    pod: dict,
    name: str,
    namespace: str,
    aliases: list[str],
    network: str,
    label: str,
    secret_store: dict[str, dict[str, str]],
    env_file: pathlib.Path,
    image_user: str,
) -> list[str]:
    """`docker run -d` for one pod, as a kubelet with Docker as its runtime would start it."""
    spec = pod["spec"]
    known(spec, POD_FIELDS, f"{name}: pod spec")
    (container,) = spec["containers"]  # the chart's pods have one container; a second needs a shared netns
    known(container, CONTAINER_FIELDS, f"{name}: container")
    pod_security = spec.get("securityContext") or {}
    known(pod_security, POD_SECURITY, f"{name}: pod securityContext")
    known(container.get("securityContext") or {}, CONTAINER_SECURITY, f"{name}: container securityContext")
    security = {**pod_security, **(container.get("securityContext") or {})}  # the container's own win
    assert spec.get("automountServiceAccountToken") is False, "a token would have to be mounted"
    assert spec.get("enableServiceLinks") is False, "service link variables would have to be injected"
    assert not (container.get("resources") or {}).get("limits"), "limits are not mapped to docker yet"

    argv = [
        "run",
        "-d",
        "--name",
        name,
        "--label",
        label,
        "--pull",
        "never",
        "--hostname",
        spec.get("hostname", name)[:63],
        "--network",
        network,
    ]
    argv += [arg for alias in aliases for arg in ("--network-alias", alias)]

    uid, gid = security.get("runAsUser"), security.get("runAsGroup")
    if uid is None:  # the image's USER then, with the group it gives unless runAsGroup is set
        uid = image_user.partition(":")[0] or "0"
    if security.get("runAsNonRoot"):  # the kubelet refuses to start a container that would be root
        assert str(uid).isdigit() and int(uid) != 0, f"{name}: runAsNonRoot with user {uid!r}"
    argv += ["--user", f"{uid}:{gid}" if gid is not None else str(uid)]
    groups = [security["fsGroup"]] if "fsGroup" in pod_security else []
    argv += [
        arg for group in groups + pod_security.get("supplementalGroups", []) for arg in ("--group-add", str(group))
    ]
    if security.get("readOnlyRootFilesystem"):
        argv.append("--read-only")
    argv += [arg for cap in security.get("capabilities", {}).get("drop", []) for arg in ("--cap-drop", cap)]
    argv += [arg for cap in security.get("capabilities", {}).get("add", []) for arg in ("--cap-add", cap)]
    if security.get("allowPrivilegeEscalation") is False:
        argv += ["--security-opt", "no-new-privileges"]
    if security.get("privileged"):
        argv.append("--privileged")
    seccomp = (security.get("seccompProfile") or {}).get("type", "RuntimeDefault")
    assert seccomp in ("RuntimeDefault", "Unconfined"), f"{name}: seccomp {seccomp} not mapped"
    if seccomp == "Unconfined":
        argv += ["--security-opt", "seccomp=unconfined"]  # RuntimeDefault is docker's own default profile

    # emptyDir: a directory of the kubelet's, mode 0777; with an fsGroup it belongs to that group and
    # has the setgid bit, so what the pod writes stays group-writable. Here it is a tmpfs like that.
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        known(mount, {"name", "mountPath", "readOnly"}, f"{name}: volumeMount")
        volume = volumes[mount["name"]]
        assert set(volume) == {"name", "emptyDir"}, f"{name}: volume {volume} is not an emptyDir"
        known(volume["emptyDir"] or {}, {"medium"}, f"{name}: emptyDir")
        owner = f",gid={pod_security['fsGroup']},mode=2777" if "fsGroup" in pod_security else ",mode=777"
        access = "ro" if mount.get("readOnly") else "rw"
        argv += ["--tmpfs", f"{mount['mountPath']}:{access},exec{owner}"]

    plain: dict[str, str] = {}
    hidden: dict[str, str] = {}
    for var in container.get("env", []):
        key = var["name"]
        plain.pop(key, None)  # a later entry replaces an earlier one
        hidden.pop(key, None)
        if "value" in var:
            assert "$(" not in var["value"], f"{name}: $(VAR) expansion in {key} is not mapped"
            plain[key] = var["value"]
            continue
        known(var["valueFrom"], {"secretKeyRef"}, f"{name}: env {key}")
        ref = var["valueFrom"]["secretKeyRef"]
        value = secret_store.get(ref["name"], {}).get(ref["key"])
        if value is None and ref.get("optional"):
            continue
        assert value is not None, f"{name}: Secret {namespace}/{ref['name']} has no key {ref['key']!r}"
        hidden[key] = value
    argv += [arg for key, value in plain.items() for arg in ("-e", f"{key}={value}")]
    if hidden:
        fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            for key, value in hidden.items():
                assert "\n" not in value, f"an --env-file cannot carry the newline in {key}"
                out.write(f"{key}={value}\n")
        argv += ["--env-file", str(env_file)]
    if "workingDir" in container:
        argv += ["--workdir", container["workingDir"]]

    # command replaces the image's ENTRYPOINT and args its CMD, as in Kubernetes.
    command = container.get("command") or []
    assert not any("$(" in word for word in command + container.get("args", [])), "$(VAR) is not mapped"
    if command:
        argv += ["--entrypoint", command[0]]
    return [*argv, container["image"], *command[1:], *container.get("args", [])]


def pod_name(job_name: str) -> str:
    return f"{job_name}-{''.join(secrets.choice(POD_NAME_LETTERS) for _ in range(5))}"


def process_facts(pid: int) -> dict[str, str]:
    """Who a container's first process runs as, and with what, read from the host's /proc."""
    status = dict(
        line.split(":\t", 1) for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines() if ":\t" in line
    )
    root = next(
        line.split()
        for line in pathlib.Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    )
    return {
        "uid": status["Uid"].split()[0],
        "gid": status["Gid"].split()[0],
        "groups": status["Groups"].strip(),
        "caps": status["CapEff"].strip(),
        "no_new_privs": status["NoNewPrivs"].strip(),
        "root": root[5].split(",")[0],
    }


def inspect(env: dict, container: str) -> dict:
    done = docker(env, "inspect", container, timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)[0]


def test_the_rendered_native_pods_run_to_success_as_a_kubelet_would_start_them(docker_env, trainer_image, tmp_path):
    from deploy import render
    from deploy.spec import JobSpec

    env = docker_env
    run_id = secrets.token_hex(4)
    label = f"pml.test=pods-{run_id}"
    network = f"pml-pods-{run_id}"
    made = docker(env, "network", "create", "--label", label, network, timeout=60)
    assert made.returncode == 0, made.stderr
    server: GatewayS3 | None = None
    pods: dict[str, str] = {}  # container (pod) name -> Job name
    try:
        gateway = docker(
            env, "network", "inspect", "--format", "{{(index .IPAM.Config 0).Gateway}}", network, timeout=60
        ).stdout.strip()
        server = GatewayS3(tmp_path / "s3", gateway)
        server.start()
        bucket = f"pml-{run_id}"
        server.make_bucket(bucket)
        model_dir = f"s3://{bucket}/jobs/{JOB}"

        spec = JobSpec.model_validate(
            {
                "name": JOB,
                "namespace": NAMESPACE,
                "mode": "native",
                "image": trainer_image,
                "replicas": {"workers": 2, "ps": 1, "evaluator": 1},
                "trainer": {"epochs": 2, "train_examples": 6000, "model_dir": model_dir},
                "env": {k: v for k, v in server.env().items() if k not in CREDENTIALS},  # the endpoint, the region
                "credentials": {"secret": SECRET, "env": CREDENTIALS},
            }
        )
        objects = render.objects(render.render(spec, validate=False).manifest)
        jobs = [o for o in objects if o["kind"] == "Job"]
        services = [o for o in objects if o["kind"] == "Service"]
        assert len(jobs) == 5 and len(services) == 5, [(o["kind"], o["metadata"]["name"]) for o in objects]
        image_user = inspect(env, trainer_image)["Config"]["User"]

        covered: set[str] = set()  # the names the containers answer to
        addressed: set[str] = set()  # the hosts TF_CONFIG names
        started = time.monotonic()
        for job in jobs:
            namespace = job["metadata"]["namespace"]
            pod = job["spec"]["template"]
            labels = {**pod["metadata"].get("labels", {}), "job-name": job["metadata"]["name"]}
            aliases = [
                n
                for s in services
                if s["metadata"]["namespace"] == namespace and selects(s, labels)
                for n in service_names(s)
            ]
            covered.update(aliases)
            name = pod_name(job["metadata"]["name"])
            argv = kubelet_argv(
                pod,
                name,
                namespace,
                aliases,
                network,
                label,
                {SECRET: SECRET_DATA},
                tmp_path / f"{name}.env",
                image_user,
            )
            assert not any(value in word for value in SECRET_DATA.values() for word in argv)
            done = docker(env, *argv, timeout=120)
            assert done.returncode == 0, f"docker {' '.join(argv)}: {done.stderr}"
            pods[name] = job["metadata"]["name"]
            tf_config = next(
                json.loads(v["value"]) for v in pod["spec"]["containers"][0]["env"] if v["name"] == "TF_CONFIG"
            )
            addressed |= {a.rpartition(":")[0] for addresses in tf_config["cluster"].values() for a in addresses}
        assert addressed <= covered, f"TF_CONFIG names hosts no Service gives a pod: {sorted(addressed - covered)}"

        # Who each pod runs as, read from its process while it runs.
        facts: dict[str, dict[str, str]] = {}

        def every_pod_seen() -> bool:
            for name in set(pods) - set(facts):
                state = inspect(env, name)["State"]
                if state["Running"]:
                    try:
                        facts[name] = process_facts(state["Pid"])
                    except FileNotFoundError:
                        pass  # it ended between the two reads
                elif state["Status"] == "exited":
                    facts[name] = {}
            return len(facts) == len(pods)

        wait_until(every_pod_seen, 120, "every pod's process")
        for name in pods:  # each ends by itself: nothing here stops a container
            remaining = TIMEOUT - (time.monotonic() - started)
            try:
                docker(env, "wait", name, timeout=max(remaining, 1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"{name} still running after {TIMEOUT}s:\n" + logs(env, pods, tmp_path))
        elapsed = time.monotonic() - started

        states = {name: inspect(env, name) for name in pods}
        print(f"\n{len(pods)} pods of {JOB} in {NAMESPACE}, all ended by themselves within {elapsed:.0f}s:")
        for name, state in states.items():
            fact, config = facts[name], state["Config"]
            print(
                f"pod {name} (Job {pods[name]}): exit {state['State']['ExitCode']}, "
                f"User {config['User']}, process uid {fact.get('uid')} gid {fact.get('gid')} "
                f"groups {fact.get('groups')}, ReadonlyRootfs {state['HostConfig']['ReadonlyRootfs']} "
                f"(/ mounted {fact.get('root')}), CapEff {fact.get('caps')}, NoNewPrivs {fact.get('no_new_privs')}"
            )
        failed = {n: s["State"]["ExitCode"] for n, s in states.items() if s["State"]["ExitCode"] != 0}
        assert not failed, f"exit codes {failed}:\n" + logs(env, pods, tmp_path)
        assert not any(s["State"]["OOMKilled"] for s in states.values())
        for name, state in states.items():
            fact, config = facts[name], state["Config"]
            pod_security = next(j for j in jobs if j["metadata"]["name"] == pods[name])["spec"]["template"]["spec"][
                "securityContext"
            ]
            uid, gid = str(pod_security["runAsUser"]), str(pod_security["runAsGroup"])
            assert fact, f"{name} ended before its process could be seen"
            assert (fact["uid"], fact["gid"], config["User"]) == (uid, gid, f"{uid}:{gid}")
            assert str(pod_security["fsGroup"]) in fact["groups"].split()
            assert state["HostConfig"]["ReadonlyRootfs"] is True and fact["root"] == "ro"
            assert (fact["caps"], fact["no_new_privs"]) == ("0000000000000000", "1")

        # What the job left in the bucket: the final step evaluated, and the SavedModel.
        store = server.client()
        prefix = f"jobs/{JOB}"
        result = json.loads(store.get_object(bucket, f"{prefix}/result.json").read())
        evaluations = [
            json.loads(line) for line in store.get_object(bucket, f"{prefix}/eval.jsonl").read().splitlines()
        ]
        print(
            f"result.json: steps {result['steps']}, test accuracy {result['test_accuracy']:.3f}; "
            f"eval.jsonl steps {[e['step'] for e in evaluations]}"
        )
        assert result["steps"] > 0 and result["saved_model"] == f"{model_dir}/saved_model"
        assert evaluations[-1]["step"] == result["steps"], "the evaluator did not evaluate the final step"
        assert 0.0 <= evaluations[-1]["test_accuracy"] <= 1.0
        assert store.stat_object(bucket, f"{prefix}/saved_model/saved_model.pb").size > 0
    finally:
        leftovers = docker(env, "ps", "-aq", "--filter", f"label={label}", timeout=60).stdout.split()
        if leftovers:
            docker(env, "rm", "-f", *leftovers, timeout=120)
        docker(env, "network", "rm", network, timeout=60)
        if server is not None:
            server.stop()
        for env_file in tmp_path.glob("*.env"):
            env_file.unlink()
    assert docker(env, "ps", "-aq", "--filter", f"label={label}").stdout.split() == []
    assert docker(env, "network", "ls", "-q", "--filter", f"label={label}").stdout.split() == []


def logs(env: dict, pods: dict[str, str], folder: pathlib.Path) -> str:
    """Each pod's whole log into `folder` (kept by pytest), and its last lines for the message."""
    tails = []
    for name in pods:
        done = docker(env, "logs", name, timeout=60)
        (folder / f"{name}.log").write_text(done.stdout + done.stderr)
        tails.append(f"--- {name} ({folder / name}.log)\n" + "\n".join((done.stdout + done.stderr).splitlines()[-15:]))
    return "\n".join(tails)
