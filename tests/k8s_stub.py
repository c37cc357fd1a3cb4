"""`python tests/k8s_stub.py SPECS.json SNAKEMAKE-ARGS...`: Snakemake with the Kubernetes executor
plugin's own code, the cluster API stubbed at the client boundary only (kubernetes.config's
loaders and kubernetes.client's CoreV1Api/BatchV1Api). Every Job the plugin submits is written to
SPECS.json as the API server would receive it (the client's own serialisation); each is then
reported as failed, so Snakemake stops after the first round (nothing runs).
"""
from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import kubernetes.client
import kubernetes.config

OUT = sys.argv.pop(1)
SUBMITTED: list[dict] = []


class _Core:
    def create_namespaced_secret(self, namespace, body):
        return body

    def delete_namespaced_secret(self, name, namespace, body=None):
        return None

    def list_namespaced_pod(self, namespace, label_selector=None):
        return SimpleNamespace(items=[])

    def delete_namespaced_pod(self, *args, **kwargs):
        return None


class _Batch:
    def create_namespaced_job(self, namespace, body):
        spec = kubernetes.client.ApiClient().sanitize_for_serialization(body)
        SUBMITTED.append({"namespace": namespace, "job": spec})
        with open(OUT, "w") as f:
            json.dump(SUBMITTED, f, indent=1)
        return body

    def read_namespaced_job_status(self, name, namespace):
        return SimpleNamespace(status=SimpleNamespace(failed=1, succeeded=None))

    def delete_namespaced_job(self, *args, **kwargs):
        return None


kubernetes.config.load_kube_config = lambda *a, **k: None
kubernetes.config.load_incluster_config = lambda *a, **k: None
kubernetes.client.CoreV1Api = _Core
kubernetes.client.BatchV1Api = _Batch

if __name__ == "__main__":
    from snakemake.cli import main

    sys.argv = ["snakemake", *sys.argv[1:]]
    main()
