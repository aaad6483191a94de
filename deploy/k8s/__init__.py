"""The Kubernetes target of `pmlctl` (kind and GKE), through the official `kubernetes` client.

This module stays light: the CLI imports it to decide where a command goes, and only the code
under `api` imports the client, when a cluster is actually used.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from deploy import jobs


def selected(target: Optional[str], context: Optional[str], namespace: Optional[str],
             name: Optional[str] = None) -> bool:
    """Is this command for a cluster job?

    `--target k8s`, `--context` or `--namespace` say so. Otherwise a job this machine started
    (local or docker) wins, and an unknown name is looked for in the cluster when a kubeconfig
    exists.
    """
    if target not in (None, "k8s"):
        return False
    if target == "k8s" or context or namespace:
        return True
    if name is None or jobs.read_state(name) is not None:
        return False
    from deploy.k8s.api import has_kubeconfig

    return has_kubeconfig()


def run(action: Callable[..., Any], context: Optional[str], namespace: Optional[str]) -> Any:
    """`action(api, namespace)` on the chosen cluster; the namespace defaults to the context's."""
    from deploy.k8s.api import connect

    api = connect(context)
    return action(api, namespace or api.namespace)
