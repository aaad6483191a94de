"""The Kubernetes target: dry run, schedule, describe, logs, wait, cancel and list a job.

A job is the set of objects the chart renders for its JobSpec, all labelled `parallel-ml/job=NAME`
and, per submission, `parallel-ml/submission=ID`: the first label finds them again for status,
logs and delete, whichever mode made them; the second keeps a replaced job's last pods apart.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import re
import secrets
import sys
import tempfile
import time
from typing import Any, Callable, Optional

import typer

from deploy.k8s.api import (Api, BadRequest, Conflict, Forbidden, KubeError, NotFound, Resource, Transient,
                            connect)
from deploy.k8s.state import FAILED_ANNOTATION, JOB_LABEL, SUBMISSION_LABEL, JobState, age, from_jobs, from_tfjob
from deploy.spec import JobSpec

TFJOB = Resource("TFJob", "kubeflow.org/v1", "tfjobs")
JOB = Resource("Job", "batch/v1", "jobs")
POD = Resource("Pod", "v1", "pods")
EVENT = Resource("Event", "v1", "events")
CRD = Resource("CustomResourceDefinition", "apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False)
# The TFJob CRD of the operator we support, for users who may not read the cluster's (a
# namespaced user has no right to CRDs, which are cluster-scoped).
PACKAGED_CRD = pathlib.Path(__file__).resolve().parent / "kubeflow.org_tfjobs.yaml"
# Every kind the chart renders, in the order they are deleted: the owners of pods first.
KINDS = {r.kind: r for r in (TFJOB, JOB, Resource("Service", "v1", "services"),
                             Resource("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies"),
                             Resource("ServiceAccount", "v1", "serviceaccounts"))}
OWNERS = (TFJOB, JOB)
PART_OF = "app.kubernetes.io/part-of=parallel-ml"
POLL_SECONDS = 2.0
GONE_TIMEOUT = 120.0  # how long --replace waits for the old objects and pods: a pod's grace is 30 s
RETRY_CAP = 30.0  # the longest pause between two tries while the API server does not answer


def submit(spec: JobSpec, *, mode: str, context: Optional[str], crd: Optional[pathlib.Path], replace: bool,
           wait_for_end: bool, timeout: Optional[float], dry_run: bool) -> int:
    """Render, validate and create the job; with `wait_for_end`, its outcome as an exit code."""
    from deploy import render

    api = connect(context)
    namespace = spec.namespace if "namespace" in spec.model_fields_set else api.namespace
    spec = spec.model_copy(update={"mode": _mode(api, mode, spec), "namespace": namespace,
                                   "submission": secrets.token_hex(4)})
    with tempfile.TemporaryDirectory(prefix="pml-crd-") as folder:
        if spec.mode == "tfjob" and crd is None:
            crd = _served_crd(api, pathlib.Path(folder))
        rendered = render.render(spec, validate=True, crd=crd)
    for note in rendered.notes + _queue_notes(spec):
        typer.echo(f"note: {note}", err=True)
    objects = render.objects(rendered.manifest)
    if dry_run:
        typer.echo(rendered.manifest, nl=False)
        return 0
    existing = _find(api, spec.namespace, spec.name)
    if existing and not replace:
        raise KubeError(f"job {spec.name} already exists in namespace {spec.namespace} (context {api.context}); "
                        f"pass --replace, pick another --name, or `pmlctl delete {spec.name} --target k8s`")
    # With --replace the old job; without it, what an ended job may have left (its Services and
    # ServiceAccount, from before pmlctl gave them owners).
    removed = _delete_all(api, spec.namespace, spec.name)
    if removed:
        what = "replaced job" if existing else "removed what an ended job left of"
        typer.echo(f"{what} {spec.name}: deleted {len(removed)} objects", err=True)
    _create_all(api, spec, objects)
    typer.echo(f"job {spec.name} submitted to namespace {spec.namespace} (context {api.context}, mode {spec.mode}, "
               f"{len(objects)} objects); follow it with `pmlctl status {spec.name} -t k8s`")
    return wait(api, spec.namespace, spec.name, timeout) if wait_for_end else 0


def _served_crd(api: Api, folder: pathlib.Path) -> pathlib.Path:
    """The TFJob CRD this cluster serves, as a file; the packaged one where reading it is forbidden."""
    try:
        served = api.get(CRD.path(name="tfjobs.kubeflow.org"))
    except Forbidden:
        typer.echo(f"note: context {api.context} may not read CustomResourceDefinitions (cluster-scoped); the TFJob is "
                   f"checked against the CRD of Training Operator v1.9.4 that ships with pmlctl", err=True)
        return PACKAGED_CRD
    served_by = re.sub(r"[^\w.-]", "_", api.context)
    path = folder / f"tfjobs.kubeflow.org-served-by-{served_by}.json"
    path.write_text(json.dumps(served))
    return path


def _queue_notes(spec: JobSpec) -> list[str]:
    if spec.mode != "native" or not spec.scheduling.queue:
        return []
    return [f"Kueue admits each task's Job of a native job on its own, so part of job {spec.name} may run while the "
            f"rest waits in queue {spec.scheduling.queue} (the chief then waits for its peers); use --mode tfjob, "
            "which Kueue admits whole"]


def _mode(api: Api, requested: str, spec: JobSpec) -> str:
    """--mode, else the job file's mode, else tfjob where the operator is installed."""
    if requested == "auto" and "mode" in spec.model_fields_set:
        requested = spec.mode
    served = _tfjob_served(api)
    if requested == "auto":
        return "tfjob" if served else "native"
    if requested == "tfjob" and not served:
        raise KubeError(f"the cluster of context {api.context} does not serve tfjobs.kubeflow.org/v1 (the Kubeflow "
                        "Training Operator's TFJob); use --mode native (plain Jobs and Services), or install the "
                        "Training Operator v1.9 (`pmlctl cluster up` does on kind)")
    if requested not in ("tfjob", "native"):
        raise KubeError(f"--mode {requested}: unknown mode; use auto, tfjob or native")
    return requested


def _tfjob_served(api: Api) -> bool:
    """Is the resource served, not only its group: Kubeflow platforms serve kubeflow.org/v1 for
    Notebooks and Profiles without the Training Operator."""
    try:
        resources = api.get(f"/apis/{TFJOB.api_version}").get("resources") or []
    except NotFound:
        return False
    return any(r.get("name") == TFJOB.plural for r in resources)


def _create_all(api: Api, spec: JobSpec, objects: list[dict[str, Any]]) -> None:
    """Create in the chart's order, then give each object an owner; if one fails, remove the ones
    already made."""
    made = []
    try:
        for obj in objects:
            resource = KINDS[obj["kind"]]
            try:
                created = api.create(resource.path(spec.namespace), obj)
            except Conflict:
                raise KubeError(f"{obj['kind']}/{obj['metadata']['name']} already exists in namespace {spec.namespace}; "
                                f"`pmlctl delete {spec.name} --target k8s` or pick another --name") from None
            except NotFound:  # the only thing a create can miss is its namespace
                raise KubeError(f"namespace {spec.namespace} does not exist in the cluster of context {api.context}; "
                                f"create it (`kubectl create namespace {spec.namespace}`) or pass another -n") from None
            made.append((resource, created))
        _adopt(api, spec.namespace, made)
    except KubeError:
        for resource, obj in made:
            _delete_quietly(api, resource.path(spec.namespace, obj["metadata"]["name"]))
        raise


def _adopt(api: Api, namespace: str, made: list[tuple[Resource, dict[str, Any]]]) -> None:
    """Make the TFJob (or the task Jobs) own the other objects, so that what deletes the job (its
    TTL, which removes only the Job or TFJob: kubernetes pkg/controller/ttlafterfinished, kubeflow/
    trainer v1.9.4 pkg/controller.v1/common/job.go CleanupJob) leaves nothing behind: the garbage
    collector removes an object once all its owners are gone. blockOwnerDeletion is left out: it
    needs the right to update the owner's finalizers (kubernetes plugin/pkg/admission/gc)."""
    owners = {obj["metadata"]["name"]: {"apiVersion": obj["apiVersion"], "kind": obj["kind"],
                                        "name": obj["metadata"]["name"], "uid": obj["metadata"]["uid"]}
              for resource, obj in made if resource in OWNERS}
    for resource, obj in made:
        if resource in OWNERS:
            continue
        name = obj["metadata"]["name"]
        # A task's Service goes with its Job; what serves the whole job, with the last of them.
        refs = [owners[name]] if name in owners else list(owners.values())
        try:
            api.patch(resource.path(namespace, name), {"metadata": {"ownerReferences": refs}})
        except Forbidden:  # the job still runs; only the cleanup after its TTL is lost
            typer.echo(f"note: may not patch {resource.plural} in namespace {namespace}, so {resource.kind}/{name} "
                       "stays after the job ends; `pmlctl delete` or the next submit of this name removes it", err=True)


def _find(api: Api, namespace: str, name: str) -> Optional[JobState]:
    """The job's state, or None when neither a TFJob nor native Jobs of that name exist."""
    try:
        tfjob = api.get(TFJOB.path(namespace, name))
    except NotFound:
        tfjob = None
    jobs = [] if tfjob else api.get(JOB.path(namespace), labelSelector=f"{JOB_LABEL}={name}")["items"]
    if tfjob is None and not jobs:
        return None
    owner = tfjob or jobs[0]
    selector = f"{JOB_LABEL}={name}"
    submission = (owner["metadata"].get("labels") or {}).get(SUBMISSION_LABEL)
    if submission:  # the pods of this submission only, never a replaced one's
        selector += f",{SUBMISSION_LABEL}={submission}"
    pods = api.get(POD.path(namespace), labelSelector=selector)["items"]
    if not tfjob:
        return from_jobs(name, jobs, pods)
    return from_tfjob(tfjob, pods, _events(api, namespace, tfjob["metadata"]["uid"]))


def _events(api: Api, namespace: str, uid: str) -> list[dict[str, Any]]:
    """Events about one object; none where the user may not list events (they only add detail)."""
    try:
        return api.get(EVENT.path(namespace), fieldSelector=f"involvedObject.uid={uid}")["items"]
    except Forbidden:
        return []


def describe(api: Api, namespace: str, name: str) -> JobState:
    found = _find(api, namespace, name)
    if found is None:
        raise KubeError(f"job {name} not found in namespace {namespace} (context {api.context}); "
                        "`pmlctl list -t k8s` shows its jobs, or pass -n NAMESPACE / --context")
    return found


def status(api: Api, namespace: str, name: str, output: str) -> None:
    job = describe(api, namespace, name)
    if output == "json":
        typer.echo(json.dumps(job.to_json(), indent=2))
        return
    now = datetime.datetime.now(datetime.timezone.utc)
    typer.echo(f"job {job.name}: {job.phase} ({job.mode}, namespace {job.namespace}, context {api.context}), "
               f"age {age(job.created, now)}")
    for c in job.conditions:
        if c["status"] == "True":
            typer.echo(f"  {c['object']} {c['type']}: {c['reason']} {c['message']}".rstrip())
    typer.echo(f"{'TASK':<12} {'POD':<32} {'PHASE':<10} {'RESTARTS':>8} {'EXIT':>5}  REASON")
    for r in job.replicas:
        exit_code = "" if r.exit_code is None else r.exit_code
        reason = f"{r.reason}: {r.message}" if r.reason else ""
        typer.echo(f"{r.label:<12} {r.pod or '-':<32} {r.phase:<10} {r.restarts:>8} {exit_code:>5}  {reason}".rstrip())
    problem = job.problem(now)
    if problem and not job.finished:
        typer.echo(f"error: {problem}", err=True)


def wait(api: Api, namespace: str, name: str, timeout: Optional[float]) -> int:
    """0 when the chief completed, 1 when the job failed or cannot go on, 2 after `timeout` seconds."""
    deadline = None if timeout is None else time.monotonic() + timeout
    shown = ""
    while True:
        job = _patiently(api, lambda: describe(api, namespace, name), deadline)
        if job is None:
            typer.echo(f"error: job {name}: the cluster of context {api.context} did not answer before --timeout "
                       f"{timeout:g}s ended", err=True)
            return 2
        now = datetime.datetime.now(datetime.timezone.utc)
        if job.phase != shown:
            typer.echo(f"job {name}: {job.phase}", err=True)
            shown = job.phase
        if job.phase == "Succeeded":
            return 0
        if job.phase == "Failed":
            if any(c["object"] == "pmlctl" for c in job.conditions) and not job.failed_by_pmlctl:
                try:
                    _stop(api, job)
                except KubeError as err:  # the verdict stands; only the stop did not happen
                    typer.echo(f"note: could not suspend job {name}: {err}", err=True)
            typer.echo(f"error: job {name} failed: {_failure(job)}; `pmlctl logs {name} -t k8s` shows the chief's log",
                       err=True)
            return 1
        problem = job.problem(now)
        if problem:
            typer.echo(f"error: {problem}", err=True)
            return 1
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            typer.echo(f"error: job {name} still {job.phase} after {timeout:g}s; wait longer with --timeout, or "
                       f"`pmlctl status {name} -t k8s` shows what it waits for", err=True)
            return 2
        time.sleep(POLL_SECONDS if left is None else min(POLL_SECONDS, left))


def _patiently(api: Api, read: Callable[[], JobState], deadline: Optional[float]) -> Optional[JobState]:
    """`read()`, tried again with backoff while the API server answers 429 or 5xx or cannot be
    reached (a zonal control plane being upgraded); None once `deadline` has passed."""
    pause, told = POLL_SECONDS, False
    while True:
        try:
            return read()
        except Transient as err:
            if not told:
                typer.echo(f"note: {err}; trying again until it answers", err=True)
                told = True
            pause = min(err.retry_after or pause * 2, RETRY_CAP)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                pause = min(pause, left)  # one more try at the deadline itself
            time.sleep(pause)


def _stop(api: Api, job: JobState) -> None:
    """Suspend a job that pmlctl found failed, and say why on it: its controllers then delete its
    pods (kubeflow/trainer v1.9.4 pkg/controller.v1/common/job.go, suspend; kubernetes
    pkg/controller/job for a Job), and what it made stays for a look until `pmlctl delete`."""
    verdict = next(c for c in job.conditions if c["object"] == "pmlctl")
    failed = {"metadata": {"annotations": {FAILED_ANNOTATION: f"{verdict['reason']} {verdict['message']}"}}}
    if job.mode == "tfjob":
        api.patch(TFJOB.path(job.namespace, job.name), {**failed, "spec": {"runPolicy": {"suspend": True}}})
        return
    for item in api.get(JOB.path(job.namespace), labelSelector=f"{JOB_LABEL}={job.name}")["items"]:
        api.patch(JOB.path(job.namespace, item["metadata"]["name"]), {**failed, "spec": {"suspend": True}})


def _failure(job: JobState) -> str:
    failed = [c for c in job.conditions if c["type"] == "Failed" and c["status"] == "True"]
    if failed:
        return f"{failed[0]['object']}: {failed[0]['reason']} {failed[0]['message']}".strip()
    codes = [f"{r.label} exit code {r.exit_code}" for r in job.replicas if r.exit_code]
    return ", ".join(codes) or "no reason given"


def logs(api: Api, namespace: str, name: str, role: str, index: int, follow: bool) -> None:
    """One task's log; with `follow`, until its container ends (the chief's ends with the job)."""
    while True:
        job = describe(api, namespace, name)
        replica = next((r for r in job.replicas if r.role == role and r.index == index), None)
        if replica is None:
            tasks = ", ".join(f"--role {r.role} --index {r.index}" for r in job.replicas)
            raise KubeError(f"job {name} has no {role} {index}; it has {tasks}")
        problem = job.problem(datetime.datetime.now(datetime.timezone.utc))
        if problem:
            raise KubeError(problem)
        if job.finished and not replica.pod:
            raise KubeError(f"job {name} is {job.phase} and its {role} {index} has no pod left (cleanPodPolicy or "
                            "TTL removed it)")
        if replica.pod and replica.phase != "Pending":
            try:
                for chunk in api.stream(POD.path(namespace, replica.pod) + "/log", container="tensorflow",
                                        follow=follow):
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                return
            except BadRequest as err:  # the pod runs, its container does not yet (kubelet's 400)
                if not follow:
                    raise KubeError(f"{role} {index} of job {name} has not started yet ({err}); "
                                    f"`pmlctl logs {name} -t k8s -f` waits for it") from None
        elif not follow:
            raise KubeError(f"{role} {index} of job {name} has not started yet ({replica.reason or replica.phase}); "
                            f"`pmlctl logs {name} -t k8s -f` waits for it")
        time.sleep(POLL_SECONDS)  # -f waits for the container to start


def delete(api: Api, namespace: str, name: str) -> None:
    removed = _delete_all(api, namespace, name)
    if not removed:
        typer.echo(f"job {name} not found in namespace {namespace} (context {api.context}); nothing to delete")
        return
    typer.echo(f"job {name} deleted: {', '.join(removed)} (its model dir is kept)")


def _delete_all(api: Api, namespace: str, name: str) -> list[str]:
    """Delete every object labelled with the job, and wait until they and the job's pods are gone:
    a Terminating pod keeps its DNS name for up to its 30 s grace (headless Services with
    publishNotReadyAddresses publish it: kubernetes staging/src/k8s.io/endpointslice/utils.go,
    podToEndpoint), and a replacement must never meet it."""
    removed = []
    # Pods last, and not reported: those a controller made go with it; this reaches the rest.
    for resource, obj in _labelled(api, namespace, name, (*KINDS.values(), POD)):
        _delete_quietly(api, resource.path(namespace, obj["metadata"]["name"]))
        if resource is not POD:
            removed.append(f"{resource.kind}/{obj['metadata']['name']}")
    deadline = time.monotonic() + GONE_TIMEOUT
    while left := _labelled(api, namespace, name, (*KINDS.values(), POD)):
        if time.monotonic() > deadline:
            stuck = ", ".join(f"{r.kind}/{o['metadata']['name']}" for r, o in left)
            raise KubeError(f"{stuck} still there {GONE_TIMEOUT:g}s after the deletion of job {name}; check their "
                            "finalizers (`kubectl get -o yaml`)")
        time.sleep(POLL_SECONDS)
    return removed


def _labelled(api: Api, namespace: str, name: str, kinds) -> list[tuple[Resource, dict[str, Any]]]:
    found = []
    for resource in kinds:
        try:
            items = api.get(resource.path(namespace), labelSelector=f"{JOB_LABEL}={name}")["items"]
        except NotFound:  # a kind this cluster does not serve (TFJob without the operator)
            continue
        found += [(resource, obj) for obj in items]
    return found


def _delete_quietly(api: Api, path: str) -> None:
    try:
        api.delete(path)
    except NotFound:  # deleted meanwhile: that is what we wanted
        pass


def list_jobs(api: Api, namespace: str) -> None:
    states = []
    try:
        states += [from_tfjob(j, []) for j in api.get(TFJOB.path(namespace), labelSelector=PART_OF)["items"]]
    except NotFound:  # no operator in this cluster: only native jobs
        pass
    native: dict[str, list[dict[str, Any]]] = {}
    for j in api.get(JOB.path(namespace), labelSelector=PART_OF)["items"]:
        native.setdefault(j["metadata"]["labels"][JOB_LABEL], []).append(j)
    states += [from_jobs(name, jobs, []) for name, jobs in native.items()]
    if not states:
        typer.echo(f"no jobs in namespace {namespace} (context {api.context}): submit one with "
                   "`pmlctl submit --target k8s`")
        return
    now = datetime.datetime.now(datetime.timezone.utc)
    typer.echo(f"{'NAME':<24} {'MODE':<7} {'STATE':<11} AGE")
    for s in sorted(states, key=lambda s: s.name):
        typer.echo(f"{s.name:<24} {s.mode:<7} {s.phase:<11} {age(s.created, now)}")
