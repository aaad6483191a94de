"""The Kubernetes target: dry run, schedule, describe, logs, wait, cancel and list a job.

A job is the set of objects the chart renders for its JobSpec, all labelled `parallel-ml/job=NAME`:
that label finds them again for status, logs and delete, whichever mode made them.
"""

from __future__ import annotations

import datetime
import json
import pathlib
import re
import sys
import tempfile
import time
from typing import Any, Optional

import typer

from deploy.k8s.api import Api, Conflict, KubeError, NotFound, Resource, connect
from deploy.k8s.state import JOB_LABEL, JobState, age, from_jobs, from_tfjob
from deploy.spec import JobSpec

TFJOB = Resource("TFJob", "kubeflow.org/v1", "tfjobs")
JOB = Resource("Job", "batch/v1", "jobs")
POD = Resource("Pod", "v1", "pods")
CRD = Resource("CustomResourceDefinition", "apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False)
# Every kind the chart renders, in the order they are deleted: the owners of pods first.
KINDS = {r.kind: r for r in (TFJOB, JOB, Resource("Service", "v1", "services"),
                             Resource("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies"),
                             Resource("ServiceAccount", "v1", "serviceaccounts"))}
PART_OF = "app.kubernetes.io/part-of=parallel-ml"
POLL_SECONDS = 2.0
GONE_TIMEOUT = 120.0  # how long --replace waits for the old objects to be removed


def submit(spec: JobSpec, *, mode: str, context: Optional[str], crd: Optional[pathlib.Path], replace: bool,
           wait_for_end: bool, timeout: Optional[float], dry_run: bool) -> int:
    """Render, validate and create the job; with `wait_for_end`, its outcome as an exit code."""
    from deploy import render

    api = connect(context)
    namespace = spec.namespace if "namespace" in spec.model_fields_set else api.namespace
    spec = spec.model_copy(update={"mode": _mode(api, mode, spec), "namespace": namespace})
    with tempfile.TemporaryDirectory(prefix="pml-crd-") as folder:
        if spec.mode == "tfjob" and crd is None:
            # Validate against the CRD this cluster serves, not a copy that may be another version.
            served_by = re.sub(r"[^\w.-]", "_", api.context)
            crd = pathlib.Path(folder) / f"tfjobs.kubeflow.org-served-by-{served_by}.json"
            crd.write_text(json.dumps(api.get(CRD.path(name="tfjobs.kubeflow.org"))))
        rendered = render.render(spec, validate=True, crd=crd)
    for note in rendered.notes:
        typer.echo(f"note: {note}", err=True)
    objects = render.objects(rendered.manifest)
    if dry_run:
        typer.echo(rendered.manifest, nl=False)
        return 0
    if _find(api, spec.namespace, spec.name):
        if not replace:
            raise KubeError(f"job {spec.name} already exists in namespace {spec.namespace} (context {api.context}); "
                            f"pass --replace, pick another --name, or `pmlctl delete {spec.name} --target k8s`")
        _delete_all(api, spec.namespace, spec.name, quiet=True)
    _create_all(api, spec, objects)
    typer.echo(f"job {spec.name} submitted to namespace {spec.namespace} (context {api.context}, mode {spec.mode}, "
               f"{len(objects)} objects); follow it with `pmlctl status {spec.name} -t k8s`")
    return wait(api, spec.namespace, spec.name, timeout) if wait_for_end else 0


def _mode(api: Api, requested: str, spec: JobSpec) -> str:
    """--mode, else the job file's mode, else tfjob where the operator is installed."""
    if requested == "auto" and "mode" in spec.model_fields_set:
        requested = spec.mode
    served = _tfjob_served(api)
    if requested == "auto":
        return "tfjob" if served else "native"
    if requested == "tfjob" and not served:
        raise KubeError(f"the TFJob CRD (kubeflow.org/v1) is not installed in the cluster of context {api.context}; "
                        "use --mode native (plain Jobs and Services), or install the Kubeflow Training Operator "
                        "v1.9 (`pmlctl cluster up` does on kind)")
    if requested not in ("tfjob", "native"):
        raise KubeError(f"--mode {requested}: unknown mode; use auto, tfjob or native")
    return requested


def _tfjob_served(api: Api) -> bool:
    groups = api.get("/apis").get("groups") or []
    return any(g.get("name") == "kubeflow.org" and any(v.get("version") == "v1" for v in g.get("versions") or [])
               for g in groups)


def _create_all(api: Api, spec: JobSpec, objects: list[dict[str, Any]]) -> None:
    """Create in the chart's order; if one fails, remove the ones already made."""
    made = []
    try:
        for obj in objects:
            resource = KINDS[obj["kind"]]
            try:
                api.create(resource.path(spec.namespace), obj)
            except Conflict:
                raise KubeError(f"{obj['kind']}/{obj['metadata']['name']} already exists in namespace {spec.namespace}; "
                                f"`pmlctl delete {spec.name} --target k8s` or pick another --name") from None
            made.append((resource, obj["metadata"]["name"]))
    except KubeError:
        for resource, name in made:
            _delete_quietly(api, resource.path(spec.namespace, name))
        raise


def _find(api: Api, namespace: str, name: str) -> Optional[JobState]:
    """The job's state, or None when neither a TFJob nor native Jobs of that name exist."""
    selector = f"{JOB_LABEL}={name}"
    try:
        tfjob = api.get(TFJOB.path(namespace, name))
    except NotFound:
        tfjob = None
    jobs = [] if tfjob else api.get(JOB.path(namespace), labelSelector=selector)["items"]
    if tfjob is None and not jobs:
        return None
    pods = api.get(POD.path(namespace), labelSelector=selector)["items"]
    return from_tfjob(tfjob, pods) if tfjob else from_jobs(name, jobs, pods)


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
        job = describe(api, namespace, name)
        now = datetime.datetime.now(datetime.timezone.utc)
        if job.phase != shown:
            typer.echo(f"job {name}: {job.phase}", err=True)
            shown = job.phase
        if job.phase == "Succeeded":
            return 0
        if job.phase == "Failed":
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
        started = replica.pod and replica.phase != "Pending"
        if started or not follow:
            break
        time.sleep(POLL_SECONDS)  # -f waits for the container to start
    if not started:
        raise KubeError(f"{role} {index} of job {name} has not started yet ({replica.reason or replica.phase}); "
                        f"`pmlctl logs {name} -t k8s -f` waits for it")
    for chunk in api.stream(POD.path(namespace, replica.pod) + "/log", container="tensorflow", follow=follow):
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()


def delete(api: Api, namespace: str, name: str) -> None:
    removed = _delete_all(api, namespace, name, quiet=False)
    if not removed:
        typer.echo(f"job {name} not found in namespace {namespace} (context {api.context}); nothing to delete")
        return
    typer.echo(f"job {name} deleted: {', '.join(removed)} (its model dir is kept)")


def _delete_all(api: Api, namespace: str, name: str, quiet: bool) -> list[str]:
    """Delete every object labelled with the job and wait until they are gone, so the name is free."""
    removed, paths = [], []
    for resource in KINDS.values():
        try:
            items = api.get(resource.path(namespace), labelSelector=f"{JOB_LABEL}={name}")["items"]
        except NotFound:  # a kind this cluster does not serve (TFJob without the operator)
            continue
        for obj in items:
            path = resource.path(namespace, obj["metadata"]["name"])
            _delete_quietly(api, path)
            removed.append(f"{resource.kind}/{obj['metadata']['name']}")
            paths.append(path)
    deadline = time.monotonic() + GONE_TIMEOUT
    for path in paths:
        while _exists(api, path):
            if time.monotonic() > deadline:
                raise KubeError(f"{path} is still there {GONE_TIMEOUT:g}s after its deletion; check its finalizers")
            time.sleep(POLL_SECONDS)
    if quiet and removed:
        typer.echo(f"replaced job {name}: deleted {len(removed)} objects", err=True)
    return removed


def _delete_quietly(api: Api, path: str) -> None:
    try:
        api.delete(path)
    except NotFound:  # deleted meanwhile: that is what we wanted
        pass


def _exists(api: Api, path: str) -> bool:
    try:
        api.get(path)
        return True
    except NotFound:
        return False


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
