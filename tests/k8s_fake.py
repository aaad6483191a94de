"""An HTTP fake of the Kubernetes API server, for the tests of the Kubernetes target.

No API server can run on the test machines, so this one answers the real REST paths with real
bodies: discovery (`/api`, `/apis`, with or without `kubeflow.org/v1`), the TFJob CRD, create,
get, list (with label selectors) and delete of every namespaced kind the chart renders, pods with
the statuses a test gives them, pod logs with `follow`, and the Status bodies of 401, 403, 404 and
409. It records every request, and a test drives pods and jobs the way the controllers would.
Threads meet on one Condition: a test waits for a request or a change, never for some time.
"""

from __future__ import annotations

import datetime
import json
import re
import threading
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Optional
from urllib.parse import parse_qsl, urlsplit

import yaml

TOKEN = "fake-token"
KINDS = {  # plural -> (group/version, kind)
    "pods": ("v1", "Pod"), "services": ("v1", "Service"), "serviceaccounts": ("v1", "ServiceAccount"),
    "secrets": ("v1", "Secret"), "jobs": ("batch/v1", "Job"),
    "networkpolicies": ("networking.k8s.io/v1", "NetworkPolicy"), "tfjobs": ("kubeflow.org/v1", "TFJob"),
}
GROUPS = ("batch/v1", "networking.k8s.io/v1", "apiextensions.k8s.io/v1")
NAMESPACED = re.compile(r"^/(?:api/(?P<core>v1)|apis/(?P<gv>[^/]+/[^/]+))/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)"
                        r"(?:/(?P<name>[^/]+))?(?:/(?P<sub>log))?$")
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/"


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, str]
    body: Any


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeKube:
    def __init__(self, crd: dict[str, Any], tfjob: bool = True):
        self.crd = crd
        self.tfjob = tfjob  # is the Training Operator installed?
        self.requests: list[Request] = []
        self.store: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}  # (namespace, plural) -> name -> object
        self.forbidden: set[tuple[str, str]] = set()  # (verb, plural)
        self.logs: dict[str, list[bytes]] = {}
        self.log_ended: set[str] = set()
        self.changed = threading.Condition()
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

    def kubeconfig(self, path, token: str = TOKEN, namespace: Optional[str] = None) -> None:
        context = {"cluster": "fake", "user": "dev", **({"namespace": namespace} if namespace else {})}
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "kind-pml",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "dev", "user": {"token": token}}],
            "contexts": [{"name": "kind-pml", "context": context}],
        }))

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
        meta.update(namespace=namespace, uid=meta.get("uid") or str(uuid.uuid4()),
                    creationTimestamp=meta.get("creationTimestamp") or now(), resourceVersion="1")
        obj.update(apiVersion=version, kind=kind)
        with self.changed:
            self.store.setdefault((namespace, plural), {})[meta["name"]] = obj
            self.changed.notify_all()
        return obj

    def set_status(self, plural: str, name: str, status: dict[str, Any], namespace: str = "default") -> None:
        with self.changed:
            self.store[(namespace, plural)][name]["status"] = status
            self.changed.notify_all()

    def pod(self, job: str, role: str, index: int, mode: str, phase: str = "Running", *,
            container: Optional[dict[str, Any]] = None, conditions: Optional[list] = None,
            name: Optional[str] = None, created: Optional[str] = None, restarts: int = 0) -> dict[str, Any]:
        """A pod as the TFJob operator (mode tfjob) or the Job controller (native) labels it."""
        index_label = {"tfjob": "training.kubeflow.org/replica-index", "native": "parallel-ml/index"}[mode]
        state = container if container is not None else {"running": {"startedAt": now()}}
        return self.put("pods", {
            "metadata": {"name": name or f"{job}-{role}-{index}", "creationTimestamp": created,
                         "labels": {"parallel-ml/job": job, "parallel-ml/role": role, index_label: str(index)}},
            "status": {"phase": phase, "conditions": conditions or [],
                       "containerStatuses": [] if phase == "Pending" and container is None else [
                           {"name": "tensorflow", "restartCount": restarts, "state": state}]},
        })

    def write_log(self, pod: str, text: str, end: bool = False) -> None:
        with self.changed:
            self.logs.setdefault(pod, []).append(text.encode())
            if end:
                self.log_ended.add(pod)
            self.changed.notify_all()

    # The server side.

    def answer(self, method: str, target: str, headers, body: bytes):
        """(status, JSON body or an iterator of byte chunks)."""
        split = urlsplit(target)
        path, query = split.path, dict(parse_qsl(split.query))
        doc = json.loads(body) if body else None
        with self.changed:
            self.requests.append(Request(method, path, query, doc))
            self.changed.notify_all()
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, _status(401, "Unauthorized", "Unauthorized")
        if path == "/api":
            return 200, {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            versions = GROUPS + (("kubeflow.org/v1",) if self.tfjob else ())
            return 200, {"kind": "APIGroupList", "apiVersion": "v1", "groups": [
                {"name": gv.split("/")[0], "versions": [{"groupVersion": gv, "version": gv.split("/")[1]}],
                 "preferredVersion": {"groupVersion": gv, "version": gv.split("/")[1]}} for gv in versions]}
        if path.startswith(CRD_PATH) and method == "GET":
            return self._crd(path[len(CRD_PATH):])
        match = NAMESPACED.match(path)
        if not match or match["plural"] not in KINDS or (match["plural"] == "tfjobs" and not self.tfjob):
            return 404, _status(404, "NotFound", "the server could not find the requested resource")
        return self._resource(method, match, query, doc)

    def _crd(self, name: str):
        if ("get", "customresourcedefinitions") in self.forbidden:
            return 403, _status(403, "Forbidden", 'customresourcedefinitions.apiextensions.k8s.io "tfjobs.kubeflow.org" '
                                'is forbidden: User "dev" cannot get resource "customresourcedefinitions" in API group '
                                '"apiextensions.k8s.io" at the cluster scope')
        if name != "tfjobs.kubeflow.org" or not self.tfjob:
            return 404, _status(404, "NotFound", f'customresourcedefinitions.apiextensions.k8s.io "{name}" not found')
        return 200, self.crd

    def _resource(self, method: str, m: re.Match, query: dict[str, str], doc: Any):
        ns, plural, name = m["ns"], m["plural"], m["name"]
        version = m["core"] or m["gv"]
        group = version.rpartition("/")[0]
        verb = {"POST": "create", "DELETE": "delete"}.get(method, "get" if name else "list")
        if (verb, plural) in self.forbidden:
            return 403, _status(403, "Forbidden", f'{plural}{"." + group if group else ""} is forbidden: User "dev" '
                                f'cannot {verb} resource "{plural}" in API group "{group}" in the namespace "{ns}"')
        items = self.store.setdefault((ns, plural), {})
        missing = 404, _status(404, "NotFound", f'{plural}{"." + group if group else ""} "{name}" not found')
        if method == "POST":
            if doc["metadata"]["name"] in items:
                return 409, _status(409, "AlreadyExists", f'{plural} "{doc["metadata"]["name"]}" already exists')
            return 201, self.put(plural, doc, ns)
        if method == "GET" and not name:
            wanted = dict(pair.split("=", 1) for pair in query["labelSelector"].split(",")) \
                if query.get("labelSelector") else {}
            chosen = [o for o in items.values()
                      if all((o["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())]
            return 200, {"kind": KINDS[plural][1] + "List", "apiVersion": version, "metadata": {}, "items": chosen}
        if name not in items:
            return missing
        if method == "GET" and m["sub"] == "log":
            return 200, self._log(name, query.get("follow") == "true")
        if method == "GET":
            return 200, items[name]
        if method == "DELETE":
            with self.changed:
                gone = items.pop(name)
                self.changed.notify_all()
            return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success",
                         "details": {"name": name, "kind": plural, "uid": gone["metadata"]["uid"]}}
        return 405, _status(405, "MethodNotAllowed", f"{method} is not supported here")

    def _log(self, pod: str, follow: bool):
        sent = 0
        while True:
            with self.changed:
                if follow:
                    self.changed.wait_for(lambda: len(self.logs.get(pod, [])) > sent or pod in self.log_ended)
                chunks = self.logs.get(pod, [])[sent:]
                ended = not follow or pod in self.log_ended
            sent += len(chunks)
            yield from chunks
            if ended and sent >= len(self.logs.get(pod, [])):
                return


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}


def _handler(fake: FakeKube):
    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            code, answer = fake.answer(self.command, self.path, self.headers, self.rfile.read(length))
            self.send_response(code)
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

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, *args):
            pass

    return Handler
