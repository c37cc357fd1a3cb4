"""Each profile planned as Snakemake composes it (profiles/default is always loaded beside
--profile) and the resources a GPU job and a CPU job get (issue 17 item 3). `device=cuda` makes
the rules ask for a GPU as they do on a GPU host (the plan needs none); e2e_small keeps it short.
A profiles/default that set a resource, a default or a global GPU cap would change these plans.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import snakemake.cli

REPO = Path(__file__).resolve().parent.parent
OVERLAY = REPO / "tests" / "data" / "e2e_small.yaml"
pytestmark = [pytest.mark.timeout(900)]


def _plan(work: Path, *profile: str) -> dict[str, dict[str, str]]:
    """rule -> the resources of its first planned job, from the dry run's job listing."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    res = subprocess.run([sys.executable, "-m", "snakemake", "-n", *profile, "--config", "device=cuda",
                          "--configfile", str(OVERLAY)], cwd=work, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    plan: dict[str, dict[str, str]] = {}
    rule = None
    for line in res.stdout.splitlines():
        if line.startswith(("rule ", "localrule ")) and line.endswith(":"):
            rule = line.split()[1][:-1]
        elif rule and line.strip().startswith("resources:"):
            items = line.split(":", 1)[1].split(", ")
            plan.setdefault(rule, dict(kv.strip().split("=", 1) for kv in items))
            rule = None
    return plan


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    work = tmp_path_factory.mktemp("profiles")
    for name in ("Snakefile", "rules", "config", "ablations", "profiles", "envs"):
        (work / name).symlink_to(REPO / name)
    return work


def test_default_profile_gpu_slots(work):
    plan = _plan(work)
    for rule in ("nerf_stage1", "pseudo_views", "nerf_stage3", "nerf_baseline", "evaluate"):
        assert plan[rule]["gpu_slots"] == "1", (rule, plan[rule])  # light: one slot of a GPU
    for rule in ("dreambooth", "dreambooth_multiview", "class_priors"):
        assert plan[rule]["gpu_slots"] == "2", (rule, plan[rule])  # device_slots: a whole GPU
    assert "gpu" not in plan["nerf_stage1"]  # locally the slots are the cap, not `gpu`


def test_slurm_profile_gpu_job(work):
    plan = _plan(work, "--profile", "profiles/slurm")
    for rule in ("nerf_stage1", "dreambooth"):
        r = plan[rule]
        assert (r["gpu"], r["slurm_partition"], r["runtime"], r["mem_mb"], r["cpus_per_task"]) == \
            ("1", "gpu", "120", "32000", "4"), (rule, r)
        assert "gres" not in r  # the plugin refuses gpu and gres together
    r = plan["report"]
    assert (r["slurm_partition"], r["mem_mb"], r["runtime"]) == ("cpu", "8000", "20") and "gpu" not in r


def test_kubernetes_profile_gpu_job(work):
    # the storage prefix is the work folder, so the workflow's own input files are "in storage"
    plan = _plan(work, "--profile", "profiles/kubernetes", "--default-storage-prefix", str(work))
    for rule in ("nerf_stage1", "dreambooth"):
        r = plan[rule]
        assert (r["gpu"], r["gpu_manufacturer"], r["scale"], r["mem_mb"]) == ("1", "nvidia", "0", "32000"), (rule, r)
    assert plan["report"]["mem_mb"] == "8000" and "gpu" not in plan["report"]


@pytest.mark.parametrize("profile,jobs", [("slurm", 50), ("kubernetes", 20)])
def test_cluster_limits_survive_profiles_default(work, profile, jobs, monkeypatch):
    # Snakemake's own profile loading: --profile plus the workflow profile profiles/default
    monkeypatch.chdir(work)
    _, args = snakemake.cli.parse_args(["--profile", f"profiles/{profile}", "-n"])
    assert args.jobs == jobs
    # the host-GPU caps count the jobs of one host only: never a cap on the cluster's GPU jobs
    assert args.set_resource_scopes == {"gpu": "local", "gpu_slots": "local"}
    assert set(args.resources) <= {"gpu"}
