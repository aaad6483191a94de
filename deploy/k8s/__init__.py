"""The Kubernetes target of `pmlctl` (kind and GKE), through the official `kubernetes` client.

`target.py` is the target (deploy/target.py's contract), `state.py` reads a job's state from the
objects the API server serves, and `api.py` is the one connection; only `api.py` imports the
client, and only when a cluster is actually used, so that `pmlctl --help` stays fast.
"""
