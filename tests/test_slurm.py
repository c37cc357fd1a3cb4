"""profiles/slurm against a real Slurm: the default (synthetic) track at its smallest size
(tests/data/e2e_small.yaml, as tests/test_e2e.py) through snakemake-executor-plugin-slurm, real
`sbatch`, a single-node slurmctld + slurmd on localhost (tests/slurm_cluster.py), to the report.

The profile is used as shipped; the command line adds only what this cluster lacks or what makes
it quick: no accounting database (so no account to check and `squeue` for job status) and a 2 s
first status check instead of 40 s. Checked: every job of the graph was a Slurm job that
completed (`sacct -c`), on the partition the profile names, and the rules that run a model were
given a GPU by Slurm (`TresPerJob=gres:gpu:1`) even though this run computes on the CPU.
"""
from __future__ import annotations

import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from slurm_cluster import LocalSlurm, unavailable

REPO = Path(__file__).resolve().parent.parent
OVERLAY = REPO / "tests" / "data" / "e2e_small.yaml"
# this cluster has no slurmdbd (sacct reads only the completion record) and is idle: poll soon
CLUSTER_ARGS = ("--slurm-no-account", "--slurm-status-command", "squeue",
                "--slurm-init-seconds-before-status-checks", "2")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900),
              pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))]


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=840)


@pytest.fixture(scope="module")
def cluster():
    with LocalSlurm() as c:
        yield c


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("slurm")
    for name in ("Snakefile", "rules", "config", "ablations", "profiles"):
        (work / name).symlink_to(REPO / name)
    plan = _snakemake(work, "reports/main.pdf", "-n", "--quiet", "rules", "--configfile", str(OVERLAY))
    assert plan.returncode == 0, plan.stderr
    planned = {line.split()[0]: int(line.split()[1]) for line in (plan.stdout + plan.stderr).splitlines()
               if len(line.split()) == 2 and line.split()[1].isdigit() and line.split()[0] != "total"}
    res = _snakemake(work, "reports/main.pdf", "--profile", "profiles/slurm", "--configfile", str(OVERLAY),
                     *CLUSTER_ARGS)
    logs = "\n".join(f"== {p}\n{p.read_text()[-1500:]}" for p in sorted(work.rglob("*.log"))
                     if "rror" in p.read_text(errors="replace"))
    assert res.returncode == 0, res.stderr[-4000:] + logs
    return work, planned


def test_the_report_is_built_through_sbatch(slurm_run, cluster):
    work, planned = slurm_run
    assert (work / "reports" / "main.pdf").stat().st_size > 10_000
    jobs = cluster.jobs()
    # the plugin names each Slurm job by the run and comments it with the rule
    ran: dict[str, int] = {}
    for j in jobs:
        rule = j["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        ran[rule] = ran.get(rule, 0) + 1
    assert ran == planned, (ran, planned)
    assert {j["JobState"] for j in jobs} == {"COMPLETED"}
    assert {j["JobId"] for j in jobs} <= cluster.completed_job_ids()  # sacct's completion record


def test_partitions_and_gpus_are_the_profiles(slurm_run, cluster):
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    gpu_rules = {r for r, res in profile["set-resources"].items() if res.get("gpu")}
    seen_gpu = set()
    for j in cluster.jobs():
        rule = j["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        if rule in gpu_rules:
            seen_gpu.add(rule)
            assert j["Partition"] == "gpu", j
            assert j.get("TresPerJob") == "gres:gpu:1", j
        else:
            assert j["Partition"] == profile["default-resources"]["slurm_partition"], j
            assert "gpu" not in j.get("TresPerJob", ""), j
    assert {"toy_prior", "dreambooth", "nerf_stage1", "evaluate"} <= seen_gpu


def test_gpu_jobs_run_side_by_side(slurm_run, cluster):
    """profiles/default's local `gpu` cap (1) must not reach the cluster: stage 1 and the naive
    baseline both wait only for DreamBooth, so they are submitted together and run at once."""
    spans = {}
    for j in cluster.jobs():
        rule = j["Comment"].removeprefix("rule_").split("_wildcards_")[0]
        spans[rule] = (datetime.fromisoformat(j["StartTime"]), datetime.fromisoformat(j["EndTime"]))
    (a0, a1), (b0, b1) = spans["nerf_stage1"], spans["nerf_baseline"]
    assert a0 < b1 and b0 < a1, spans


def test_a_partition_slurm_does_not_know_is_named(cluster, tmp_path):
    """A profile naming a partition the cluster lacks fails at the first submission, and the
    error (sbatch's, passed on by the plugin) names the partition."""
    for name in ("Snakefile", "rules", "config", "ablations", "profiles"):
        (tmp_path / name).symlink_to(REPO / name)
    res = _snakemake(tmp_path, "runs/seed~0/config.json", "--profile", "profiles/slurm",
                     "--configfile", str(OVERLAY), "--default-resources", "slurm_partition=nosuch",
                     *CLUSTER_ARGS)
    assert res.returncode != 0
    assert "invalid partition specified: nosuch" in res.stdout + res.stderr, res.stderr[-3000:]
