"""One connection to a Kubernetes API server, through the official `kubernetes` client.

The client reads the kubeconfig (contexts, certificates, tokens, exec plugins such as
gke-gcloud-auth-plugin) and signs the requests; the objects travel as plain JSON dicts, exactly
as the chart renders them and as the API server serves them. Every failure becomes one line
that says what was refused or missing and how to fix it: a `KubeError` (exit 2) when the request
or the kubeconfig is wrong, a `Transient` (exit 3) when the cluster does not answer or answers 429
or a 5xx.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pml_trainer.errors import BadInput, Unavailable

INSTALL_HINT = "pip install 'parallel-ml[k8s]'"
TIMEOUT = (5, 30)  # seconds to connect, seconds to read: an unreachable cluster fails fast


class KubeError(BadInput):
    """A request the cluster refused, or a kubeconfig that cannot be used, as one line with its fix."""


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    pass


class Forbidden(KubeError):
    """403 from an authorizer (RBAC): the user may not make this request."""


class Denied(KubeError):
    """403 from admission (a webhook, a quota, Pod Security): the request is allowed, its object is not."""


class BadRequest(KubeError):
    """400: for a pod's log, the container has not started (pkg/kubelet/kubelet_pods.go,
    validateContainerLogStatus)."""


class Transient(Unavailable):
    """429, a 5xx or no connection: the same request may work a moment later (a control plane that
    is upgrading, priority and fairness shedding load). `retry_after` is the server's hint."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


TRANSIENT_CODES = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class Resource:
    """Where the objects of one kind live in the REST API."""

    kind: str
    api_version: str
    plural: str
    namespaced: bool = True

    def path(self, namespace: str | None = None, name: str | None = None) -> str:
        base = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        where = f"/namespaces/{namespace}" if self.namespaced else ""
        return f"{base}{where}/{self.plural}" + (f"/{name}" if name else "")

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def describe(self) -> str:
        """How RBAC names it: `tfjobs.kubeflow.org`, or `services` for the core group."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


def kubeconfig_files() -> str:
    return os.environ.get("KUBECONFIG") or str(pathlib.Path.home() / ".kube" / "config")


def has_kubeconfig() -> bool:
    return any(pathlib.Path(p).expanduser().is_file() for p in kubeconfig_files().split(os.pathsep) if p)


def no_kubeconfig() -> str:
    """Where the client looked for a kubeconfig and found none (client-go's rule: $KUBECONFIG, else
    ~/.kube/config; kubernetes/client-go tools/clientcmd/loader.go, NewDefaultClientConfigLoadingRules)."""
    where = (
        f"KUBECONFIG={os.environ['KUBECONFIG']}"
        if os.environ.get("KUBECONFIG")
        else f"{kubeconfig_files()} (KUBECONFIG is not set)"
    )
    return (
        f"no kubeconfig at {where}; `gcloud container clusters get-credentials CLUSTER` (GKE) or "
        "`pmlctl cluster up` (kind) writes one, or set KUBECONFIG"
    )


def place() -> list[str] | None:
    """The kubeconfig's current context and its cluster's server, read without running the
    context's authentication (an exec plugin may prompt, or wait): None where there is none."""
    try:
        from kubernetes import config

        merged = config.kube_config.KubeConfigMerger(kubeconfig_files()).config.value

        def named(section: str) -> dict[str, Any]:
            entries = [getattr(e, "value", e) for e in merged.get(section) or []]
            return {e["name"]: getattr(e[section[:-1]], "value", e[section[:-1]]) for e in entries}

        current = merged["current-context"]
        return [current, named("clusters")[named("contexts")[current]["cluster"]]["server"]]
    except Exception:  # no kubeconfig, or one a job command would explain: never the cache's business
        return None


def connect(context: str | None) -> Api:
    """A client for `context`, or the kubeconfig's current context."""
    try:
        from kubernetes import client, config
    except ImportError:
        raise KubeError(f"the Kubernetes target needs the kubernetes client: {INSTALL_HINT}") from None
    files = kubeconfig_files()
    if not has_kubeconfig():
        raise KubeError(
            f"no kubeconfig at {files}; create a cluster with `pmlctl cluster up` (kind) or "
            "`gcloud container clusters get-credentials CLUSTER` (GKE), or set KUBECONFIG"
        )
    import yaml

    # The client lets a file that is not YAML, or YAML of the wrong shape, through unexplained.
    broken = (config.ConfigException, yaml.YAMLError, UnicodeDecodeError, TypeError, AttributeError, ValueError)
    try:
        # Read the merged files here: list_kube_config_contexts refuses a kubeconfig without a
        # current-context even when --context names one.
        merged = config.kube_config.KubeConfigMerger(files).config
        if merged is None:
            raise config.ConfigException("no configuration found")
        contexts = [getattr(c, "value", c) for c in merged.value.get("contexts") or []]  # ConfigNodes
        names = [c["name"] for c in contexts]
    except (*broken, KeyError) as err:
        raise KubeError(f"kubeconfig {files}: {_config_problem(err)}; fix the file or set KUBECONFIG") from None
    chosen = context or merged.value.get("current-context")
    if chosen is None:
        raise KubeError(
            f"kubeconfig {files} has no current context; pass --context "
            f"({', '.join(names) or 'none defined'}) or run `kubectl config use-context NAME`"
        )
    if chosen not in names:
        raise KubeError(
            f"--context {chosen}: not in kubeconfig {files}; use one of {', '.join(names) or '(none defined)'}"
        )
    configuration = client.Configuration()
    try:
        config.load_kube_config(
            config_file=files, context=chosen, client_configuration=configuration, persist_config=False
        )
    except broken as err:
        raise KubeError(f"context {chosen}: {_config_problem(err)}; fix it in {files}") from None
    configuration.retries = 0  # a refused connection is reported at once, not three times later
    namespace = next(c for c in contexts if c["name"] == chosen).get("context", {}).get("namespace")
    return Api(client.ApiClient(configuration), chosen, namespace or "default")


class Api:
    def __init__(self, api_client, context: str, namespace: str):
        self.client = api_client
        self.context = context
        self.namespace = namespace  # the context's, as kubectl uses it when -n is not given
        self.server = api_client.configuration.host

    def get(self, path: str, **query: Any) -> dict[str, Any]:
        return self._json(self._call("GET", path, query))

    def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._json(self._call("POST", path, {}, body))

    def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """A JSON merge patch (RFC 7386): lists in it replace the object's lists whole."""
        return self._json(self._call("PATCH", path, {}, body, content_type="application/merge-patch+json"))

    def delete(self, path: str) -> None:
        # Foreground: the object stays, marked, until the garbage collector has removed what it owns
        # with blockOwnerDeletion (its pods), so "gone" means its pods are gone too. Without a policy a
        # batch/v1 Job would orphan its pods (kubernetes pkg/registry/batch/job/strategy.go,
        # DefaultGarbageCollectionPolicy).
        self._call(
            "DELETE", path, {}, {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Foreground"}
        ).release_conn()

    def stream(self, path: str, **query: Any) -> Iterator[bytes]:
        """The response body in chunks as they arrive (pod logs with follow=true)."""
        from urllib3.exceptions import HTTPError

        response = self._call("GET", path, query, timeout=(TIMEOUT[0], None))
        try:
            yield from response.stream(4096, decode_content=True)
        except HTTPError as err:  # the connection dropped mid-stream (a control plane restarting)
            raise Transient(
                f"the cluster of context {self.context} closed the stream of {path} "
                f"({_first_line(err)}); run the command again"
            ) from None
        finally:
            response.release_conn()

    def _call(
        self,
        method: str,
        path: str,
        query: dict[str, Any],
        body: Any = None,
        timeout=TIMEOUT,
        content_type: str = "application/json",
    ):
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        params = [(k, _query_value(v)) for k, v in query.items() if v is not None]
        try:
            return self.client.call_api(
                path,
                method,
                query_params=params,
                body=body,
                header_params={"Accept": "application/json", "Content-Type": content_type},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _request_timeout=timeout,
            )[0]
        except ApiException as err:
            raise self._refused(method, path, err) from None
        except HTTPError as err:
            raise Transient(
                f"cannot reach the cluster of context {self.context} at {self.server} "
                f"({_first_line(getattr(err, 'reason', None) or err)}); start it (`pmlctl cluster up` "
                "for kind) or pick another --context"
            ) from None

    def _refused(self, method: str, path: str, err) -> KubeError:
        status = _status_body(err.body)
        message = status.get("message") or err.reason or ""
        if err.status == 401:
            return KubeError(
                f"the cluster of context {self.context} did not accept its credentials (401 "
                f"Unauthorized on {method} {path}); refresh them: `gcloud container clusters "
                "get-credentials CLUSTER` (GKE) or `kind export kubeconfig --name pml` (kind)"
            )
        if err.status == 403 and (WEBHOOK_DENIAL.match(message) or not AUTHORIZER_DENIAL.search(message)):
            return _denied(_request_words(method, path), self.context, message)
        if err.status == 403:
            words = _request_words(method, path)
            # Only a ClusterRole grants rights on what no namespace holds (CRDs, namespaces).
            role = "a Role" if " in namespace " in words else "a ClusterRole (the resource is cluster-scoped)"
            return Forbidden(
                f"forbidden: {words} (context {self.context}): "
                f"{message}; ask a cluster admin for {role} that allows it, or use another --context"
            )
        if err.status == 404:
            return NotFound(f"not found: {path} ({message})")
        if err.status == 409:
            return Conflict(message or f"{path} already exists")
        if err.status == 400:
            return BadRequest(message or f"{method} {path} was refused (400)")
        if err.status == 422:
            # The fields at fault are in details.causes
            # (kubernetes staging/src/k8s.io/apimachinery/pkg/api/errors/errors.go, NewInvalid).
            causes = "; ".join(
                f"{c.get('field', '?')}: {c.get('message', '')}"
                for c in (status.get("details") or {}).get("causes") or []
            )
            return KubeError(f"the cluster refused {_request_words(method, path)}: {causes or message}")
        if err.status in TRANSIENT_CODES:
            retry_after = (err.headers or {}).get("Retry-After")
            return Transient(
                f"{method} {path}: {err.status} {err.reason} from the cluster of context {self.context}"
                f"{': ' + message if message else ''}",
                float(retry_after) if retry_after and retry_after.isdigit() else None,
            )
        return KubeError(f"{method} {path} failed with {err.status} {err.reason}: {message}")

    @staticmethod
    def _json(response) -> dict[str, Any]:
        return json.loads(response.data or b"{}")


# An authorizer's denial (RBAC's, and GKE IAM's) names the user and what it cannot do: `User "U" cannot
# VERB resource "R" in API group "G" in the namespace "N"` (kubernetes staging/src/k8s.io/apiserver/pkg/
# endpoints/handlers/responsewriters/errors.go, forbiddenMessage). Every other 403 comes from admission.
AUTHORIZER_DENIAL = re.compile(r'\bUser "[^"]*" cannot \S+ ')
# A webhook's denial begins so, 403 unless the webhook sets another code, whatever its own words say
# after it (staging/src/k8s.io/apiserver/pkg/admission/plugin/webhook/errors/statuserror.go, ToStatusErr).
WEBHOOK_DENIAL = re.compile(r'admission webhook "(?P<webhook>[^"]+)" denied the request')


def _denied(words: str, context: str, message: str) -> Denied:
    """A 403 that is no RBAC matter: the server's own words, and who to ask."""
    message = " ".join(message.split()) or "no message"
    webhook = WEBHOOK_DENIAL.match(message)
    if webhook:
        who = (
            f"the admission webhook {webhook['webhook']} (a policy of the cluster, not RBAC); change the job "
            "to meet it, or ask the cluster admin who runs that webhook"
        )
    else:
        who = (
            "the cluster's admission (a quota, Pod Security or another policy, not RBAC); change the job "
            "to meet it, or ask a cluster admin"
        )
    return Denied(f"the cluster refused to {words} (context {context}): {message}; refused by {who}")


def _query_value(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _status_body(body: Any) -> dict[str, Any]:
    try:
        doc = json.loads(body or "{}")
    except (TypeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _request_words(method: str, path: str) -> str:
    """`create tfjobs.kubeflow.org in namespace ml`: a REST request as RBAC words it."""
    parts = path.strip("/").split("/")
    group, rest = ("", parts[2:]) if parts[0] == "api" else (parts[1], parts[3:])
    namespace = None
    if rest[:1] == ["namespaces"] and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = (f"{rest[0]}.{group}" if group else rest[0]) + "".join(f"/{sub}" for sub in rest[2:3])
    verb = {"POST": "create", "DELETE": "delete", "PUT": "update", "PATCH": "patch"}.get(
        method, "get" if len(rest) > 1 else "list"
    )
    return f"{verb} {resource}" + (f" in namespace {namespace}" if namespace else "")


def _config_problem(err: Exception) -> str:
    from kubernetes.config import ConfigException

    if isinstance(err, ConfigException):
        return _first_line(err)
    return f"not a kubeconfig ({type(err).__name__}: {_first_line(err)})"


def _first_line(err: Any) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
