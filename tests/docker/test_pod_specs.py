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

import contextlib
import json
import os
import pathlib
import secrets
import socket
import subprocess
import time
from dataclasses import dataclass, field

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


@dataclass
class Cluster:
    """A Docker network standing in for a namespace, moto on its gateway, and the pods started on it."""

    env: dict
    network: str
    label: str
    server: GatewayS3
    bucket: str
    folder: pathlib.Path
    image_user: str = ""
    pods: dict[str, str] = field(default_factory=dict)  # container (pod) name -> Job name

    def start_pod(self, job: dict, services: list[dict], extra: tuple[str, ...] = ()) -> tuple[str, set[str], set[str]]:
        """One pod of `job`, as a kubelet would start it; its name, the names it answers to, and the
        hosts its TF_CONFIG names. `extra`: `docker run` options of the test's own, not the pod's."""
        namespace = job["metadata"]["namespace"]
        pod = job["spec"]["template"]
        labels = {**pod["metadata"].get("labels", {}), "job-name": job["metadata"]["name"]}
        aliases = [
            n
            for s in services
            if s["metadata"]["namespace"] == namespace and selects(s, labels)
            for n in service_names(s)
        ]
        name = pod_name(job["metadata"]["name"])
        argv = kubelet_argv(
            pod,
            name,
            namespace,
            aliases,
            self.network,
            self.label,
            {SECRET: SECRET_DATA},
            self.folder / f"{name}.env",
            self.image_user,
        )
        assert not any(value in word for value in SECRET_DATA.values() for word in argv)
        argv[2:2] = extra
        done = docker(self.env, *argv, timeout=120)
        assert done.returncode == 0, f"docker {' '.join(argv)}: {done.stderr}"
        self.pods[name] = job["metadata"]["name"]
        tf_config = next(
            json.loads(v["value"]) for v in pod["spec"]["containers"][0]["env"] if v["name"] == "TF_CONFIG"
        )
        return name, set(aliases), {a.rpartition(":")[0] for hosts in tf_config["cluster"].values() for a in hosts}

    def render(self, trainer_image: str, replicas: dict, trainer: dict) -> tuple[list[dict], list[dict], str]:
        """The native job's Jobs and Services, its model dir on moto."""
        from deploy import render
        from deploy.spec import JobSpec

        model_dir = f"s3://{self.bucket}/jobs/{JOB}"
        spec = JobSpec.model_validate(
            {
                "name": JOB,
                "namespace": NAMESPACE,
                "mode": "native",
                "image": trainer_image,
                "replicas": replicas,
                "trainer": {**trainer, "model_dir": model_dir},
                "env": {k: v for k, v in self.server.env().items() if k not in CREDENTIALS},  # the endpoint, the region
                "credentials": {"secret": SECRET, "env": CREDENTIALS},
            }
        )
        objects = render.objects(render.render(spec, validate=False).manifest)
        self.image_user = inspect(self.env, trainer_image)["Config"]["User"]
        return [o for o in objects if o["kind"] == "Job"], [o for o in objects if o["kind"] == "Service"], model_dir


@contextlib.contextmanager
def cluster(env: dict, folder: pathlib.Path):
    """A Cluster, and afterwards nothing left of it: no container, network or server."""
    run_id = secrets.token_hex(4)
    label = f"pml.test=pods-{run_id}"
    network = f"pml-pods-{run_id}"
    made = docker(env, "network", "create", "--label", label, network, timeout=60)
    assert made.returncode == 0, made.stderr
    server: GatewayS3 | None = None
    try:
        gateway = docker(
            env, "network", "inspect", "--format", "{{(index .IPAM.Config 0).Gateway}}", network, timeout=60
        ).stdout.strip()
        server = GatewayS3(folder / "s3", gateway)
        server.start()
        bucket = f"pml-{run_id}"
        server.make_bucket(bucket)
        yield Cluster(env, network, label, server, bucket, folder)
    finally:
        leftovers = docker(env, "ps", "-aq", "--filter", f"label={label}", timeout=60).stdout.split()
        if leftovers:
            docker(env, "rm", "-f", *leftovers, timeout=120)
        docker(env, "network", "rm", network, timeout=60)
        if server is not None:
            server.stop()
        for env_file in folder.glob("*.env"):
            env_file.unlink()
    assert docker(env, "ps", "-aq", "--filter", f"label={label}").stdout.split() == []
    assert docker(env, "network", "ls", "-q", "--filter", f"label={label}").stdout.split() == []


def test_the_rendered_native_pods_run_to_success_as_a_kubelet_would_start_them(docker_env, trainer_image, tmp_path):
    env = docker_env
    with cluster(env, tmp_path) as c:
        jobs, services, model_dir = c.render(
            trainer_image, {"workers": 2, "ps": 1, "evaluator": 1}, {"epochs": 2, "train_examples": 6000}
        )
        assert len(jobs) == 5 and len(services) == 5, [j["metadata"]["name"] for j in jobs]
        pods = c.pods

        covered: set[str] = set()  # the names the containers answer to
        addressed: set[str] = set()  # the hosts TF_CONFIG names
        started = time.monotonic()
        for job in jobs:
            _, aliases, hosts = c.start_pod(job, services)
            covered |= aliases
            addressed |= hosts
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
        store, bucket = c.server.client(), c.bucket
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


def logs(env: dict, pods: dict[str, str], folder: pathlib.Path) -> str:
    """Each pod's whole log into `folder` (kept by pytest), and its last lines for the message."""
    tails = []
    for name in pods:
        done = docker(env, "logs", name, timeout=60)
        (folder / f"{name}.log").write_text(done.stdout + done.stderr)
        tails.append(f"--- {name} ({folder / name}.log)\n" + "\n".join((done.stdout + done.stderr).splitlines()[-15:]))
    return "\n".join(tails)


# Issue 26: a native job on a Spot node pool. What is preempted, in this order, each once every pod
# has trained since it started: a worker, the ps, then the chief.
PREEMPTED = ["worker", "ps", "chief"]
EPOCHS = 150  # of 21 steps: room for three preemptions, the restarts they cause, and the stages below
GRACE = 30  # the pod's terminationGracePeriodSeconds (Kubernetes' default): SIGTERM, then SIGKILL
# The chief holds at its first checkpoint this many steps past the latest published one until the
# test lets it go on (faults.HOLD_TRAINING), so that the job cannot end while a preempted server
# drains, whatever the machine's pace: the last CI's job did, with the chief still to go.
STAGE = 100


def published_step(c: Cluster) -> int:
    from minio.error import S3Error

    from pml_trainer import checkpoints

    try:
        text = c.server.client().get_object(c.bucket, f"jobs/{JOB}/checkpoints/checkpoint").read().decode()
    except S3Error:
        return 0
    names = checkpoints.names_in_pointer(text)
    return checkpoints.step_of(names[-1]) if names else 0


def ended_pod(job: dict, pod: str, code: int, disrupted: bool) -> dict:
    """The pod as the API server then shows it: Failed, with the kubelet's DisruptionTarget condition
    when its node went (kubernetes pkg/kubelet/nodeshutdown/nodeshutdown_manager_linux.go)."""
    conditions = [{"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}] if disrupted else []
    return {
        "metadata": {"name": pod, "namespace": job["metadata"]["namespace"]},
        "status": {
            "phase": "Failed",
            "conditions": conditions,
            "containerStatuses": [{"name": "tensorflow", "state": {"terminated": {"exitCode": code}}}],
        },
    }


def test_a_native_job_outlives_the_preemption_of_a_worker_its_ps_and_its_chief(docker_env, trainer_image, tmp_path):
    """The rendered pods run for real; the test is the Job controller and the node that goes: it
    stops a pod as a kubelet on a node shutting down does (SIGTERM, then SIGKILL after the grace
    period), then judges the ended pod by its Job's own podFailurePolicy, as the Job controller does
    (pod_failure_policy.go, followed by tests/k8s_fake.py), and makes a new pod unless it fails the Job."""
    from k8s_fake import _pod_failure_policy

    from pml_trainer import chiefs, faults

    env = docker_env
    hold = tmp_path / "hold"  # the chief's hold (faults.HOLD_TRAINING), shared with its pods
    hold.mkdir(mode=0o777)
    hold.chmod(0o777)  # the pods' user writes the marker; mkdir's mode is cut by the umask
    limit, marker = hold / "limit", hold / "limit.held"
    chief_extra = ("-v", f"{hold}:/hold", "-e", f"{faults.HOLD_TRAINING}=/hold/limit")

    def set_limit(step: int) -> None:
        """Move the limit on (never back: a chief past it would hold at once)."""
        faults.write_step(limit, max(step, faults.step_in(limit) or 0))

    def held() -> int | None:
        return faults.step_in(marker)

    with cluster(env, tmp_path) as c:
        jobs, services, _model_dir = c.render(
            trainer_image,
            {"workers": 1, "ps": 1, "evaluator": 0},
            {"epochs": EPOCHS, "train_examples": 6000, "checkpoint_every_steps": 100},
        )
        by_role = {j["metadata"]["labels"]["app.kubernetes.io/component"]: j for j in jobs}
        extra = {role: chief_extra if role == "chief" else () for role in by_role}
        set_limit(STAGE)
        current = {role: c.start_pod(job, services, extra[role])[0] for role, job in by_role.items()}
        since = dict.fromkeys(current.values(), 0)  # pod -> the published step when it started
        complete: set[str] = set()
        judged: list[tuple[str, int, str]] = []  # (role, exit code, the Job controller's action)
        preempted: dict[str, int] = {}  # pod -> the published step when its node went
        started = time.monotonic()

        def running(pod: str) -> bool:
            return inspect(env, pod)["State"]["Running"]

        def sync() -> bool:
            """The Job controller's sync: replace ended pods; whether every Job is complete."""
            if time.monotonic() - started > TIMEOUT:
                pytest.fail(f"the job did not end within {TIMEOUT}s:\n" + logs(env, c.pods, tmp_path))
            for role, pod in current.items():
                state = inspect(env, pod)["State"]
                if role in complete or state["Running"]:
                    continue
                code = state["ExitCode"]
                if code == 0:
                    complete.add(role)
                    continue
                action, _ = _pod_failure_policy(by_role[role], ended_pod(by_role[role], pod, code, pod in preempted))
                judged.append((role, code, action))
                assert action != "FailJob", f"{role} exit {code} failed its Job:\n" + logs(env, c.pods, tmp_path)
                if role == "chief":  # one that ended held (its ps lost, it exits) left its marker
                    marker.unlink(missing_ok=True)
                current[role] = c.start_pod(by_role[role], services, extra[role])[0]
                since[current[role]] = published_step(c)
            return complete == set(by_role)

        def every_pod_trained() -> bool:
            """Each pod has trained since it started: a newer checkpoint than then is published. While
            not, a held chief goes on by a stage: a new pod joins a chief that trains."""
            assert not sync(), f"training ended with {PREEMPTED[len(preempted) :]} still to preempt"
            published = published_step(c)
            if all(running(p) and published > since[p] for p in current.values()):
                return True
            at = held()
            if at is not None:
                set_limit(at + STAGE)
            return False

        for role in PREEMPTED:
            wait_until(every_pod_trained, TIMEOUT, f"every pod trained, to preempt the {role}", interval=0.5)
            published = published_step(c)
            if role == PREEMPTED[-1]:
                limit.unlink()  # no more holds: the job runs to its end
            else:  # the chief trains while the node drains, but not to the end
                set_limit(max(published, held() or 0) + STAGE)  # past the step it may be held at
            wait_until(lambda: held() is None, 60, "the chief going on")
            victim = current[role]
            preempted[victim] = published
            stopped = docker(env, "stop", "-t", str(GRACE), victim, timeout=GRACE + 60)
            assert stopped.returncode == 0, stopped.stderr

        wait_until(sync, TIMEOUT + 60, "every Job complete", interval=1.0)
        logs(env, c.pods, tmp_path)  # every pod's log, kept by pytest for a look
        print(f"\npreempted at steps {list(preempted.values())}; judged {judged}; pod logs in {tmp_path}")

        ignored = [(role, code) for role, code, action in judged if action == "Ignore"]
        counted = [(role, code) for role, code, action in judged if action == "Count"]
        # Each preempted pod exits 143 on SIGTERM (a ps held by a busy chief may be killed: 137), and
        # none of the three counts toward backoffLimit.
        preemptions = [(role, code) for role, code in ignored if code != 175]
        assert [role for role, _ in preemptions] == PREEMPTED, judged
        assert all(code == 143 or (role, code) == ("ps", 137) for role, code in preemptions), judged
        # Under parameter servers a chief cannot go on without its ps: it exits 175 for a restart,
        # which its Job does not count either (the ps's Job judged the cause). Before: 1 counted.
        assert ("chief", 175, "Ignore") in judged and counted == [], judged

        store = c.server.client()
        prefix = f"jobs/{JOB}"
        keys = [o.object_name for o in store.list_objects(c.bucket, f"{prefix}/{chiefs.FOLDER}/", recursive=True)]
        records = chiefs.parse({k: store.get_object(c.bucket, k).read() for k in keys})
        assert [r.get("how") for r in records] == ["lost a peer", "preempted", "finished"], records
        # Nothing trained twice past a checkpoint: each new chief resumed from at least what was
        # published when the pod before it went.
        steps_at = list(preempted.values())
        assert records[1]["resumed_from_step"] >= steps_at[1], (records, steps_at)
        assert records[2]["resumed_from_step"] >= steps_at[2], (records, steps_at)
        result = json.loads(store.get_object(c.bucket, f"{prefix}/result.json").read())
        print(f"result.json: steps {result['steps']}, test accuracy {result['test_accuracy']:.3f}; chiefs {records}")
        rows = [json.loads(line) for line in store.get_object(c.bucket, f"{prefix}/metrics.jsonl").read().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(1, EPOCHS + 1))  # every epoch once
        assert result["steps"] == rows[-1]["step"] == EPOCHS * rows[0]["step"], (result, rows[0])
        assert result["test_accuracy"] > 0.75, result
