"""The README's run command on the default (synthetic) track, shrunk: every rule of the default
graph runs once for real — toy prior training, synthetic subject, class priors, DreamBooth,
stages 1-3, the naive and DreamFusion baselines, evaluation with ground-truth metrics, metrics table, report — in
a scratch folder holding links to the repository's Snakefile, rules and config.

The shrinking overlay (tests/data/e2e_small.yaml) changes only counts and sizes, never the graph.
Then the toy prior's checkpoint is made newer (as `dvc pull models/toy.dvc` leaves it) and the
plan must be empty: a pulled prior neither trains again nor re-triggers anything downstream.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from db3d.config import load_config

REPO = Path(__file__).resolve().parent.parent
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


def _snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "snakemake", *args], cwd=workdir, env=env,
                          capture_output=True, text=True)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    for name in ("Snakefile", "rules", "config", "ablations", "profiles"):
        (work / name).symlink_to(REPO / name)
    overlay = REPO / "tests" / "data" / "e2e_small.yaml"
    res = _snakemake(work, "reports/main.pdf", "--cores", "2", "--configfile", str(overlay))
    logs = "\n".join(f"== {p}\n{p.read_text()[-1500:]}" for p in sorted((work / "logs").rglob("*.log"))
                     if "rror" in p.read_text()) if (work / "logs").is_dir() else ""
    assert res.returncode == 0, res.stderr[-4000:] + logs
    return work, overlay


def test_every_rule_ran_and_the_report_exists(default_run):
    work, _ = default_run
    assert (work / "reports" / "main.pdf").stat().st_size > 10_000
    for name in ("model.safetensors", "samples.png", "train_log.json"):
        assert (work / "models" / "toy" / name).is_file(), name
    assert (work / "data" / "synthetic" / "mug_red" / "object.json").is_file()


def test_ground_truth_metrics_for_every_variant(default_run):
    work, _ = default_run
    df = pd.read_csv(work / "results" / "metrics.tsv", sep="\t")
    gt = df[df["model"] == "ground truth"]
    variants = set(load_config([REPO / "config/config.yaml", default_run[1]])["variants"])
    assert "dreamfusion" in variants  # the base-model reference runs in the default study
    assert set(gt["variant"]) == variants
    for metric in ("psnr", "psnr_back", "ssim", "silhouette_iou", "chamfer", "janus_gt"):
        rows = gt[gt["metric"] == metric]
        assert len(rows) == len(variants), metric
    assert gt[gt["metric"] == "psnr"]["value"].notna().all()


def test_a_pulled_prior_triggers_nothing(default_run):
    work, overlay = default_run
    ckpt = work / "models" / "toy" / "model.safetensors"
    os.utime(ckpt)  # newer than everything downstream, as a `dvc pull` leaves it
    res = _snakemake(work, "reports/main.pdf", "-n", "--configfile", str(overlay))
    assert res.returncode == 0, res.stderr
    assert "Nothing to be done" in res.stdout + res.stderr, res.stdout[-3000:]
