"""The Kubernetes target: dry run, submit, status, logs, wait, delete and list a job.

A job is the set of objects the chart renders for its JobSpec, all labelled `parallel-ml/job=NAME`
and, per submission, `parallel-ml/submission=ID`: the first label finds them again for status,
logs and delete, whichever mode made them; the second keeps a replaced job's last pods apart.
Modelled on TorchX's Kubernetes scheduler (pytorch/torchx, torchx/schedulers/kubernetes_scheduler.py):
its `_submit_dryrun` returns the rendered resource without creating it, and `schedule` creates it;
here the dry run also asks the cluster which mode it can run (the Training Operator or plain Jobs)
and which TFJob schema it serves, so that what it prints is what `submit` creates.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import pathlib
import re
import secrets
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from deploy import workspaces
from deploy.k8s.api import (
    Api,
    BadRequest,
    Conflict,
    Forbidden,
    KubeError,
    NotFound,
    Resource,
    Transient,
    connect,
    has_kubeconfig,
    no_kubeconfig,
    place,
)
from deploy.k8s.shipping import Destination, destination, pinned, planned, ship
from deploy.k8s.state import FAILED_ANNOTATION, JOB_LABEL, SUBMISSION_LABEL, JobState, from_jobs, from_tfjob
from deploy.spec import JobSpec
from deploy.target import (
    COMMANDS,
    FAILED,
    SUCCEEDED,
    Handle,
    HoldsJob,
    JobList,
    JobStatus,
    Option,
    Outcome,
    PhaseChanged,
    Plan,
    Target,
    TaskStatus,
)
from deploy.workspaces import Shipment

TFJOB = Resource("TFJob", "kubeflow.org/v1", "tfjobs")
JOB = Resource("Job", "batch/v1", "jobs")
POD = Resource("Pod", "v1", "pods")
EVENT = Resource("Event", "v1", "events")
CRD = Resource("CustomResourceDefinition", "apiextensions.k8s.io/v1", "customresourcedefinitions", namespaced=False)
# The TFJob CRD of the operator we support, for users who may not read the cluster's (a
# namespaced user has no right to CRDs, which are cluster-scoped).
PACKAGED_CRD = pathlib.Path(__file__).resolve().parent / "kubeflow.org_tfjobs.yaml"
# Every kind the chart renders, in the order they are deleted: the owners of pods first.
KINDS = {
    r.kind: r
    for r in (
        TFJOB,
        JOB,
        Resource("Service", "v1", "services"),
        Resource("NetworkPolicy", "networking.k8s.io/v1", "networkpolicies"),
        Resource("ServiceAccount", "v1", "serviceaccounts"),
    )
}
OWNERS = (TFJOB, JOB)
PART_OF = "app.kubernetes.io/part-of=parallel-ml"
POLL_SECONDS = 2.0
GONE_TIMEOUT = 120.0  # how long --replace waits for the old objects and pods: a pod's grace is 30 s
RETRY_CAP = 30.0  # the longest pause between two tries while the API server does not answer


@dataclass
class KubePlan(Plan):
    spec: JobSpec
    api: Api
    manifest: str
    objects: list[dict[str, Any]]
    replace: bool = False  # --replace: delete a job of the same name first
    shipment: Shipment | None = None  # a task module's workspace, shipped at submit
    destination: Destination | None = None  # where its image goes
    base_image: str = ""  # the image the task image is built FROM

    def describe(self) -> str:
        return self.manifest


class KubernetesTarget(Target):
    name = "k8s"
    runs_image = True
    summary = "the kubeconfig's cluster, as a TFJob or as plain Jobs and Services"
    options = (
        Option(
            "context",
            str,
            "kubeconfig context of the cluster [default: the current one].",
            commands=COMMANDS,
            locates=True,
        ),
        Option(
            "namespace",
            str,
            "Kubernetes namespace [default: the context's; submit: a job file's first].",
            short="-n",
            commands=COMMANDS,
            locates=True,
        ),
        Option("mode", str, "tfjob, native, or auto (tfjob where the Training Operator is installed).", default="auto"),
        Option("replace", bool, "Delete a job of the same name first.", default=False),
        Option("crd", pathlib.Path, "TFJob CRD file to validate against [default: the one the cluster serves]."),
        Option(
            "image-repo",
            str,
            "With --task: the registry path the task image is pushed to, such as "
            "REGION-docker.pkg.dev/PROJECT/REPO; its pods then pull it by digest. Not needed on kind, which gets it loaded.",
        ),
    )

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._apis: dict[str | None, Api] = {}

    @classmethod
    def knows(cls, name: str) -> HoldsJob:
        return "maybe" if has_kubeconfig() else "no"  # only the cluster can tell, and there is one to ask

    @classmethod
    def unasked(cls) -> str | None:
        return None if has_kubeconfig() else no_kubeconfig()

    def place(self) -> Any:
        return place()

    def _api(self, context: str | None) -> Api:
        """One connection per context, whether named or the kubeconfig's current one."""
        if context not in self._apis:
            api = connect(context)
            self._apis[context] = self._apis[api.context] = api
        return self._apis[context]

    def handle(self, name: str, options: dict[str, Any]) -> Handle:
        api = self._api(options.get("context"))
        namespace = options.get("namespace") or api.namespace
        return Handle(
            self.name,
            name,
            {"context": options.get("context"), "namespace": namespace},
            f"in namespace {namespace} (context {api.context})",
        )

    def plan(self, spec: JobSpec, options: dict[str, Any], cpus: list[int] | None = None) -> KubePlan:
        """Render, for the mode the cluster can run, and validate against the TFJob schema it serves."""
        from deploy import render

        api = self._api(options.get("context"))
        namespace = options.get("namespace") or (
            spec.namespace if "namespace" in spec.model_fields_set else api.namespace
        )
        spec = spec.model_copy(
            update={
                "mode": _mode(api, options.get("mode", "auto"), spec),
                "namespace": namespace,
                "submission": secrets.token_hex(4),
            }
        )
        base_image, shipment, where = spec.image, workspaces.shipment(spec), None
        if shipment:
            where = destination(api.context, options.get("image_repo"))
            spec = planned(spec, shipment, where)
            self.note(where.describe(shipment, base_image))
        else:  # a task image is loaded, or pushed and named by digest at submit
            spec = pinned(spec, api.context, self.note)
        crd = options.get("crd")
        with tempfile.TemporaryDirectory(prefix="pml-crd-") as folder:
            if spec.mode == "tfjob" and crd is None:
                crd = _served_crd(api, pathlib.Path(folder), self.note)
            rendered = render.render(spec, validate=True, crd=crd)
        for note in rendered.notes + _queue_notes(spec):
            self.note(note)
        return KubePlan(
            spec,
            api,
            rendered.manifest,
            render.objects(rendered.manifest),
            bool(options.get("replace")),
            shipment,
            where,
            base_image,
        )

    def submit(self, plan: KubePlan) -> Handle:
        api, spec = plan.api, plan.spec
        existing = _find(api, spec.namespace, spec.name)
        if existing and not plan.replace:
            raise KubeError(
                f"job {spec.name} already exists in namespace {spec.namespace} (context {api.context}); "
                f"pass --replace, pick another --name, or `pmlctl delete {spec.name} --target k8s`"
            )
        objects = plan.objects
        if plan.shipment and plan.destination:
            from deploy import render

            image = ship(plan.shipment, plan.base_image, plan.destination, self.note)
            if image != spec.image:  # pushed: from now on the pods name it by its digest
                spec = spec.model_copy(update={"image": image})
                objects = render.objects(render.manifest(spec))
        # With --replace the old job; without it, what an ended job may have left (its Services and
        # ServiceAccount, from before pmlctl gave them owners).
        removed = _delete_all(api, spec.namespace, spec.name)
        if removed:
            what = "replaced job" if existing else "removed what an ended job left of"
            self.note(f"{what} {spec.name}: deleted {len(removed)} objects")
        _create_all(api, spec, objects, self.note)
        return Handle(
            self.name,
            spec.name,
            {"context": api.context, "namespace": spec.namespace},
            f"to namespace {spec.namespace} (context {api.context}, mode {spec.mode}, {len(objects)} objects)",
        )

    def _describe(self, handle: Handle) -> tuple[Api, JobState]:
        api = self._api(handle.scope["context"])
        found = _find(api, handle.scope["namespace"], handle.name)
        if found is None:
            raise Gone(
                f"job {handle.name} not found {handle.place}; `pmlctl list -t k8s` shows its jobs, or pass "
                "-n NAMESPACE / --context"
            )
        return api, found

    def status(self, handle: Handle) -> JobStatus:
        api, job = self._describe(handle)
        from pml_trainer import chiefs

        status = _status(job, api, datetime.datetime.now(datetime.timezone.utc))
        if (history := _chief_history(api, job)) is not None:
            status.details["chief_history"] = history
            status.notes.append(chiefs.describe(history))
        return status

    def wait(self, handle: Handle, timeout: float | None) -> Outcome:
        """Succeeded when the chief completed; failed when the job failed or cannot go on; timed
        out after `timeout` seconds, riding out an API server that does not answer meanwhile."""
        name = handle.name
        deadline = None if timeout is None else time.monotonic() + timeout
        shown, results, looked = "", None, False
        while True:
            try:
                found = _patiently(lambda: self._describe(handle), deadline, self.note)
            except Gone:
                if results is None:
                    raise
                return _collected(name, results)
            if found is not None and not looked and not found[1].finished:
                results, looked = _results(*found), True
            if found is None:
                context = self._api(handle.scope["context"]).context
                return Outcome(
                    name,
                    shown,
                    f"job {name}: the cluster of context {context} did not answer before --timeout {timeout:g}s ended",
                    timed_out=True,
                )
            api, job = found
            if job.phase != shown:
                self.events(PhaseChanged(name, job.phase))
                shown = job.phase
            if job.phase == SUCCEEDED:
                return Outcome(name, SUCCEEDED)
            if job.phase == FAILED:
                if _to_stop(job):
                    try:
                        for note in _stop(api, job):
                            self.note(note)
                    except (KubeError, Transient) as err:  # the verdict stands; only the stop did not happen
                        self.note(f"could not suspend job {name}: {err}")
                return Outcome(
                    name,
                    FAILED,
                    f"job {name} failed: {_failure(job)}; `pmlctl logs {name} -t k8s` shows the chief's log",
                )
            problem = job.problem(datetime.datetime.now(datetime.timezone.utc))
            if problem:
                return Outcome(name, job.phase, problem)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return Outcome(
                    name,
                    job.phase,
                    f"job {name} still {job.phase} after {timeout:g}s; wait longer with "
                    f"--timeout, or `pmlctl status {name} -t k8s` shows what it waits for",
                    timed_out=True,
                )
            time.sleep(POLL_SECONDS if left is None else min(POLL_SECONDS, left))

    def logs(self, handle: Handle, role: str | None, index: int, follow: bool) -> Iterator[bytes]:
        """One task's log (the chief's for the whole job); with `follow`, until its container ends
        (the chief's ends with the job)."""
        name, role = handle.name, role or "chief"
        while True:
            api, job = self._describe(handle)
            replica = next((r for r in job.replicas if r.role == role and r.index == index), None)
            if replica is None:
                tasks = ", ".join(f"--role {r.role} --index {r.index}" for r in job.replicas)
                raise KubeError(f"job {name} has no {role} {index}; it has {tasks}")
            problem = job.problem(datetime.datetime.now(datetime.timezone.utc))
            if problem:
                raise KubeError(problem)
            if job.finished and not replica.pod:
                raise KubeError(
                    f"job {name} is {job.phase} and its {role} {index} has no pod left (cleanPodPolicy or "
                    "TTL removed it)"
                )
            if replica.pod and replica.phase != "Pending":
                try:
                    yield from api.stream(
                        POD.path(job.namespace, replica.pod) + "/log", container="tensorflow", follow=follow
                    )
                    return
                except BadRequest as err:  # the pod runs, its container does not yet (kubelet's 400)
                    if not follow:
                        raise KubeError(
                            f"{role} {index} of job {name} has not started yet ({err}); "
                            f"`pmlctl logs {name} -t k8s -f` waits for it"
                        ) from None
            elif not follow:
                raise KubeError(
                    f"{role} {index} of job {name} has not started yet ({replica.reason or replica.phase}); "
                    f"`pmlctl logs {name} -t k8s -f` waits for it"
                )
            time.sleep(POLL_SECONDS)  # -f waits for the container to start

    def delete(self, handle: Handle) -> str | None:
        removed = _delete_all(self._api(handle.scope["context"]), handle.scope["namespace"], handle.name)
        return f"{', '.join(removed)} (its model dir is kept)" if removed else None

    def list(self, options: dict[str, Any]) -> JobList:
        api = self._api(options.get("context"))
        namespace = options.get("namespace") or api.namespace
        states = []
        try:
            states += [from_tfjob(j, []) for j in api.get(TFJOB.path(namespace), labelSelector=PART_OF)["items"]]
        except NotFound:  # no operator in this cluster: only native jobs
            pass
        native: dict[str, list[dict[str, Any]]] = {}
        for j in api.get(JOB.path(namespace), labelSelector=PART_OF)["items"]:
            native.setdefault(j["metadata"]["labels"][JOB_LABEL], []).append(j)
        states += [from_jobs(name, jobs, []) for name, jobs in native.items()]
        now = datetime.datetime.now(datetime.timezone.utc)
        return JobList(
            self.name,
            f"in namespace {namespace} (context {api.context})",
            [_status(s, api, now) for s in sorted(states, key=lambda s: s.name)],
        )


def _status(job: JobState, api: Api, now: datetime.datetime) -> JobStatus:
    """The shared status type, from what the API server says."""
    return JobStatus(
        job.name,
        KubernetesTarget.name,
        job.phase,
        job.mode,
        f"namespace {job.namespace}, context {api.context}",
        created=job.created,
        experiment=job.experiment or None,
        problem=None if job.finished else job.problem(now),
        notes=[
            f"{c['object']} {c['type']}: {c['reason']} {c['message']}".rstrip()
            for c in job.conditions
            if c["status"] == "True"
        ]
        + _preemption_notes(job),
        tasks=[
            TaskStatus(r.role, r.index, r.phase, r.pod, r.restarts, r.exit_code, r.reason, r.message)
            for r in job.replicas
        ],
        details={
            "namespace": job.namespace,
            "context": api.context,
            "submission": job.submission,
            "backoff_limit": job.backoff_limit,
            "restarts": job.restarts,
            "preemptions": job.preemptions,
            "conditions": job.conditions,
        },
    )


def _preemption_notes(job: JobState) -> list[str]:
    """Preemptions said apart from the restarts that count toward policy.backoff_limit (issue 26)."""
    if not job.preemptions:
        return []
    limit = f" of policy.backoff_limit {job.backoff_limit}" if job.backoff_limit is not None else ""
    return [f"{job.preemptions} preemption(s), not counted; {job.restarts} restart(s) counted{limit}"]


def _served_crd(api: Api, folder: pathlib.Path, note: Callable[[str], None]) -> pathlib.Path:
    """The TFJob CRD this cluster serves, as a file; the packaged one where reading it is forbidden."""
    try:
        served = api.get(CRD.path(name="tfjobs.kubeflow.org"))
    except Forbidden:
        note(
            f"context {api.context} may not read CustomResourceDefinitions (cluster-scoped); the TFJob is "
            "checked against the CRD of Training Operator v1.9.4 that ships with pmlctl"
        )
        return PACKAGED_CRD
    served_by = re.sub(r"[^\w.-]", "_", api.context)
    path = folder / f"tfjobs.kubeflow.org-served-by-{served_by}.json"
    path.write_text(json.dumps(served))
    return path


def _queue_notes(spec: JobSpec) -> list[str]:
    if spec.mode != "native" or not spec.scheduling.queue:
        return []
    return [
        f"Kueue admits each task's Job of a native job on its own, so part of job {spec.name} may run while the "
        f"rest waits in queue {spec.scheduling.queue} (the chief then waits for its peers); use --mode tfjob, "
        "which Kueue admits whole"
    ]


def _mode(api: Api, requested: str, spec: JobSpec) -> str:
    """--mode, else the job file's mode, else tfjob where the operator is installed."""
    if requested == "auto" and "mode" in spec.model_fields_set:
        requested = spec.mode
    served = _tfjob_served(api)
    if requested == "auto":
        return "tfjob" if served else "native"
    if requested == "tfjob" and not served:
        raise KubeError(
            f"the cluster of context {api.context} does not serve tfjobs.kubeflow.org/v1 (the Kubeflow "
            "Training Operator's TFJob); use --mode native (plain Jobs and Services), or install the "
            "Training Operator v1.9 (`pmlctl cluster up` does on kind)"
        )
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


def _create_all(api: Api, spec: JobSpec, objects: list[dict[str, Any]], note: Callable[[str], None]) -> None:
    """Create in the chart's order, then give each object an owner; if one fails, remove the ones
    already made."""
    made = []
    try:
        for obj in objects:
            resource = KINDS[obj["kind"]]
            try:
                created = api.create(resource.path(spec.namespace), obj)
            except Conflict:
                raise KubeError(
                    f"{obj['kind']}/{obj['metadata']['name']} already exists in namespace {spec.namespace}; "
                    f"`pmlctl delete {spec.name} --target k8s` or pick another --name"
                ) from None
            except NotFound:  # the only thing a create can miss is its namespace
                raise KubeError(
                    f"namespace {spec.namespace} does not exist in the cluster of context {api.context}; "
                    f"create it (`kubectl create namespace {spec.namespace}`) or pass another -n"
                ) from None
            made.append((resource, created))
        _adopt(api, spec.namespace, made, note)
    except (KubeError, Transient):
        for resource, obj in made:
            _delete_quietly(api, resource.path(spec.namespace, obj["metadata"]["name"]))
        raise


def _adopt(api: Api, namespace: str, made: list[tuple[Resource, dict[str, Any]]], note: Callable[[str], None]) -> None:
    """Make the TFJob (or the task Jobs) own the other objects, so that what deletes the job (its
    TTL, which removes only the Job or TFJob: kubernetes pkg/controller/ttlafterfinished, kubeflow/
    trainer v1.9.4 pkg/controller.v1/common/job.go CleanupJob) leaves nothing behind: the garbage
    collector removes an object once all its owners are gone. blockOwnerDeletion is left out: it
    needs the right to update the owner's finalizers (kubernetes plugin/pkg/admission/gc)."""
    owners = {
        obj["metadata"]["name"]: {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"],
        }
        for resource, obj in made
        if resource in OWNERS
    }
    for resource, obj in made:
        if resource in OWNERS:
            continue
        name = obj["metadata"]["name"]
        # A task's Service goes with its Job; what serves the whole job, with the last of them.
        refs = [owners[name]] if name in owners else list(owners.values())
        try:
            api.patch(resource.path(namespace, name), {"metadata": {"ownerReferences": refs}})
        except Forbidden:  # the job still runs; only the cleanup after its TTL is lost
            note(
                f"may not patch {resource.plural} in namespace {namespace}, so {resource.kind}/{name} "
                "stays after the job ends; `pmlctl delete` or the next submit of this name removes it"
            )


def _find(api: Api, namespace: str, name: str) -> JobState | None:
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


def _patiently(
    read: Callable[[], tuple[Api, JobState]], deadline: float | None, note: Callable[[str], None]
) -> tuple[Api, JobState] | None:
    """`read()`, tried again with backoff while the API server answers 429 or 5xx or cannot be
    reached (a zonal control plane being upgraded); None once `deadline` has passed."""
    pause, told = POLL_SECONDS, False
    while True:
        try:
            return read()
        except Transient as err:
            if not told:
                note(f"{err}; trying again until it answers")
                told = True
            pause = min(err.retry_after or pause * 2, RETRY_CAP)
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                pause = min(pause, left)  # one more try at the deadline itself
            time.sleep(pause)


class Gone(KubeError):
    """The job is not (or no longer) in the cluster."""


# A TTL this short may delete a job before `wait` reads its end (it polls every POLL_SECONDS, and
# backs off up to RETRY_CAP while the API server does not answer): the TTL controller deletes a
# finished Job once its TTL has passed, at once for 0 (kubernetes pkg/controller/ttlafterfinished/
# ttlafterfinished_controller.go, processJob: timeLeft <= 0), and so does the operator for a TFJob
# (kubeflow/trainer v1.9.4 pkg/controller.v1/common/job.go, CleanupJob). For such a job, wait
# learns the outcome from the model dir instead: the chief publishes result.json last, once
# training succeeded (trainer/train.py, _publish_results).
SHORT_TTL = 2 * RETRY_CAP
HISTORY_SECONDS = 5.0  # what `status` gives the model dir's record of chiefs before it answers without


@dataclass
class _Results:
    model_dir: str
    s3_endpoint: str | None
    before: str | None  # the digest of result.json when wait first saw the job running, if any
    ttl: int
    submission: str = ""  # the job's parallel-ml/submission, which its chief writes into result.json


def _results(api: Api, job: JobState) -> _Results | None:
    """Where a job with a short TTL leaves its result, and what was there before it ended; None for
    any other job, or when its model dir cannot be read from here."""
    from pml_trainer import storage

    found = _model_dir_of(api, job)
    if found is None:
        return None
    model_dir, s3_endpoint, ttl = found
    if ttl is None or ttl > SHORT_TTL:
        return None
    where = _Results(model_dir, s3_endpoint, None, int(ttl), job.submission)
    try:
        where.before = _digest(storage.open_store(where.model_dir, where.s3_endpoint).get_bytes("result.json"))
    except storage.StorageError:
        return None  # not readable from here: wait can only say that the job went
    return where


def _chief_history(api: Api, job: JobState) -> dict[str, Any] | None:
    """What the model dir records of this submission's chiefs (pml_trainer.chiefs): a count of
    restarts that neither dropped events nor a podFailurePolicy's Ignore hide. None when the model
    dir cannot be read from here (a pod's own disk, no credentials)."""
    from pml_trainer import chiefs, storage

    found = _model_dir_of(api, job)
    if found is None or "://" not in found[0]:
        return None
    files: dict[str, bytes] = {}

    def read() -> None:
        storage.fail_fast_in_this_thread()  # a status that cannot read the bucket says the rest at once
        try:
            store = storage.open_store(found[0], found[1])
            files.update({e.name: store.get_bytes(e.name) or b"" for e in store.list(chiefs.FOLDER)})
        except storage.StorageError:
            pass  # no history then; the rest of the status stands

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(HISTORY_SECONDS)
    if reader.is_alive() or not files:
        return None
    return chiefs.summary(chiefs.parse(dict(files)), job.submission)


def _model_dir_of(api: Api, job: JobState) -> tuple[str, str | None, int | None] | None:
    """The chief's --model-dir and --s3-endpoint, and the job's TTL, from the cluster's objects."""
    try:
        if job.mode == "tfjob":
            owner = api.get(TFJOB.path(job.namespace, job.name))
            ttl = (owner["spec"].get("runPolicy") or {}).get("ttlSecondsAfterFinished")
            chief = next(s for t, s in owner["spec"]["tfReplicaSpecs"].items() if t.lower() == "chief")
            template = chief["template"]
        else:
            owner = api.get(JOB.path(job.namespace, f"{job.name}-chief-0"))
            ttl, template = owner["spec"].get("ttlSecondsAfterFinished"), owner["spec"]["template"]
    except (KubeError, Transient, StopIteration, KeyError):
        return None
    args = next((c.get("args") or [] for c in template["spec"]["containers"] if c["name"] == "tensorflow"), [])
    flags = dict(zip(args[::2], args[1::2], strict=False))
    if "--model-dir" not in flags:
        return None
    return flags["--model-dir"], flags.get("--s3-endpoint"), ttl


def _digest(data: bytes | None) -> str | None:
    """Which result.json: a local store has no versions, and a rerun may write the same bytes only
    if it is the same run (its fingerprint and train_seconds are in it)."""
    return None if data is None else hashlib.sha256(data).hexdigest()


def _collected(name: str, results: _Results) -> Outcome:
    """The outcome of a job deleted by its TTL while wait watched it, from its model dir."""
    from pml_trainer import storage

    gone = f"job {name} was deleted (ttl_seconds_after_finished {results.ttl}) before wait saw it end"
    try:
        data = storage.open_store(results.model_dir, results.s3_endpoint).get_bytes("result.json")
    except storage.StorageError as err:
        return Outcome(name, FAILED, f"{gone}, and {results.model_dir} cannot be read to tell how: {err}")
    if data is not None and _written_by(data, results):
        return Outcome(name, SUCCEEDED)
    return Outcome(
        name,
        FAILED,
        f"{gone}, and {results.model_dir} has no new result.json, so it did not succeed; set "
        f"policy.ttl_seconds_after_finished above {SHORT_TTL:g} to keep its status and logs for a look",
    )


def _written_by(data: bytes, results: _Results) -> bool:
    """Is this result.json the job's own? Its chief names its submission in it (PML_SUBMISSION,
    trainer/train.py, _publish_results), and publishes it before it waits, up to
    FINAL_EVALUATION_SECONDS, for the evaluator's last evaluation: wait may first have looked in
    that window, so a result.json there already is not always an earlier run's. Without that
    name (an older image), a result.json that changed since wait first looked."""
    try:
        written = json.loads(data).get("submission")
    except (ValueError, AttributeError):
        written = None
    if written and results.submission:
        return written == results.submission
    return _digest(data) != results.before


def _to_stop(job: JobState) -> bool:
    """A failed job whose tasks may still run: one pmlctl failed past its limit, or a native job
    whose task Job the Job controller failed (podFailurePolicy FailJob, its own backoffLimit). The
    Job controller stops only the pods of the Job it failed (kubernetes pkg/controller/job/
    job_controller.go, syncJob); the other tasks' Jobs run on, a ps among them waiting for a chief
    that will not come, and never finish, so no TTL collects them (issue 26)."""
    if job.failed_by_pmlctl:
        return False  # stopped already
    return any(c["object"] == "pmlctl" for c in job.conditions) or job.mode == "native"


def _stop(api: Api, job: JobState) -> list[str]:
    """Suspend a failed job, and say why on it: its controllers then delete its pods
    (kubeflow/trainer v1.9.4 pkg/controller.v1/common/job.go, suspend; kubernetes
    pkg/controller/job for a Job), and what it made stays for a look until `pmlctl delete`.
    Returns what the user should know: what stays, and how it goes."""
    verdict = next(
        (c for c in job.conditions if c["object"] == "pmlctl"),
        next(c for c in job.conditions if c["type"] == "Failed" and c["status"] == "True"),
    )
    why = f"{verdict['reason']} {verdict['message']}"
    if verdict["object"] != "pmlctl":
        why = f"{verdict['reason']} {verdict['object']}: {verdict['message']}"
    failed = {"metadata": {"annotations": {FAILED_ANNOTATION: why}}}
    notes = []
    if job.mode == "tfjob":
        owners = [api.get(TFJOB.path(job.namespace, job.name))]
    else:
        owners = api.get(JOB.path(job.namespace), labelSelector=f"{JOB_LABEL}={job.name}")["items"]
    # The Workloads first: a job suspended while its Workload is still admitted is resumed by
    # Kueue in between (reconciler.go, "7. handle job is suspended": startJob), its pods made again.
    queued = [o for o in owners if (o["metadata"].get("labels") or {}).get(QUEUE_LABEL)]
    if queued:
        notes += _deactivate(api, job, queued)
    if job.mode == "tfjob":
        api.patch(TFJOB.path(job.namespace, job.name), {**failed, "spec": {"runPolicy": {"suspend": True}}})
    else:
        for item in owners:
            api.patch(JOB.path(job.namespace, item["metadata"]["name"]), {**failed, "spec": {"suspend": True}})
    # What stays: in TFJob mode the operator deletes a suspended job's Services with its pods, since
    # it made them (kubeflow/trainer v1.9.4 pkg/controller.v1/common/job.go, ReconcileJobs:
    # IsJobSuspended, CleanUpResources, DeletePodsAndServices); the chart's own, in native mode, stay.
    kept = "TFJob" if job.mode == "tfjob" else "Jobs, Services"
    notes.append(
        f"job {job.name} is stopped, not deleted: a TTL collects only finished jobs (kubernetes "
        f"pkg/controller/ttlafterfinished, needsCleanup), so its {kept}, NetworkPolicy and ServiceAccount "
        f"keep the name; `pmlctl delete {job.name} -t k8s` removes them (its model dir is kept)"
    )
    return notes


# Kueue (kubernetes-sigs/kueue). A job with this label is Kueue's: it unsuspends a suspended job whose
# Workload is admitted (pkg/controller/jobframework/reconciler.go, ReconcileGenericJob, "7. handle
# job is suspended": startJob), so a `suspend: true` alone is undone and the pods come back. It
# keeps a job stopped once its Workload's spec.active is false: the workload controller then evicts
# it (pkg/controller/core/workload_controller.go, reason InactiveWorkload) and the reconciler
# suspends the job ("6. handle eviction": stopJob). The Workload is owned by the job.
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
WORKLOAD = Resource("Workload", "kueue.x-k8s.io/v1beta1", "workloads")


def _deactivate(api: Api, job: JobState, owners: list[dict[str, Any]]) -> list[str]:
    """Set spec.active false on the Workloads of `owners`; what could not be done, as notes."""
    uids = {o["metadata"]["uid"] for o in owners}
    try:
        workloads = [
            w
            for w in api.get(WORKLOAD.path(job.namespace))["items"]
            if any(r.get("uid") in uids for r in w["metadata"].get("ownerReferences") or [])
        ]
        for w in workloads:
            api.patch(WORKLOAD.path(job.namespace, w["metadata"]["name"]), {"spec": {"active": False}})
    except (NotFound, Forbidden, Transient) as err:  # the suspend that follows is still worth making
        return [
            f"job {job.name} is queued with Kueue, which restarts a suspended job, and its Workloads could not "
            f"be deactivated ({err}); `pmlctl delete {job.name} -t k8s` stops it for good"
        ]
    if not workloads:
        return [
            f"job {job.name} is queued with Kueue but no Workload of it was found to deactivate; if its pods "
            f"come back, `pmlctl delete {job.name} -t k8s` stops it for good"
        ]
    return []


def _failure(job: JobState) -> str:
    failed = [c for c in job.conditions if c["type"] == "Failed" and c["status"] == "True"]
    if failed:
        return f"{failed[0]['object']}: {failed[0]['reason']} {failed[0]['message']}".strip()
    codes = [f"{r.label} exit code {r.exit_code}" for r in job.replicas if r.exit_code]
    return ", ".join(codes) or "no reason given"


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
            raise KubeError(
                f"{stuck} still there {GONE_TIMEOUT:g}s after the deletion of job {name}; check their "
                "finalizers (`kubectl get -o yaml`)"
            )
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
