"""scripts/device_packing.sh's table (db3d.bench.packing) and the script's CPU run of its plumbing
(DB3D_E2E_LOCAL=1 + tests/data/device_e2e_cpu.yaml: the tiny backend on the CPU, where no job
leases a GPU; the walls say nothing, the run checks the graph, the configs and the tables)."""
from __future__ import annotations

import csv
import os
import subprocess
from pathlib import Path

import pytest

from db3d.bench import packing

REPO = Path(__file__).resolve().parent.parent
HEAD = "slots\tcalls\tgraph_wall_s\tjobs\tjob_wall_s\tpeak_job_gib\tpeak_device_gib\tcomplete\n"


def test_resumed_calls_are_summed_and_speed_up_is_over_complete_runs(tmp_path):
    a = tmp_path / "call1.tsv"
    a.write_text(HEAD + "1\t1\t570\t15\t900.0\t18.41\t30.2\t0\n")        # stopped at the limit
    b = tmp_path / "call2.tsv"
    b.write_text(HEAD + "1\t1\t230\t23\t1300.0\t18.40\t31.0\t1\n"       # resumed: finished
                        "2\t1\t500\t23\t1500.0\t18.41\tn/a\t1\n"
                        "4\t1\t300\t10\t600.0\t8.0\t40.0\t0\n")
    runs = packing.read_runs([a, b])
    assert runs[1]["graph_wall_s"] == 800 and runs[1]["calls"] == 2 and runs[1]["jobs"] == 23
    assert runs[1]["complete"] == 1 and runs[1]["peak_device_gib"] == 31.0
    md = packing.markdown(runs, "t")
    rows = {line.split(" | ")[0].strip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert "| 1.60x |" in rows["2"]  # 800 s / 500 s
    assert "| NO |" in rows["4"] and "x |" not in rows["4"]  # an unfinished run has no speed-up
    assert packing.main([str(tmp_path / "none.tsv"), "--out", str(tmp_path / "p")]) == 2


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_script_runs_the_graph_on_the_cpu(tmp_path):
    env = dict(os.environ, DB3D_E2E_LOCAL="1", DB3D_PACK_CONFIGS="tests/data/device_e2e_cpu.yaml",
               DB3D_E2E_SOURCE="/work/shared/datasets/dreambooth", OUT=str(tmp_path / "out"),
               DB3D_PACK_WORK=str(tmp_path / "work"), DB3D_PACK_SLOTS="default", PYTHONPATH=str(REPO))
    if not Path(env["DB3D_E2E_SOURCE"], "dog").is_dir():
        pytest.skip("no google/dreambooth photos of the dog subject on this machine")
    res = subprocess.run(["bash", "scripts/device_packing.sh"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=1100)
    assert res.returncode == 0, res.stdout[-3000:]
    out = tmp_path / "out"
    (run,) = csv.DictReader(open(out / "packing.tsv"), delimiter="\t")
    # 4 prompts: dataset, class priors, DreamBooth, then 5 jobs a prompt
    assert (run["slots"], run["complete"], run["jobs"]) == ("2", "1", "23")
    assert "| 2 | yes | 1 | 23 |" in (out / "packing.md").read_text()
    assert (out / "packing_slots2.md").is_file() and (out / "logs_slots2.tgz").is_file()
    again = subprocess.run(["bash", "scripts/device_packing.sh"], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "device_slots 2: done in an earlier call" in again.stdout


def test_cost_table_counts_the_paper_study_and_says_what_is_measured(tmp_path, monkeypatch):
    from db3d.bench import cost
    from db3d.config import load_config

    monkeypatch.chdir(REPO)
    counts = cost.study_counts(load_config(["config/config.yaml", "config/paper.yaml"]))
    # 30 subjects x 4 prompts x 3 seeds; 4 variants evaluated per cell; 15 classes
    assert (counts["cells"], counts["evaluate"], counts["dreambooth"], counts["class_priors"]) == (360, 1440, 90, 15)
    walls = cost.job_walls(REPO / "reports/bench/e2e_paper.tsv", REPO / "reports/bench/sd.tsv")
    assert walls["stage3"][1].startswith("measured") and walls["naive"][1].startswith("projection")
    total = sum(counts[k] * walls[k][0] for k in counts if k != "cells")
    assert "pending" in cost.markdown(counts, walls, *cost.packing_speedup(tmp_path / "none.tsv"))
    pk = tmp_path / "packing.tsv"
    pk.write_text(HEAD + "1\t1\t1000\t23\t0\t\t\t1\n2\t1\t625\t23\t0\t\t\t1\n")
    speed, src = cost.packing_speedup(pk)
    assert speed == 1.6 and src.startswith("measured")
    md = cost.markdown(counts, walls, speed, src)
    assert f"| 1 host x 8 GPUs (lease + device_slots) | {total / 8 / 1.6 / 3600:.1f} h |" in md
    assert f"| Slurm cluster, 8 GPUs | {total / 8 / 3600:.1f} h |" in md
