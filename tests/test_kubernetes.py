"""profiles/kubernetes through the pinned snakemake-executor-plugin-kubernetes's own code: the Job
it would submit for a GPU rule (class_priors), with only the cluster API stubbed at the client
boundary (tests/k8s_stub.py records the Job as the API server would receive it). Checked: the
image the profile names, a GPU in the container's limits (Kubernetes refuses a GPU request
without a limit), the NVIDIA toleration, the shared volume claim and its mount, the job's rule.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PROFILE = yaml.safe_load((REPO / "profiles" / "kubernetes" / "config.yaml").read_text())
pytestmark = [pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def submitted(tmp_path_factory) -> list[dict]:
    work = tmp_path_factory.mktemp("k8s")
    for name in ("Snakefile", "rules", "config", "ablations", "profiles", "envs"):
        (work / name).symlink_to(REPO / name)
    specs = work / "specs.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO),
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    # backend tiny: class_priors has no inputs, so it is the first job submitted; the storage
    # prefix is a local folder instead of the claim's mount
    res = subprocess.run([sys.executable, str(REPO / "tests" / "k8s_stub.py"), str(specs),
                          "--profile", "profiles/kubernetes", "--config", "backend=tiny",
                          "--default-storage-prefix", str(work / "storage"),
                          "cache/tiny/class_priors/mug/manifest.json"],
                         cwd=work, env=env, capture_output=True, text=True, timeout=540)
    assert specs.is_file(), res.stderr[-3000:]
    return json.loads(specs.read_text())


def test_the_gpu_job_the_plugin_submits(submitted):
    assert len(submitted) == 1
    job = submitted[0]["job"]
    assert submitted[0]["namespace"] == PROFILE["kubernetes-namespace"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == PROFILE["container-image"]
    assert "--target-jobs 'class_priors:backend=tiny,cls=mug'" in container["args"][1]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert container["resources"]["limits"]["memory"] == "32000M"
    assert container["resources"]["limits"]["cpu"] == "4000m"  # set-threads: 4
    assert {"key": "nvidia.com/gpu", "operator": "Equal", "value": "present",
            "effect": "NoSchedule"} in pod["tolerations"]
    claim, mount = PROFILE["kubernetes-persistent-volumes"][0].split(":")
    assert {"name": claim, "persistentVolumeClaim": {"claimName": claim}} in pod["volumes"]
    assert {"name": claim, "mountPath": mount} in container["volumeMounts"]
    assert PROFILE["default-storage-prefix"].startswith(mount + "/")  # the files live on the claim


def test_the_image_is_built_from_the_gpu_env():
    docker = (REPO / "envs" / "Dockerfile").read_text()
    assert "FROM nvidia/cuda:" in docker
    assert "-f envs/gpu.yaml" in docker  # the one declaration of the GPU env
    assert "pip install --no-cache-dir --no-deps ." in docker  # db3d itself
