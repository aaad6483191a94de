"""An HTTP fake of the Kubernetes API server and of the controllers behind it, for the tests of
the Kubernetes target.

No API server can run on the test machines. A fake written beside the client shares its
misreadings, so each rule here follows the real source, named in a comment beside it:
kubernetes (apiserver, apimachinery, the garbage collector, the Job controller, the kubelet) and
the Kubeflow Training Operator at v1.9.4 (kubeflow/trainer). Tests drive the controllers the way
a cluster would: a pod runs, exits with a code, a kubelet finishes its termination. Threads meet
on one Condition: a test waits for a request or a change, never for some time.
"""

from __future__ import annotations

import copy
import datetime
import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import yaml

TOKEN = "fake-token"
KINDS = {  # plural -> (group/version, kind)
    "pods": ("v1", "Pod"),
    "services": ("v1", "Service"),
    "serviceaccounts": ("v1", "ServiceAccount"),
    "secrets": ("v1", "Secret"),
    "events": ("v1", "Event"),
    "jobs": ("batch/v1", "Job"),
    "networkpolicies": ("networking.k8s.io/v1", "NetworkPolicy"),
    "tfjobs": ("kubeflow.org/v1", "TFJob"),
    "workloads": ("kueue.x-k8s.io/v1beta1", "Workload"),
}
GROUPS = ("batch/v1", "networking.k8s.io/v1", "apiextensions.k8s.io/v1")
NAMESPACED = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<gv>[^/]+/[^/]+))/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
    r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>log))?$"
)
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"
# staging/src/k8s.io/apimachinery/pkg/util/validation/validation.go: IsDNS1123Subdomain, IsValidLabelValue.
DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
ORPHAN, FOREGROUND = "orphan", "foregroundDeletion"  # metav1.FinalizerOrphanDependents, FinalizerDeleteDependents
GRACE = 30  # a pod's default terminationGracePeriodSeconds (pkg/apis/core/v1/defaults.go)


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _status(code: int, reason: str, message: str, details: dict | None = None) -> dict[str, Any]:
    # staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go: every error is a Status.
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    return {**body, "details": details} if details else body


def _resource_name(plural: str) -> str:
    """GroupResource.String(): `pods`, `jobs.batch`."""
    group = KINDS[plural][0].rpartition("/")[0]
    return f"{plural}.{group}" if group else plural


def _details(plural: str, name: str) -> dict[str, str]:
    group = KINDS[plural][0].rpartition("/")[0]
    return {"name": name, **({"group": group} if group else {}), "kind": plural}


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """A label selector, set-based ones included (staging/src/k8s.io/apimachinery/pkg/labels/
    selector.go, Parse and Requirement.Matches): requirements are ANDed; `notin` and `!=` match a
    missing key."""
    for requirement in re.findall(r"(?:[^,(]|\([^)]*\))+", selector or ""):
        requirement = requirement.strip()
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\(([^)]*)\)", requirement):
            key, op, values = m[1], m[2], {v.strip() for v in m[3].split(",")}
            if (op == "in") != (key in labels and labels[key] in values):
                return False
        elif m := re.fullmatch(r"(\S+?)\s*(!=|==|=)\s*(\S*)", requirement):
            key, op, value = m.groups()
            if (op == "!=") == (labels.get(key) == value and key in labels):
                return False
        elif requirement.startswith("!"):
            if requirement[1:].strip() in labels:
                return False
        elif requirement not in labels:
            return False
    return True


def field_matches(selector: str, obj: dict[str, Any]) -> bool:
    """Field selectors of the form a.b=c (events: involvedObject.uid, pkg/registry/core/event/strategy.go)."""
    for requirement in filter(None, (selector or "").split(",")):
        path, _, value = requirement.partition("=")
        found: Any = obj
        for part in path.split("."):
            found = (found or {}).get(part)
        if str(found if found is not None else "") != value:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies application/merge-patch+json: null removes, a list replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class FakeKube:
    def __init__(self, crd: dict[str, Any], tfjob: bool = True):
        self.crd = crd
        self.tfjob = tfjob  # is the Training Operator installed?
        self.kubeflow_group = False  # kubeflow.org/v1 served for Notebooks and Profiles even without it
        self.namespaces = {"default", "kube-system"}
        self.requests: list[Request] = []
        self.store: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}  # (namespace, plural) -> name -> object
        self.forbidden: set[tuple[str, str]] = set()  # (verb, plural)
        self.webhook_denials: dict[tuple[str, str], tuple[str, str]] = {}  # (verb, plural) -> (webhook, its message)
        self.faults: list[list] = []  # [method, code, times left]: the next answers to that method
        self.logs: dict[str, list[bytes]] = {}
        self.log_ended: set[str] = set()
        self.gc_held = False  # see collect
        # Reentrant: a request that changes the store runs the controllers under the same lock.
        self.changed = threading.Condition(threading.RLock())
        self.operator = Operator(self)
        self.job_controller = JobController(self)
        self.correlator = EventCorrelator()
        self.kueue = Kueue(self)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        with self.changed:
            self.log_ended.update(self.logs)
            self.changed.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path, token: str = TOKEN, namespace: str | None = None) -> None:
        context = {"cluster": "fake", "user": "dev", **({"namespace": namespace} if namespace else {})}
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "kind-pml",
                    "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
                    "users": [{"name": "dev", "user": {"token": token}}],
                    "contexts": [{"name": "kind-pml", "context": context}],
                }
            )
        )

    def namespaced_user(self) -> None:
        """RBAC of a user bound to a namespace by a RoleBinding: no cluster-scoped resource."""
        self.forbidden.add(("get", "customresourcedefinitions"))

    def fail(self, method: str, code: int, times: int = 1) -> None:
        """The next `times` requests with `method` answer `code` (429 or a 5xx), as an API server
        under load or being upgraded does."""
        self.faults.append([method, code, times])

    # What the tests read and drive.

    def calls(self, method: str | None = None, path: str = "") -> list[Request]:
        return [r for r in self.requests if (method is None or r.method == method) and r.path.startswith(path)]

    def wait_for(self, condition: Callable[[], Any], timeout: float = 20) -> Any:
        with self.changed:
            if not self.changed.wait_for(condition, timeout):
                raise AssertionError("the fake API server never saw what the test waited for")
            return condition()

    def objects(self, plural: str, namespace: str = "default") -> dict[str, dict[str, Any]]:
        return self.store.get((namespace, plural), {})

    def put(self, plural: str, obj: dict[str, Any], namespace: str = "default") -> dict[str, Any]:
        version, kind = KINDS[plural]
        meta = obj.setdefault("metadata", {})
        meta.update(
            namespace=namespace,
            uid=meta.get("uid") or str(uuid.uuid4()),
            creationTimestamp=meta.get("creationTimestamp") or now(),
            resourceVersion="1",
        )
        obj.update(apiVersion=version, kind=kind)
        with self.changed:
            self.store.setdefault((namespace, plural), {})[meta["name"]] = obj
            self.changed.notify_all()
        return obj

    def set_status(self, plural: str, name: str, status: dict[str, Any], namespace: str = "default") -> None:
        with self.changed:
            self.store[(namespace, plural)][name]["status"] = status
            self.changed.notify_all()

    def pod(
        self,
        job: str,
        role: str,
        index: int,
        mode: str,
        phase: str = "Running",
        *,
        container: dict[str, Any] | None = None,
        conditions: list | None = None,
        name: str | None = None,
        created: str | None = None,
        restarts: int = 0,
        started: str | None = None,
    ) -> dict[str, Any]:
        """A pod as the TFJob operator (mode tfjob) or the Job controller (native) labels it: the
        labels of its owner's pod template, its controller's own, an ownerReference."""
        index_label = {"tfjob": "training.kubeflow.org/replica-index", "native": "parallel-ml/index"}[mode]
        owner = (
            self.objects("tfjobs").get(job) if mode == "tfjob" else self.objects("jobs").get(f"{job}-{role}-{index}")
        )
        labels = {"parallel-ml/job": job, "parallel-ml/role": role, index_label: str(index)}
        if mode == "tfjob":
            labels.update({"training.kubeflow.org/job-name": job, "training.kubeflow.org/replica-type": role})
        refs = []
        if owner:
            template = _template(owner, role)
            labels = {**((template.get("metadata") or {}).get("labels") or {}), **labels}
            refs = [_controller_ref(owner)]
        state = container if container is not None else {"running": {"startedAt": now()}}
        return self.put(
            "pods",
            {
                "metadata": {
                    "name": name or f"{job}-{role}-{index}",
                    "creationTimestamp": created,
                    "labels": labels,
                    "ownerReferences": refs,
                },
                "spec": {"nodeName": "node-1" if phase != "Pending" or container else ""},
                "status": {
                    "phase": phase,
                    "conditions": conditions or [],
                    "containerStatuses": []
                    if phase == "Pending" and container is None
                    else [{"name": "tensorflow", "restartCount": restarts, "state": state}],
                    # The kubelet stamps startTime once it takes the pod on, before it pulls the image
                    # (pkg/kubelet/status/status_manager.go, SetPodStatus: a zero StartTime becomes now).
                    **({"startTime": started or now()} if phase != "Pending" or container else {}),
                },
            },
        )

    def write_log(self, pod: str, text: str, end: bool = False) -> None:
        with self.changed:
            self.logs.setdefault(pod, []).append(text.encode())
            if end:
                self.log_ended.add(pod)
            self.changed.notify_all()

    def event(self, namespace: str, about: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """What client-go's event recorder posts after its EventCorrelator
        (staging/src/k8s.io/client-go/tools/record/events_cache.go, EventCorrelate): aggregation,
        then the count of repeats, then the spam filter (see EventCorrelator below)."""
        posted = self.correlator.correlate(about, type_, reason, message)
        if posted is None:
            return
        key, shown, count = posted
        name = self.correlator.names.get(key)
        existing = self.objects("events", namespace).get(name) if name else None
        if existing is not None:  # eventObserve's patch: count, message and lastTimestamp
            existing.update(count=count, message=shown, lastTimestamp=now())
            return
        name = f"{about['metadata']['name']}.{uuid.uuid4().hex[:16]}"
        self.correlator.names[key] = name
        self.put(
            "events",
            {
                "metadata": {"name": name},
                "involvedObject": {
                    "apiVersion": about["apiVersion"],
                    "kind": about["kind"],
                    "name": about["metadata"]["name"],
                    "namespace": namespace,
                    "uid": about["metadata"]["uid"],
                },
                "type": type_,
                "reason": reason,
                "message": shown,
                "count": count,
                "firstTimestamp": now(),
                "lastTimestamp": now(),
            },
            namespace,
        )

    def finish_termination(self, pod: str, namespace: str = "default") -> None:
        """The kubelet has stopped a Terminating pod's containers: it makes the final delete
        (pkg/kubelet/status/status_manager.go, a delete with grace 0)."""
        with self.changed:
            self._remove(namespace, "pods", pod)
            self.settle()

    def terminating(self, plural: str = "pods", namespace: str = "default") -> list[str]:
        return sorted(n for n, o in self.objects(plural, namespace).items() if o["metadata"].get("deletionTimestamp"))

    # Deletion and garbage collection.

    def delete(
        self, namespace: str, plural: str, name: str, policy: str | None = None, grace: int | None = None
    ) -> tuple[bool, dict[str, Any]]:
        """(deleted now, the object) for a DELETE, by staging/src/k8s.io/apiserver/pkg/registry/
        generic/registry/store.go (Store.Delete, deletionFinalizersForGarbageCollection)."""
        obj = self.objects(plural, namespace)[name]
        meta = obj["metadata"]
        finalizers = [f for f in meta.get("finalizers") or [] if f not in (ORPHAN, FOREGROUND)]
        if policy is None:
            # A batch/v1 Job orphans its pods unless told otherwise (pkg/registry/batch/job/strategy.go,
            # DefaultGarbageCollectionPolicy); custom resources and the rest default to Background.
            policy = "Orphan" if plural == "jobs" else "Background"
        finalizers += {"Orphan": [ORPHAN], "Foreground": [FOREGROUND]}.get(policy, [])
        if plural == "pods" and meta.get("deletionTimestamp") and meta.get("deletionGracePeriodSeconds"):
            return False, obj  # a second DELETE may only shorten the grace; the kubelet still ends it
        if plural == "pods" and not meta.get("deletionTimestamp"):
            # pkg/registry/core/pod/strategy.go, CheckGracefulDelete: a scheduled pod that has not
            # ended waits for its kubelet; an unscheduled or finished one goes at once.
            period = GRACE if grace is None else grace
            if not obj.get("spec", {}).get("nodeName") or obj["status"].get("phase") in ("Succeeded", "Failed"):
                period = 0
            if period:
                meta.update(deletionTimestamp=now(), deletionGracePeriodSeconds=period, finalizers=finalizers)
                return False, obj
        if finalizers:
            meta.update(
                deletionTimestamp=meta.get("deletionTimestamp") or now(),
                deletionGracePeriodSeconds=0,
                finalizers=finalizers,
            )
            return False, obj
        self._remove(namespace, plural, name)
        return True, obj

    def _remove(self, namespace: str, plural: str, name: str) -> None:
        self.store[(namespace, plural)].pop(name, None)
        self.changed.notify_all()

    def collect(self) -> None:
        """The garbage collector, run to a fixed point (pkg/controller/garbagecollector/
        garbagecollector.go): dependents of a missing owner are deleted in the background; an
        owner being deleted with `orphan` loses its dependents' references first; one with
        `foregroundDeletion` deletes its dependents and goes once none that block it are left.
        It is a controller of its own that acts after the fact: its graph builder hears of an
        owner's deletion from a watch, and its attemptToDelete workers then delete the dependents
        (graph_builder.go, processGraphChanges; garbagecollector.go, attemptToDeleteItem). A test
        sets `gc_held` to see what a client finds in between."""
        if self.gc_held:
            return
        changed = True
        while changed:
            changed = False
            everything = [(ns, plural, o) for (ns, plural), items in self.store.items() for o in list(items.values())]
            alive = {o["metadata"]["uid"]: o for _, _, o in everything}
            for ns, plural, obj in everything:
                meta = obj["metadata"]
                if meta["name"] not in self.objects(plural, ns):
                    continue
                dependents = [
                    (n, p, o)
                    for n, p, o in everything
                    if n == ns
                    and o["metadata"]["name"] in self.objects(p, n)
                    and any(r["uid"] == meta["uid"] for r in o["metadata"].get("ownerReferences") or [])
                ]
                finalizers = meta.get("finalizers") or []
                if meta.get("deletionTimestamp") and ORPHAN in finalizers:
                    for _, _, o in dependents:
                        o["metadata"]["ownerReferences"] = [
                            r for r in o["metadata"]["ownerReferences"] if r["uid"] != meta["uid"]
                        ]
                    finalizers.remove(ORPHAN)
                    changed = True
                if meta.get("deletionTimestamp") and FOREGROUND in finalizers:
                    for n, p, o in dependents:
                        if not o["metadata"].get("deletionTimestamp"):
                            self.delete(n, p, o["metadata"]["name"], "Background")
                            changed = True
                    blocking = [
                        o
                        for n, p, o in dependents
                        if o["metadata"]["name"] in self.objects(p, n)
                        and any(
                            r["uid"] == meta["uid"] and r.get("blockOwnerDeletion")
                            for r in o["metadata"].get("ownerReferences") or []
                        )
                    ]
                    if not blocking:
                        finalizers.remove(FOREGROUND)
                        changed = True
                graceful = plural == "pods" and meta.get("deletionGracePeriodSeconds")  # the kubelet ends those
                if meta.get("deletionTimestamp") and not finalizers and not graceful:
                    self._remove(ns, plural, meta["name"])
                    changed = True
                    continue
                refs = meta.get("ownerReferences") or []
                if refs and not meta.get("deletionTimestamp") and not any(r["uid"] in alive for r in refs):
                    self.delete(ns, plural, meta["name"], "Background")
                    changed = True

    # The server side.

    def answer(self, method: str, target: str, headers, body: bytes):
        """(status, JSON body or an iterator of byte chunks, extra headers)."""
        split = urlsplit(target)
        path, query = split.path, dict(parse_qsl(split.query))
        doc = json.loads(body) if body else None
        with self.changed:
            self.requests.append(Request(method, path, query, doc, dict(headers)))
            self.changed.notify_all()
            for fault in self.faults:
                if fault[0] == method and fault[2] > 0:
                    fault[2] -= 1
                    return self._fault(fault[1])
            if headers.get("Authorization") != f"Bearer {TOKEN}":
                return 401, _status(401, "Unauthorized", "Unauthorized"), {}
            code, answer = self._route(method, path, query, doc, headers)
            self.settle()
            return code, answer, {}

    def settle(self) -> None:
        """The controllers and the garbage collector catch up with a change."""
        with self.changed:
            for _ in range(3):  # a deletion may let a controller make a pod, which may need collecting
                self.collect()
                self.kueue.reconcile()
                self.operator.reconcile()
                self.job_controller.reconcile()
                self._ttl_at_0()
            self.collect()
            self.changed.notify_all()

    def _ttl_at_0(self) -> None:
        """A finished job with a TTL of 0 is deleted the moment it finishes: a Job by the TTL-after-
        finished controller, in the foreground (kubernetes pkg/controller/ttlafterfinished/
        ttlafterfinished_controller.go: needsCleanup, finished Jobs only; processJob, timeLeft <= 0),
        a TFJob by the operator with the default propagation (kubeflow/trainer v1.9.4
        pkg/controller.v1/common/job.go, CleanupJob: the completion time plus 0 s has passed).
        Longer TTLs pass only when a test says so (`expire`)."""
        for (ns, plural), items in list(self.store.items()):
            for name, job in list(items.items()):
                if job["metadata"].get("deletionTimestamp"):
                    continue
                if plural == "jobs" and self.job_controller.enabled:
                    ttl, ended = job["spec"].get("ttlSecondsAfterFinished"), ("Complete", "Failed")
                elif plural == "tfjobs" and self.operator.enabled:
                    ttl = (job["spec"].get("runPolicy") or {}).get("ttlSecondsAfterFinished")
                    ended = ("Succeeded", "Failed")
                else:
                    continue
                if ttl == 0 and any(_true(job, kind) for kind in ended):
                    self.delete(ns, plural, name, "Foreground" if plural == "jobs" else None)

    @staticmethod
    def _fault(code: int):
        # 429 from priority and fairness comes as plain text with Retry-After (staging/src/k8s.io/
        # apiserver/pkg/server/filters/priority-and-fairness.go); a 503 as a Status.
        if code == 429:
            return 429, iter([b"Too many requests, please try again later.\n"]), {"Retry-After": "1"}
        reason = {500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}.get(code, "InternalError")
        return code, _status(code, reason, "apiserver is shutting down"), {"Retry-After": "1"}

    def _route(self, method: str, path: str, query: dict[str, str], doc: Any, headers):
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            # staging/src/k8s.io/apiserver/pkg/endpoints/discovery/root.go: the groups, not what they serve.
            versions = GROUPS + (("kubeflow.org/v1",) if self.tfjob or self.kubeflow_group else ())
            return 200, {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": gv.split("/")[0],
                        "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                        "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]},
                    }
                    for gv in versions
                ],
            }
        if path == "/apis/kubeflow.org/v1":
            return self._kubeflow_resources()
        if path.startswith(CRD_PATH) and method == "GET":
            return self._crd(path[len(CRD_PATH) :])
        match = NAMESPACED.match(path)
        if not match or match["plural"] not in KINDS or (match["plural"] == "tfjobs" and not self.tfjob):
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        return self._resource(method, match, query, doc)

    def _kubeflow_resources(self):
        # staging/src/k8s.io/apiextensions-apiserver/pkg/apiserver/customresource_discovery_controller.go
        if not (self.tfjob or self.kubeflow_group):
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        served = (["tfjobs"] if self.tfjob else []) + (["notebooks", "profiles"] if self.kubeflow_group else [])
        verbs = ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]
        resources = []
        for plural in served:
            kind = {"tfjobs": "TFJob", "notebooks": "Notebook", "profiles": "Profile"}[plural]
            resources += [
                {
                    "name": plural,
                    "singularName": plural[:-1],
                    "namespaced": plural != "profiles",
                    "kind": kind,
                    "verbs": verbs,
                },
                {
                    "name": f"{plural}/status",
                    "singularName": "",
                    "namespaced": plural != "profiles",
                    "kind": kind,
                    "verbs": ["get", "patch", "update"],
                },
            ]
        return 200, {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": "kubeflow.org/v1",
            "resources": resources,
        }

    def _crd(self, name: str):
        if ("get", "customresourcedefinitions") in self.forbidden:
            # staging/src/k8s.io/apiserver/pkg/endpoints/handlers/responsewriters/errors.go, forbiddenMessage
            return 403, _status(
                403,
                "Forbidden",
                f'customresourcedefinitions.apiextensions.k8s.io "{name}" is '
                'forbidden: User "dev" cannot get resource "customresourcedefinitions" in API group '
                '"apiextensions.k8s.io" at the cluster scope',
                {"name": name, "group": "apiextensions.k8s.io", "kind": "customresourcedefinitions"},
            )
        if name != "tfjobs.kubeflow.org" or not self.tfjob:
            return 404, _status(
                404,
                "NotFound",
                f'customresourcedefinitions.apiextensions.k8s.io "{name}" not found',
                {"name": name, "group": "apiextensions.k8s.io", "kind": "customresourcedefinitions"},
            )
        return 200, self.crd

    def _resource(self, method: str, m: re.Match, query: dict[str, str], doc: Any):
        ns, plural, name = m["ns"], m["plural"], m["name"]
        version = m["core"] or m["gv"]
        group = version.rpartition("/")[0]
        verb = {"POST": "create", "DELETE": "delete", "PATCH": "patch"}.get(method, "get" if name else "list")
        if (verb, plural) in self.forbidden:
            return 403, _status(
                403,
                "Forbidden",
                f'{_resource_name(plural)} is forbidden: User "dev" '
                f'cannot {verb} resource "{plural}" in API group "{group}" in the namespace "{ns}"',
                {"group": group, "kind": plural} if group else {"kind": plural},
            )
        if (verb, plural) in self.webhook_denials:
            # A validating webhook's refusal, after authorization: its name, then its own words; 403 unless the
            # webhook set another code (staging/src/k8s.io/apiserver/pkg/admission/plugin/webhook/errors/
            # statuserror.go, ToStatusErr).
            webhook, words = self.webhook_denials[(verb, plural)]
            return 403, _status(403, "Forbidden", f'admission webhook "{webhook}" denied the request: {words}')
        if ns not in self.namespaces and method == "POST":
            # The NamespaceLifecycle admission plugin looks the namespace up on create (staging/src/k8s.io/
            # apiserver/pkg/admission/plugin/namespace/lifecycle/admission.go) and returns its NotFound;
            # reads are not admitted, so a list there is empty.
            return 404, _status(404, "NotFound", f'namespaces "{ns}" not found', {"name": ns, "kind": "namespaces"})
        items = self.store.setdefault((ns, plural), {})
        missing = 404, _status(404, "NotFound", f'{_resource_name(plural)} "{name}" not found', _details(plural, name))
        if method == "POST":
            return self._create(ns, plural, doc)
        if method == "GET" and not name:
            chosen = [
                o
                for o in items.values()
                if selector_matches(query.get("labelSelector", ""), o["metadata"].get("labels") or {})
                and field_matches(query.get("fieldSelector", ""), o)
            ]
            return 200, {"kind": KINDS[plural][1] + "List", "apiVersion": version, "metadata": {}, "items": chosen}
        if name not in items:
            return missing
        if method == "GET" and m["sub"] == "log":
            return self._log(items[name], query)
        if method == "GET":
            return 200, items[name]
        if method == "PATCH":
            return 200, self._patch(ns, plural, name, doc)
        if method == "DELETE":
            options = doc or {}
            gone, obj = self.delete(
                ns,
                plural,
                name,
                options.get("propagationPolicy") or query.get("propagationPolicy"),
                options.get("gracePeriodSeconds"),
            )
            if plural == "pods" or not gone:  # the pod store has ReturnDeletedObject
                return 200, obj
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {**_details(plural, name), "uid": obj["metadata"]["uid"]},
            }
        return 405, _status(405, "MethodNotAllowed", f"{method} is not supported here")

    def _create(self, ns: str, plural: str, doc: dict[str, Any]):
        name = doc["metadata"]["name"]
        causes = []
        if not DNS_1123_SUBDOMAIN.match(name) or len(name) > 253:
            causes.append(
                (
                    "metadata.name",
                    f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist '
                    "of lower case alphanumeric characters, '-' or '.'",
                )
            )
        for _key, value in (doc["metadata"].get("labels") or {}).items():
            if not isinstance(value, str) or not LABEL_VALUE.match(value) or len(value) > 63:
                causes.append(
                    (
                        "metadata.labels",
                        f'Invalid value: "{value}": a valid label must be an empty string '
                        "or consist of alphanumeric characters, '-', '_' or '.'",
                    )
                )
        restart = ((doc.get("spec") or {}).get("template") or {}).get("spec", {}).get("restartPolicy")
        if plural == "jobs" and doc["spec"].get("podFailurePolicy") and restart != "Never":
            # kubernetes pkg/apis/batch/validation/validation.go, validateJobSpec.
            causes.append(
                (
                    "spec.template.spec.restartPolicy",
                    f'Invalid value: "{restart}": only "Never" is supported when podFailurePolicy is specified',
                )
            )
        if causes:
            kind, group = KINDS[plural][1], KINDS[plural][0].rpartition("/")[0]
            qualified = f"{kind}.{group}" if group else kind
            return 422, _status(
                422,
                "Invalid",
                f'{qualified} "{name}" is invalid: ' + ", ".join(f"{f}: {m}" for f, m in causes),
                {
                    "name": name,
                    **({"group": group} if group else {}),
                    "kind": kind,
                    "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes],
                },
            )
        if name in self.objects(plural, ns):
            return 409, _status(
                409, "AlreadyExists", f'{_resource_name(plural)} "{name}" already exists', _details(plural, name)
            )
        doc = copy.deepcopy(doc)
        doc["metadata"].pop("uid", None)
        self.kueue.admit(plural, doc)
        return 201, self.put(plural, doc, ns)

    def _patch(self, ns: str, plural: str, name: str, doc: dict[str, Any]) -> dict[str, Any]:
        obj = self.objects(plural, ns)[name]
        patched = merge_patch(obj, doc)
        for key in ("uid", "creationTimestamp", "namespace", "name"):  # not changed by a patch
            patched["metadata"][key] = obj["metadata"][key]
        self.store[(ns, plural)][name] = patched
        self.changed.notify_all()
        return patched

    def _log(self, pod: dict[str, Any], query: dict[str, str]):
        name = pod["metadata"]["name"]
        container = next((c for c in pod["status"].get("containerStatuses") or [] if c["name"] == "tensorflow"), None)
        waiting = ((container or {}).get("state") or {}).get("waiting")
        if container is None or waiting:
            # pkg/kubelet/kubelet_pods.go, validateContainerLogStatus, answered as 400 BadRequest.
            reason = (waiting or {}).get("reason") or "ContainerCreating"
            return 400, _status(
                400, "BadRequest", f'container "tensorflow" in pod "{name}" is waiting to start: {reason}'
            )
        return 200, self._log_chunks(name, query.get("follow") == "true")

    def _log_chunks(self, pod: str, follow: bool):
        sent = 0
        while True:
            with self.changed:
                if follow:
                    self.changed.wait_for(lambda: len(self.logs.get(pod, [])) > sent or pod in self.log_ended)  # noqa: B023 (waited for here)
                chunks = self.logs.get(pod, [])[sent:]
                ended = not follow or pod in self.log_ended
            sent += len(chunks)
            yield from chunks
            if ended and sent >= len(self.logs.get(pod, [])):
                return


def _template(owner: dict[str, Any], role: str) -> dict[str, Any]:
    if owner["kind"] == "TFJob":
        specs = owner["spec"]["tfReplicaSpecs"]
        return next((s["template"] for t, s in specs.items() if t.lower() == role), {})
    return owner["spec"]["template"]


def _controller_ref(owner: dict[str, Any]) -> dict[str, Any]:
    # kubeflow/trainer v1.9.4 pkg/controller.v1/common/job_controller.go GenOwnerReference, and
    # staging/src/k8s.io/apimachinery/pkg/apis/meta/v1/controller_ref.go NewControllerRef: both block.
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _terminated(code: int) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "finishedAt": now()}}


class EventCorrelator:
    """client-go's EventCorrelator with its defaults (staging/src/k8s.io/client-go/tools/record/
    events_cache.go, NewEventCorrelatorWithOptions), one per recorder: the operator's.

    - EventAggregate (EventAggregatorByReasonFunc): events about one object with one type and
      reason but different messages are "similar"; from the 10th distinct message within 600 s
      (defaultAggregateMaxEvents, defaultAggregateIntervalInSeconds) they become one event, keyed
      by object and reason alone, whose message is "(combined from similar events): " and the
      latest message (EventAggregatorMessageFunc), and whose count grows.
    - eventObserve: a repeat of one key raises the count kept in the cache, filtered or not.
    - EventSourceObjectSpamFilter (getSpamKey: source, object and type, not the reason): a token
      bucket of defaultSpamBurst 25 refilled at defaultSpamQPS 1/300 per second; an event
      without a token is dropped.
    `clock` is in seconds; tests move it forward to refill the bucket."""

    BURST, QPS = 25, 1.0 / 300.0
    AGGREGATE_MAX, AGGREGATE_SECONDS = 10, 600.0

    def __init__(self):
        self.clock = time.monotonic
        self.similar: dict[tuple, tuple[set[str], float]] = {}
        self.counts: dict[tuple, int] = {}
        self.buckets: dict[tuple, tuple[float, float]] = {}
        self.names: dict[tuple, str] = {}  # event key -> the Event object posted for it
        self.dropped = 0

    def correlate(self, about: dict[str, Any], type_: str, reason: str, message: str) -> tuple[tuple, str, int] | None:
        """(event key, message shown, count) to post or patch, or None when the spam filter drops it."""
        meta = about["metadata"]
        spam_key = (about["kind"], meta.get("namespace"), meta["name"], meta["uid"], about["apiVersion"], type_)
        at = self.clock()
        aggregate_key = (*spam_key, reason)
        messages, last = self.similar.get(aggregate_key, (set(), at))
        if at - last > self.AGGREGATE_SECONDS:
            messages = set()
        messages.add(message)
        self.similar[aggregate_key] = (messages, at)
        if len(messages) >= self.AGGREGATE_MAX:
            messages.pop()  # record.localKeys.PopAny()
            key, shown = aggregate_key, f"(combined from similar events): {message}"
        else:
            key, shown = (*aggregate_key, message), message
        self.counts[key] = count = self.counts.get(key, 0) + 1
        tokens, filled = self.buckets.get(spam_key, (float(self.BURST), at))
        tokens = min(float(self.BURST), tokens + (at - filled) * self.QPS)
        if tokens < 1:
            self.buckets[spam_key] = (tokens, at)
            self.dropped += 1
            return None
        self.buckets[spam_key] = (tokens - 1, at)
        return key, shown, count


class _Controller:
    """What the operator and the Job controller share: a kubelet that runs and ends containers."""

    owns = ""  # the plural of the objects the controller acts on

    def __init__(self, fake: FakeKube):
        self.fake = fake
        self.enabled = False  # tests that drive pods by hand leave the controllers off

    def reconcile(self) -> None:
        if not self.enabled:
            return
        for (ns, plural), items in list(self.fake.store.items()):
            if plural == self.owns:
                for job in list(items.values()):
                    if not job["metadata"].get("deletionTimestamp"):
                        self._reconcile(ns, job)

    def _reconcile(self, ns: str, job: dict[str, Any]) -> None:
        raise NotImplementedError

    def run(self, pod: str, namespace: str = "default") -> None:
        with self.fake.changed:
            obj = self.fake.objects("pods", namespace)[pod]
            obj["spec"]["nodeName"] = "node-1"
            obj["status"] = {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
                "containerStatuses": [
                    {"name": "tensorflow", "restartCount": 0, "state": {"running": {"startedAt": now()}}}
                ],
            }
            self.fake.settle()

    def exit(self, pod: str, code: int, namespace: str = "default") -> None:
        """The container `tensorflow` ends with `code`. The kubelet restarts it in place under
        Always, and under OnFailure when the code is not 0 (pkg/kubelet/kuberuntime/
        kuberuntime_manager.go, computePodActions); otherwise the pod ends Succeeded or Failed."""
        with self.fake.changed:
            obj = self.fake.objects("pods", namespace)[pod]
            container = obj["status"]["containerStatuses"][0]
            policy = obj["spec"].get("restartPolicy", "Always")
            if policy == "Always" or (policy == "OnFailure" and code != 0):
                container.update(
                    restartCount=container["restartCount"] + 1,
                    lastState=_terminated(code),
                    state={"running": {"startedAt": now()}},
                )
            else:
                container["state"] = _terminated(code)
                obj["status"]["phase"] = "Succeeded" if code == 0 else "Failed"
            self.fake.settle()

    def preempt(self, pod: str, code: int = 143, namespace: str = "default", evicted: bool = False) -> None:
        """The kubelet stops the pod for good: its node shuts down (pkg/kubelet/nodeshutdown/
        nodeshutdown_manager_linux.go, killPods: phase Failed, reason Terminated) or is short of
        memory (pkg/kubelet/eviction/eviction_manager.go, evictPod: reason Evicted). Either way the
        pod ends Failed whatever its restartPolicy, with a DisruptionTarget condition of reason
        TerminationByKubelet (k8s.io/api/core/v1 types.go, DisruptionTarget), and the container
        ends with the code it exited with after SIGTERM: 0 from a task that took that as the end."""
        with self.fake.changed:
            obj = self.fake.objects("pods", namespace)[pod]
            status = obj["status"]
            why = (
                "The node was low on resource: memory."
                if evicted
                else "Pod was terminated in response to imminent node shutdown."
            )
            status.update(phase="Failed", reason="Evicted" if evicted else "Terminated", message=why)
            status["conditions"] = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"] + [
                {"type": "Ready", "status": "False", "reason": "PodFailed"},
                {
                    "type": "DisruptionTarget",
                    "status": "True",
                    "reason": "TerminationByKubelet",
                    "message": why,
                    "lastTransitionTime": now(),
                },
            ]
            status["containerStatuses"][0]["state"] = _terminated(code)
            self.fake.settle()


class Operator(_Controller):
    """The Kubeflow Training Operator v1.9.4's TFJob controller, in what matters to pmlctl."""

    owns = "tfjobs"

    def pods(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            p
            for p in self.fake.objects("pods", job["metadata"]["namespace"]).values()
            if any(r["uid"] == job["metadata"]["uid"] for r in p["metadata"].get("ownerReferences") or [])
        ]

    def services(self, job: dict[str, Any]) -> list[dict[str, Any]]:
        """The Services the job controls (pkg/controller.v1/tensorflow/tfjob_controller.go,
        GetServicesForJob: ClaimServices keeps those whose controllerRef is the job)."""
        return [
            s
            for s in self.fake.objects("services", job["metadata"]["namespace"]).values()
            if any(
                r["uid"] == job["metadata"]["uid"] and r.get("controller")
                for r in s["metadata"].get("ownerReferences") or []
            )
        ]

    def _reconcile(self, ns: str, job: dict[str, Any]) -> None:
        status = job.setdefault("status", {})
        conditions = status.setdefault("conditions", [])
        if not conditions:  # pkg/controller.v1/tensorflow/tfjob_controller.go, onOwnerCreateFunc
            self._condition(job, "Created", "TFJobCreated", f"TFJob {job['metadata']['name']} is created.")
        if _true(job, "Failed") or _true(job, "Succeeded"):
            # pkg/controller.v1/common/job.go, ReconcileJobs: every reconcile of a finished job runs
            # CleanUpResources, that is DeletePodsAndServices under its cleanPodPolicy, and nothing else.
            self._clean(ns, job)
            return
        run_policy = job["spec"].get("runPolicy") or {}
        specs = job["spec"]["tfReplicaSpecs"]
        if run_policy.get("suspend"):
            # pkg/controller.v1/common/job.go, ReconcileJobs (IsJobSuspended, CleanUpResources): a
            # suspended job is not finished, so DeletePodsAndServices ignores cleanPodPolicy and
            # deletes every pod and its Service.
            self._clean(ns, job)
            if not _true(job, "Suspended"):
                self._condition(job, "Suspended", "TFJobSuspended", f"TFJob {job['metadata']['name']} is suspended.")
            return
        name = job["metadata"]["name"]
        # pkg/controller.v1/common/pod.go, ReconcilePods: the exit code is read from `tensorflow` only.
        for pod in self.pods(job):
            state = pod["status"].get("containerStatuses", [{}])[0].get("state") or {}
            if "terminated" in state:
                code = state["terminated"]["exitCode"]
                self.fake.event(
                    ns, job, "Normal", "ExitedWithCode", f"Pod: {ns}.{pod['metadata']['name']} exited with code {code}"
                )
            if pod["status"].get("phase") != "Failed" or pod["metadata"].get("deletionTimestamp"):
                continue
            rtype = pod["metadata"]["labels"]["training.kubeflow.org/replica-type"]
            policy = next(s for t, s in specs.items() if t.lower() == rtype).get("restartPolicy", "Never")
            code = state.get("terminated", {}).get("exitCode", 0xBEEF)
            # pkg/util/train/train_util.go, IsRetryableExitCode: 128 and above.
            if policy in ("OnFailure", "Always") or (policy == "ExitCode" and code >= 128):
                # The pod alone: its Service stays for the pod made again under the same name.
                self._delete_pod(ns, job, pod["metadata"]["name"])
                self._condition(
                    job, "Restarting", "TFJobRestarting", f"job {name} is restarting because {rtype} replica(s) failed."
                )
            elif policy == "ExitCode":
                return self._fail(ns, job, f'job "{name}" is failing because "{rtype}" replica(s) failed.')
            else:  # Never: tfjob_controller.go, UpdateJobStatus
                return self._fail(ns, job, f"TFJob {ns}/{name} has failed because 1 {rtype} replica(s) failed.")
        # pkg/core/job.go, PastBackoffLimit: restarts of Running pods under OnFailure, Always, ExitCode.
        limit = run_policy.get("backoffLimit")
        restarts = sum(
            p["status"]["containerStatuses"][0]["restartCount"]
            for p in self.pods(job)
            if p["status"].get("phase") == "Running" and p["status"].get("containerStatuses")
        )
        if limit is not None and (restarts > 0 if limit == 0 else restarts >= limit):
            return self._fail(ns, job, f"Job {name} has failed because it has reached the specified backoff limit")
        self._create_pods(ns, job)
        self._reconcile_services(ns, job)
        chief = [
            p for p in self.pods(job) if p["metadata"]["labels"].get("training.kubeflow.org/replica-type") == "chief"
        ]
        if chief and all(p["status"].get("phase") == "Succeeded" for p in chief):
            # tfjob_controller.go, UpdateJobStatus: with a chief, the chief alone decides success.
            self._condition(job, "Succeeded", "TFJobSucceeded", f"TFJob {ns}/{name} successfully completed.")
            self._clean(ns, job)
        elif any(p["status"].get("phase") == "Running" for p in chief):
            self._condition(job, "Running", "TFJobRunning", f"TFJob {ns}/{name} is running.")

    def _create_pods(self, ns: str, job: dict[str, Any]) -> None:
        """A missing replica's pod, named `<job>-<type>-<index>` (pkg/core/utils.go GenGeneralName),
        with the template's labels plus the operator's (pkg/controller.v1/common/pod.go createNewPod)
        and ExitCode turned into Never (pkg/core/pod.go, SetRestartPolicy)."""
        existing = {p["metadata"]["name"] for p in self.fake.objects("pods", ns).values()}
        for rtype, spec in job["spec"]["tfReplicaSpecs"].items():
            for index in range(int(spec.get("replicas", 1))):
                name = f"{job['metadata']['name']}-{rtype.lower()}-{index}"
                if name in existing:
                    continue
                template = copy.deepcopy(spec["template"])
                meta = template.get("metadata") or {}
                labels = {
                    **(meta.get("labels") or {}),
                    "training.kubeflow.org/operator-name": "tfjob-controller",
                    "training.kubeflow.org/job-name": job["metadata"]["name"],
                    "training.kubeflow.org/replica-type": rtype.lower(),
                    "training.kubeflow.org/replica-index": str(index),
                }
                policy = spec.get("restartPolicy", "Never")
                pod_spec = {**template["spec"], "restartPolicy": "Never" if policy == "ExitCode" else policy}
                # pkg/controller.v1/control/pod_control.go, CreatePodsWithControllerRef
                self.fake.event(ns, job, "Normal", "SuccessfulCreatePod", f"Created pod: {name}")
                self.fake.put(
                    "pods",
                    {
                        "metadata": {
                            "name": name,
                            "labels": labels,
                            "annotations": meta.get("annotations") or {},
                            "ownerReferences": [_controller_ref(job)],
                        },
                        "spec": pod_spec,
                        "status": {"phase": "Pending"},
                    },
                    ns,
                )

    def _reconcile_services(self, ns: str, job: dict[str, Any]) -> None:
        """pkg/controller.v1/common/service.go, ReconcileServices, per replica type: a Service for
        each index in range that has none (CreateNewService); the Service of an index at or past
        `replicas` is deleted. The first failure ends the pass (the job is requeued)."""
        owned = self.services(job)
        for rtype, spec in job["spec"]["tfReplicaSpecs"].items():
            rt, replicas = rtype.lower(), int(spec.get("replicas", 1))
            # pkg/core/service.go, FilterServicesForReplicaType and GetServiceSlices: by the labels.
            slices: dict[int, list[dict[str, Any]]] = {}
            for svc in owned:
                labels = svc["metadata"].get("labels") or {}
                if labels.get("training.kubeflow.org/replica-type") == rt:
                    slices.setdefault(int(labels["training.kubeflow.org/replica-index"]), []).append(svc)
            for index in range(max([replicas, *(i + 1 for i in slices)])):
                found = slices.get(index, [])
                if not found:
                    if not self._create_service(ns, job, rt, spec, index):
                        return
                elif index >= replicas:
                    self._delete_service(ns, job, found[0]["metadata"]["name"])

    def _create_service(self, ns: str, job: dict[str, Any], rt: str, spec: dict[str, Any], index: int) -> bool:
        """pkg/controller.v1/common/service.go, CreateNewService: a headless Service named like the
        pod (pkg/controller.v1/common/util.go, GenGeneralName), labelled and selecting by the
        operator's labels (job_controller.go GenLabels: operator-name, job-name; pkg/util/labels:
        replica-type, replica-index), with every port of the `tensorflow` container by its name
        (pkg/core/service.go, GetPortsFromJob), owned by the job through a controllerRef
        (job_controller.go GenOwnerReference; pkg/controller.v1/control/service_control.go,
        CreateServicesWithControllerRef, which records the event). False when it could not be made."""
        name = f"{job['metadata']['name']}-{rt}-{index}"
        container = next(
            (c for c in spec["template"]["spec"].get("containers") or [] if c["name"] == "tensorflow"), None
        )
        if container is None:
            return False  # GetPortsFromJob: "failed to find the port"; ReconcileServices returns it
        ports = {p.get("name", ""): p["containerPort"] for p in container.get("ports") or []}
        # pkg/apis/kubeflow.org/v1/tensorflow_defaults.go, setTensorflowDefaultPort, applied by
        # tfjob_controller.go Reconcile (r.Scheme.Default) before ReconcileJobs.
        ports.setdefault("tfjob-port", 2222)
        if name in self.fake.objects("services", ns):
            # service_control.go createServices: the create's error, as a Warning event.
            message = f'Error creating: services "{name}" already exists'
            self.fake.event(ns, job, "Warning", "FailedCreateService", message)
            return False
        labels = {
            "training.kubeflow.org/operator-name": "tfjob-controller",
            "training.kubeflow.org/job-name": job["metadata"]["name"],
            "training.kubeflow.org/replica-type": rt,
            "training.kubeflow.org/replica-index": str(index),
        }
        self.fake.put(
            "services",
            {
                "metadata": {"name": name, "labels": labels, "ownerReferences": [_controller_ref(job)]},
                "spec": {
                    "clusterIP": "None",
                    "selector": dict(labels),
                    # The API server's defaults (kubernetes pkg/apis/core/v1/defaults.go,
                    # SetDefaults_Service): type ClusterIP, sessionAffinity None, protocol TCP,
                    # targetPort the port. The operator sets only name and port.
                    "type": "ClusterIP",
                    "sessionAffinity": "None",
                    "ports": [{"name": n, "port": p, "protocol": "TCP", "targetPort": p} for n, p in ports.items()],
                },
            },
            ns,
        )
        self.fake.event(ns, job, "Normal", "SuccessfulCreateService", f"Created service: {name}")
        return True

    def _delete_pod(self, ns: str, job: dict[str, Any], name: str) -> None:
        """pkg/controller.v1/control/pod_control.go, RealPodControl.DeletePod: a missing or
        terminating pod is left alone; otherwise deleted, and the event recorded."""
        pod = self.fake.objects("pods", ns).get(name)
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return
        self.fake.delete(ns, "pods", name)
        self.fake.event(ns, job, "Normal", "SuccessfulDeletePod", f"Deleted pod: {name}")

    def _delete_service(self, ns: str, job: dict[str, Any], name: str) -> None:
        """pkg/controller.v1/control/service_control.go, RealServiceControl.DeleteService: a
        missing or terminating Service is left alone; otherwise deleted, and the event recorded."""
        svc = self.fake.objects("services", ns).get(name)
        if svc is None or svc["metadata"].get("deletionTimestamp"):
            return
        self.fake.delete(ns, "services", name)
        self.fake.event(ns, job, "Normal", "SuccessfulDeleteService", f"Deleted service: {name}")

    def _clean(self, ns: str, job: dict[str, Any]) -> None:
        """pkg/controller.v1/common/job.go, DeletePodsAndServices. Nothing without pods. A finished
        job's cleanPodPolicy (defaulted to None: tensorflow_defaults.go, SetDefaults_TFJob) picks
        the pods: Running deletes Running and Pending ones, All every one, None none; a job not
        finished (suspended) loses every pod. Each deleted pod's Service goes with it, by the pod's
        name; a Service whose pod is kept stays until the TFJob is deleted."""
        pods = self.pods(job)
        if not pods:
            return
        finished = _true(job, "Succeeded") or _true(job, "Failed")
        policy = (job["spec"].get("runPolicy") or {}).get("cleanPodPolicy") or "None"
        if finished and policy == "None":
            return
        for pod in pods:
            if finished and policy == "Running" and pod["status"].get("phase") not in ("Running", "Pending"):
                continue
            self._delete_pod(ns, job, pod["metadata"]["name"])
            self._delete_service(ns, job, pod["metadata"]["name"])

    def _fail(self, ns: str, job: dict[str, Any], message: str) -> None:
        """The Failed condition first, then DeletePodsAndServices, which so sees a finished job and
        keeps to cleanPodPolicy (pkg/controller.v1/common/job.go, ReconcileJobs, jobExceedsLimit;
        kubeflow/trainer#3420). A job failed by UpdateJobStatus is cleaned on its next reconcile,
        the same way."""
        self._condition(job, "Failed", "TFJobFailed", message)
        self._clean(ns, job)

    def _condition(self, job: dict[str, Any], kind: str, reason: str, message: str) -> None:
        """pkg/util/status.go, setCondition: Failed is final; Running and Restarting replace each other."""
        conditions = job["status"]["conditions"]
        if _true(job, "Failed"):
            return
        if kind in ("Running", "Restarting"):
            conditions[:] = [c for c in conditions if c["type"] not in ("Running", "Restarting")]
        if kind in ("Succeeded", "Failed"):
            for c in conditions:
                if c["type"] == "Running":
                    c["status"] = "False"
        conditions[:] = [c for c in conditions if c["type"] != kind]
        conditions.append(
            {"type": kind, "status": "True", "reason": reason, "message": message, "lastTransitionTime": now()}
        )

    def expire(self, name: str, namespace: str = "default") -> None:
        """ttlSecondsAfterFinished has passed: the operator deletes the TFJob alone, with the
        server's default propagation (pkg/controller.v1/common/job.go CleanupJob, tfjob_controller.go
        DeleteJob); the garbage collector takes what it owns."""
        with self.fake.changed:
            self.fake.delete(namespace, "tfjobs", name)
            self.fake.settle()


class JobController(_Controller):
    """The batch/v1 Job controller (pkg/controller/job/job_controller.go), one pod at a time."""

    owns = "jobs"

    def _reconcile(self, ns: str, job: dict[str, Any]) -> None:
        status = job.setdefault("status", {})
        if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in status.get("conditions") or []):
            return
        pods = [
            p
            for p in self.fake.objects("pods", ns).values()
            if any(r["uid"] == job["metadata"]["uid"] for r in p["metadata"].get("ownerReferences") or [])
        ]
        if job["spec"].get("suspend"):
            for pod in pods:
                if not pod["metadata"].get("deletionTimestamp"):
                    self.fake.delete(ns, "pods", pod["metadata"]["name"])
            return
        for pod in pods:
            if pod["status"].get("phase") == "Succeeded":
                status["succeeded"] = 1
                status.setdefault("conditions", []).append({"type": "Complete", "status": "True"})
                return
        failed = [p for p in pods if p["status"].get("phase") == "Failed"]
        verdicts = [(p, _pod_failure_policy(job, p)) for p in failed]
        for _pod, (action, message) in verdicts:
            if action == "FailJob":
                return self._fail(ns, job, pods, "PodFailurePolicy", message)
        failed = [p for p, (action, _) in verdicts if action != "Ignore"]
        status["failed"] = len(failed)
        if _past_backoff_limit_on_failure(job, pods):
            return self._fail(ns, job, pods, "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        if len(failed) > job["spec"].get("backoffLimit", 6):
            status.setdefault("conditions", []).append(
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            )
            return
        if not [p for p in pods if p["status"].get("phase") != "Failed"]:
            template = copy.deepcopy(job["spec"]["template"])
            # The API server adds these labels to the template at create time (pkg/registry/batch/job/
            # strategy.go, generateSelector); the controller names pods <job>-<random>.
            labels = {
                **(template.get("metadata") or {}).get("labels", {}),
                "batch.kubernetes.io/job-name": job["metadata"]["name"],
                "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
            }
            self.fake.put(
                "pods",
                {
                    "metadata": {
                        "name": f"{job['metadata']['name']}-{uuid.uuid4().hex[:5]}",
                        "labels": labels,
                        "ownerReferences": [_controller_ref(job)],
                    },
                    "spec": template["spec"],
                    "status": {"phase": "Pending"},
                },
                ns,
            )

    def _fail(self, ns: str, job: dict[str, Any], pods: list[dict[str, Any]], reason: str, message: str) -> None:
        """A failed Job loses its active pods (job_controller.go, syncJob: deleteActivePods once
        finishedCondition is set)."""
        job["status"].setdefault("conditions", []).append(
            {"type": "Failed", "status": "True", "reason": reason, "message": message, "lastTransitionTime": now()}
        )
        for pod in pods:
            if pod["status"].get("phase") not in ("Succeeded", "Failed") and not pod["metadata"].get(
                "deletionTimestamp"
            ):
                self.fake.delete(ns, "pods", pod["metadata"]["name"])

    def expire(self, name: str, namespace: str = "default") -> None:
        """The TTL-after-finished controller deletes a Job in the foreground
        (pkg/controller/ttlafterfinished/ttlafterfinished_controller.go)."""
        with self.fake.changed:
            self.fake.delete(namespace, "jobs", name, "Foreground")
            self.fake.settle()


def _pod_failure_policy(job: dict[str, Any], pod: dict[str, Any]) -> tuple[str, str]:
    """(action, message) for a failed pod: the first rule of spec.podFailurePolicy that matches,
    else Count (kubernetes pkg/controller/job/pod_failure_policy.go, matchPodFailurePolicy). An
    onExitCodes rule looks only at containers that ended with a code other than 0
    (getMatchingContainerFromList), of the named container if it names one."""
    meta = pod["metadata"]
    for index, rule in enumerate((job["spec"].get("podFailurePolicy") or {}).get("rules") or []):
        codes = rule.get("onExitCodes")
        if codes:
            for status in pod["status"].get("containerStatuses") or []:
                code = ((status.get("state") or {}).get("terminated") or {}).get("exitCode")
                if not code or codes.get("containerName") not in (None, status["name"]):
                    continue
                if (code in codes["values"]) == (codes["operator"] == "In"):
                    return rule["action"], (
                        f"Container {status['name']} for pod {meta['namespace']}/{meta['name']} failed with exit "
                        f"code {code} matching {rule['action']} rule at index {index}"
                    )
        for wanted in rule.get("onPodConditions") or []:
            if any(
                c.get("type") == wanted["type"] and c.get("status") == wanted.get("status", "True")
                for c in pod["status"].get("conditions") or []
            ):
                return rule["action"], (
                    f"Pod {meta['namespace']}/{meta['name']} has condition {wanted['type']} matching "
                    f"{rule['action']} rule at index {index}"
                )
    return "Count", ""


def _past_backoff_limit_on_failure(job: dict[str, Any], pods: list[dict[str, Any]]) -> bool:
    """kubernetes pkg/controller/job/job_controller.go, pastBackoffLimitOnFailure: under OnFailure
    the kubelet restarts containers in place, so the restarts of Running and Pending pods count;
    more than 0 for a limit of 0, else at least the limit."""
    if job["spec"]["template"]["spec"].get("restartPolicy") != "OnFailure":
        return False
    restarts = sum(
        c.get("restartCount", 0)
        for p in pods
        if p["status"].get("phase") in ("Running", "Pending")
        for c in p["status"].get("containerStatuses") or []
    )
    limit = job["spec"].get("backoffLimit", 6)
    return restarts > 0 if limit == 0 else restarts >= limit


def _true(job: dict[str, Any], kind: str) -> bool:
    return any(c["type"] == kind and c["status"] == "True" for c in (job.get("status") or {}).get("conditions") or [])


def _handler(fake: FakeKube):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            code, answer, headers = fake.answer(self.command, self.path, self.headers, self.rfile.read(length))
            self.send_response(code)
            for key, value in headers.items():
                self.send_header(key, value)
            if isinstance(answer, dict):
                data = json.dumps(answer).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_header("Content-Type", "text/plain")
            self.end_headers()  # HTTP/1.0: the body ends when the connection closes
            for chunk in answer:
                self.wfile.write(chunk)
                self.wfile.flush()

        do_GET = do_POST = do_DELETE = do_PATCH = _serve

        def log_message(self, *args):
            pass

    return Handler


QUEUE_LABEL = "kueue.x-k8s.io/queue-name"


class Kueue:
    """Kueue (kubernetes-sigs/kueue) with a ClusterQueue that has room for everything: the
    jobframework reconciler and the workload controller, for batch/v1 Jobs and TFJobs that carry
    the queue-name label (pkg/controller/jobframework/reconciler.go, ReconcileGenericJob)."""

    def __init__(self, fake: FakeKube):
        self.fake = fake
        self.enabled = False

    def admit(self, plural: str, doc: dict[str, Any]) -> None:
        """The webhook suspends a queued job at creation, so that nothing runs before admission
        (pkg/controller/jobframework/defaults.go, ApplyDefaultForSuspend)."""
        if self.enabled and plural in ("jobs", "tfjobs") and _queue(doc):
            _set_suspend(plural, doc, True)

    def reconcile(self) -> None:
        if not self.enabled:
            return
        for (ns, plural), items in list(self.fake.store.items()):
            if plural not in ("jobs", "tfjobs"):
                continue
            for job in list(items.values()):
                if _queue(job) and not job["metadata"].get("deletionTimestamp"):
                    self._reconcile(ns, plural, job)

    def _reconcile(self, ns: str, plural: str, job: dict[str, Any]) -> None:
        workload = self._workload(ns, plural, job)
        finished = ("Complete", "Succeeded", "Failed")
        if any(_true(job, kind) for kind in finished):
            return  # "2. handle job is finished": the Workload is marked Finished; nothing to run
        if workload["spec"].get("active") is False:
            # pkg/controller/core/workload_controller.go: an inactive Workload is evicted
            # (InactiveWorkload) and loses its admission; the reconciler's "6. handle eviction"
            # stops the job: stopJob suspends it.
            workload["status"]["conditions"] = [
                {"type": "Evicted", "status": "True", "reason": "InactiveWorkload"},
                {"type": "Admitted", "status": "False", "reason": "NoReservation"},
            ]
            if not _suspended(plural, job):
                _set_suspend(plural, job, True)
            return
        # "7. handle job is suspended": an admitted Workload's job is unsuspended (startJob), whoever
        # suspended it.
        if _suspended(plural, job):
            _set_suspend(plural, job, False)

    def _workload(self, ns: str, plural: str, job: dict[str, Any]) -> dict[str, Any]:
        """The job's Workload, made and admitted at once: named after the job's kind and name
        (pkg/controller/jobframework/workload_names.go, GetWorkloadNameForOwnerWithGVK) and owned
        by the job (reconciler.go, constructWorkload: SetControllerReference)."""
        uid = job["metadata"]["uid"]
        for w in self.fake.objects("workloads", ns).values():
            if any(r["uid"] == uid for r in w["metadata"].get("ownerReferences") or []):
                return w
        kind = KINDS[plural][1].lower()
        return self.fake.put(
            "workloads",
            {
                "metadata": {
                    "name": f"{kind}-{job['metadata']['name']}-{uid[:5]}",
                    "labels": {"kueue.x-k8s.io/job-uid": uid},
                    "ownerReferences": [_controller_ref(job)],
                },
                "spec": {"active": True, "queueName": _queue(job)},
                "status": {
                    "conditions": [{"type": "QuotaReserved", "status": "True"}, {"type": "Admitted", "status": "True"}]
                },
            },
            ns,
        )


def _queue(job: dict[str, Any]) -> str:
    return (job["metadata"].get("labels") or {}).get(QUEUE_LABEL, "")


def _suspended(plural: str, job: dict[str, Any]) -> bool:
    spec = job["spec"]
    return bool((spec.get("runPolicy") or {}).get("suspend") if plural == "tfjobs" else spec.get("suspend"))


def _set_suspend(plural: str, job: dict[str, Any], value: bool) -> None:
    if plural == "tfjobs":
        job["spec"].setdefault("runPolicy", {})["suspend"] = value
    else:
        job["spec"]["suspend"] = value
