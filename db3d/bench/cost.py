"""The full study's cost from measured per-job walls (issue 17 item 6; docs/performance.md).

    python -m db3d.bench.cost [--e2e reports/bench/e2e_paper.tsv] [--bench reports/bench/sd.tsv]
                              [--packing reports/bench/packing.tsv] [--out reports/bench/cost]

The study is the one the configs declare (config/config.yaml + config/paper.yaml: its subjects,
prompts, seeds and variants), counted job by job as the workflow plans it: class priors per class,
DreamBooth per subject and seed, then per subject x prompt x seed stage 1, pseudo views, multi-view
DreamBooth, stage 3, the naive and latent-NeRF baselines and one evaluation per variant
(single_stage reuses stage 1's NeRF). Each job's wall comes from, in this order:
  measured    reports/bench/e2e_paper.tsv: the job's own log line at paper counts on the lent H200
              through Snakemake (scripts/device_e2e.sh), one job on the GPU at a time;
  projection  a stated stand-in where that run has no row: the naive and latent-NeRF baselines as
              stage 1's wall (the same SDS loop and iterations; e2e_small.md: naive 19.39 it/s vs
              stage 1 19.29), the evaluation from reports/bench/sd.tsv's eval rows (process start +
              model build + one run: a bench, not a job).
Walls on N GPUs divide the GPU time by N (the study has 360 independent cells, far more than 8
GPUs; the critical path of one cell is ~18 min); on one host the measured packing speed-up of
scripts/device_packing.sh (reports/bench/packing.tsv: device_slots default vs 1) divides it again.
A Slurm cluster gives each job its own GPU (no packing); its queue wait is not measured and not
counted.
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from ..io import atomic_path

# e2e_paper.tsv's job names (db3d.jobperf) of the jobs a study runs
E2E_JOBS = {"class_priors": "class-priors", "dreambooth": "dreambooth", "stage1": "nerf stage1",
            "pseudo_views": "pseudo-views", "multiview": "dreambooth multiview", "stage3": "nerf stage3",
            "naive": "nerf naive", "latent_nerf": "nerf latent_nerf"}
EVAL_BENCH_ROWS = ("process_start", "eval_models_build", "eval_run")  # reports/bench/sd.tsv, base variant


def study_counts(cfg: dict) -> dict[str, int]:
    """How many jobs of each kind the study's graph holds (main cells; no ablation tables)."""
    from .. import workflow as wf

    subjects = wf.subjects(cfg)
    seeds = len(cfg["seeds"])
    cells = sum(len(wf.prompt_ids(cfg, s)) for s in subjects) * seeds
    variants = cfg["variants"]
    n = {"class_priors": len({wf.class_slug(cfg, s) for s in subjects}), "dreambooth": len(subjects) * seeds,
         "evaluate": cells * len(variants)}
    if "dreambooth3d" in variants:
        n.update(pseudo_views=cells, multiview=cells, stage3=cells)
    if {"dreambooth3d", "single_stage"} & set(variants):
        n["stage1"] = cells
    for v in ("naive", "latent_nerf"):
        if v in variants:
            n[v] = cells
    n["cells"] = cells
    return n


def job_walls(e2e: Path, bench: Path) -> dict[str, tuple[float, str]]:
    """job kind -> (wall s, where it comes from)."""
    rows = {r["job"]: r for r in csv.DictReader(open(e2e), delimiter="\t") if r["status"] == "ok"}
    out: dict[str, tuple[float, str]] = {}
    for kind, job in E2E_JOBS.items():
        if job in rows:
            out[kind] = (float(rows[job]["wall_s"]), f"measured ({e2e.name}: {job})")
    for kind in ("naive", "latent_nerf"):
        if kind not in out and "stage1" in out:
            out[kind] = (out["stage1"][0], "projection: stage 1's measured wall (not run at paper counts)")
    b = {r["row"]: float(r["ms"]) for r in csv.DictReader(open(bench), delimiter="\t")
         if r["variant"] == "base" and r["status"] == "ok" and r["row"] in EVAL_BENCH_ROWS}
    if len(b) == len(EVAL_BENCH_ROWS):
        out["evaluate"] = (sum(b.values()) / 1000, f"projection: {bench.name} {' + '.join(EVAL_BENCH_ROWS)} (a bench)")
    return out


def packing_speedup(path: Path | None) -> tuple[float | None, str]:
    """The measured graph speed-up of the default device_slots over 1 (None when not measured)."""
    if path is None or not path.is_file():
        return None, "not measured yet (scripts/device_packing.sh)"
    runs = {int(r["slots"]): r for r in csv.DictReader(open(path), delimiter="\t") if r["complete"] == "1"}
    if 1 not in runs or len(runs) < 2:
        return None, f"{path.name} lacks a complete run at device_slots 1 and another"
    best = max(s for s in runs if s != 1)
    return float(runs[1]["graph_wall_s"]) / float(runs[best]["graph_wall_s"]), \
        f"measured ({path.name}: device_slots {best} vs 1, through Snakemake)"


def hours(s: float) -> str:
    return f"{s / 3600:.1f} h"


def markdown(counts: dict[str, int], walls: dict[str, tuple[float, str]], speedup: float | None,
             speedup_src: str) -> str:
    out = ["# The full study's cost on H200s", "",
           f"{counts['cells']} cells (subject x prompt x seed); job walls at paper counts, one job per GPU.", "",
           "| job | jobs | wall s each | GPU-hours | source |", "|---|---|---|---|---|"]
    total, missing = 0.0, []
    for kind, n in counts.items():
        if kind == "cells":
            continue
        if kind not in walls:
            missing.append(kind)
            out.append(f"| {kind} | {n} | | | NO WALL: not measured, no projection |")
            continue
        w, src = walls[kind]
        total += n * w
        out.append(f"| {kind} | {n} | {w:.1f} | {n * w / 3600:.1f} | {src} |")
    out.append(f"| **all** | {sum(v for k, v in counts.items() if k != 'cells')} | | **{total / 3600:.1f}** | |")
    pk = (lambda s: hours(s / speedup)) if speedup else (lambda s: "pending (packing not measured)")
    out += ["", "| where | wall time | how |", "|---|---|---|",
            f"| 1 GPU, one job at a time | {hours(total)} | the GPU-hours |",
            f"| 1 GPU, device_slots jobs per GPU | {pk(total)} | / packing speed-up |",
            f"| 1 host x 8 GPUs (lease + device_slots) | {pk(total / 8)} | / 8 / packing speed-up |",
            f"| Slurm cluster, 8 GPUs | {hours(total / 8)} | / 8; one job per GPU; queue wait not counted |",
            "", f"- packing speed-up: {f'{speedup:.2f}x, ' if speedup else ''}{speedup_src}"]
    if missing:
        out.append(f"- NOT COUNTED (no wall): {', '.join(missing)}")
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m db3d.bench.cost", description=__doc__.split("\n\n")[0])
    p.add_argument("--e2e", type=Path, default=Path("reports/bench/e2e_paper.tsv"))
    p.add_argument("--bench", type=Path, default=Path("reports/bench/sd.tsv"))
    p.add_argument("--packing", type=Path, default=Path("reports/bench/packing.tsv"))
    p.add_argument("--configs", nargs="+", default=["config/config.yaml", "config/paper.yaml"])
    p.add_argument("--out", type=Path, default=None, help="<out>.md is written (else stdout only)")
    args = p.parse_args(argv)
    for f in (args.e2e, args.bench):
        if not f.is_file():
            print(f"db3d: error: no table {f}; run scripts/device_e2e.sh / the bench first", file=sys.stderr)
            return 2
    from ..config import load_config

    counts = study_counts(load_config(args.configs))
    text = markdown(counts, job_walls(args.e2e, args.bench), *packing_speedup(args.packing))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.out.with_suffix(".md")) as tmp:
            tmp.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
