"""The jobs' own timing line (db3d.jobperf), the per-rule table read back from logs
(db3d.bench.joblog) and the loud torch-sampler fallback on a CUDA device (db3d.nerf.render)."""
from __future__ import annotations

import importlib
import json
import logging

import pytest
import torch

from db3d import jobperf
from db3d.bench import joblog
from db3d.cli import main as cli_main

render_mod = importlib.import_module("db3d.nerf.render")  # db3d.nerf.render is also a function's name


def _loop(marks: list[tuple[float, int]], total: int) -> jobperf.Loop:
    lp = jobperf.Loop("stage1", total)
    lp.marks = list(marks)
    return lp


def test_steady_rate_leaves_out_the_first_stretch():
    # 100 iterations marked every 25: the first 25 took 10 s (graph capture), then 2 s per 25
    lp = _loop([(0.0, 0), (10.0, 25), (12.0, 50), (14.0, 75), (16.0, 100)], 100)
    s = lp.summary()
    assert s["iters"] == 100 and s["loop_s"] == pytest.approx(16.0)
    assert s["warmup_s"] == pytest.approx(10.0)
    assert s["steady_it_s"] == pytest.approx(75 / 6.0)


def test_the_warm_up_covers_a_tenth_of_a_loop_marked_every_step():
    # DreamBooth marks every step: its first 10 of 100 steps at 1 s, the other 90 at 0.1 s
    marks = [(float(i), i) for i in range(11)] + [(10.0 + 0.1 * (i - 10), i) for i in range(11, 101)]
    s = _loop(marks, 100).summary()
    assert s["warmup_s"] == pytest.approx(10.0)
    assert s["steady_it_s"] == pytest.approx(10.0)


def test_a_resumed_loop_counts_only_its_own_iterations():
    lp = _loop([(0.0, 50), (1.0, 60), (3.0, 80), (5.0, 100)], 100)
    s = lp.summary()
    assert s["iters"] == 50
    assert s["warmup_s"] == pytest.approx(1.0) and s["steady_it_s"] == pytest.approx(40 / 4.0)


def test_a_loop_with_one_mark_has_no_rate():
    s = _loop([(0.0, 0)], 10).summary()
    assert s["iters"] == 0 and s["steady_it_s"] is None


def _job_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage().split(jobperf.JOB_LINE_TAG, 1)[1]) for r in caplog.records
            if jobperf.JOB_LINE_TAG in r.getMessage()]


def test_every_cli_job_ends_its_log_with_one_job_line(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(jobperf, "_JOB", jobperf._Job())
    with caplog.at_level(logging.INFO):
        assert cli_main(["write-json", "--json", '{"a": 1}', "--out", str(tmp_path / "a.json")]) == 0
    (line,) = _job_lines(caplog)
    assert line["command"] == "write-json" and line["status"] == "ok"
    assert line["wall_s"] >= 0 and line["loop"] is None and line["started"] > 0


def test_a_failed_job_still_logs_its_line(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(jobperf, "_JOB", jobperf._Job())
    caplog.clear()
    with caplog.at_level(logging.INFO):
        code = cli_main(["nerf", "--stage", "stage1", "--config", str(tmp_path / "missing.yaml"),
                         "--prompt-id", "x", "--subject-dir", str(tmp_path), "--out-dir", str(tmp_path / "o")])
    assert code == 2
    (line,) = _job_lines(caplog)
    assert line["status"] == "error"


def _write_log(path, *, started, job="nerf stage1", samplers=("nerfacc@cuda",), status="ok", extra=""):
    d = {"command": job.split()[0], "job": job, "status": status, "started": started, "wall_s": 30.0,
         "startup_s": 12.0, "loop": {"name": "stage1", "iters": 100, "loop_s": 15.0, "warmup_s": 5.0,
                                     "steady_it_s": 7.5},
         "peak_reserved_gib": 5.2, "peak_alloc_gib": 4.6, "samplers": list(samplers)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{extra}2026-12-01 INFO db3d: {jobperf.JOB_LINE_TAG}{json.dumps(d)}\n")


def test_the_table_reads_each_job_line_in_start_order(tmp_path):
    logs = tmp_path / "logs"
    _write_log(logs / "seed~0" / "dog" / "plain" / "stage3.log", started=300.0, job="nerf stage3")
    _write_log(logs / "seed~0" / "dog" / "plain" / "stage1.log", started=100.0)
    rows = joblog.read_logs(logs)
    assert [r.job for r in rows] == ["nerf stage1", "nerf stage3"]
    r = rows[0]
    assert r.wall_s == 30.0 and r.startup_s == 12.0 and r.steady_it_s == 7.5
    assert r.after_loop_s == pytest.approx(3.0) and r.peak_reserved_gib == 5.2
    assert joblog.problems(rows) == []
    out = tmp_path / "table"
    joblog.write_table(rows, out, "t", graph_wall_s=75.0)
    md = (tmp_path / "table.md").read_text()
    assert "| nerf stage1 | `seed~0/dog/plain/stage1.log` | 30.0 | 12.0 | stage1 | 100 | 5.0 | 7.50 | 133.3 |" in md
    assert "sum of job walls 60.0 s" in md and "75.0 s" in md
    assert (tmp_path / "table.tsv").read_text().count("\n") == 3


def test_a_gpu_job_on_the_torch_sampler_fails_the_check(tmp_path):
    logs = tmp_path / "logs"
    _write_log(logs / "stage1.log", started=1.0, samplers=("torch@cuda",))
    _write_log(logs / "naive.log", started=2.0, samplers=("nerfacc@cuda",),
               extra=f"WARNING db3d.nerf.render: {joblog.FALLBACK_WARNING} (their build failed)\n")
    _write_log(logs / "stage3.log", started=3.0, samplers=("torch@cpu",))
    (logs / "dead.log").write_text("Traceback ...\n")
    bad = joblog.problems(joblog.read_logs(logs))
    assert [b.split(":")[0] for b in bad] == ["stage1.log", "naive.log", "dead.log"]
    assert joblog.main([str(logs), "--out", str(tmp_path / "t"), "--fail-on-torch-sampler"]) == 1
    assert joblog.main([str(logs), "--out", str(tmp_path / "t")]) == 0


@pytest.fixture
def no_nerfacc(monkeypatch):
    monkeypatch.setattr(render_mod, "nerfacc_cuda_problem", lambda: "their build failed (OSError: no g++)")
    render_mod._warn_torch_fallback.cache_clear()
    yield
    render_mod._warn_torch_fallback.cache_clear()


def test_auto_on_cuda_without_nerfacc_warns_once_naming_cause_and_fix(no_nerfacc, caplog):
    with caplog.at_level(logging.WARNING, logger="db3d.nerf.render"):
        assert render_mod._choose_sampler("auto", torch.device("cuda")) == "torch"
        assert render_mod._choose_sampler("auto", torch.device("cuda")) == "torch"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert "OSError: no g++" in warnings[0] and "envs/gpu.yaml" in warnings[0] and "gxx" in warnings[0]
    assert joblog.FALLBACK_WARNING in warnings[0]  # what the device check greps for


def test_auto_on_cpu_uses_the_torch_sampler_silently(no_nerfacc, caplog):
    with caplog.at_level(logging.WARNING, logger="db3d.nerf.render"):
        assert render_mod._choose_sampler("auto", torch.device("cpu")) == "torch"
    assert not [r for r in caplog.records if r.levelno == logging.WARNING]


def test_renders_report_their_sampler_to_the_job_line(monkeypatch):
    from db3d.nerf import Background, RadianceField, orbit_cameras, render

    monkeypatch.setattr(jobperf, "_JOB", jobperf._Job())
    field = RadianceField(1.0, grid_resolution=8, hidden_dim=8)
    render(field, Background(), orbit_cameras(1, 3.0, 15.0, 40.0), 4, 4, num_samples=4, train=False,
           normals=False)
    assert jobperf.summary("nerf", "ok")["samplers"] == ["torch@cpu"]
