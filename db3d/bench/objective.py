"""Measure what the NeRF objective's terms do: one NeRF stage from a finished run's inputs, under
config overrides, with its gradient shares, coverage and (stage 3) distance to the pseudo views.

    python -m db3d.bench.objective --run runs/seed~0/mug_red/plain --stage stage3 \\
        --set stage3.recon_weight=0 --set stage3.recon_weight=1 ...

Each `--set` group (`--case 'a=1 b=2'`) is one case; every case runs the stage from scratch into a
temporary folder (nothing under runs/ is written) and prints one line: the mean share of each term
over training (and over the last quarter), the final coverage (eval orbit, opacity > 0.5), for
stage 3 the MSE of the final NeRF's renders to the pseudo views at their cameras, and on a synthetic
subject the ground truth (silhouette IoU, PSNR, back-view PSNR, Janus (GT)). `--json` writes
the lines as a table. These numbers chose the defaults in config/config.yaml (docs/losses.md).
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

from ..config import load_config, parse_overrides
from ..errors import report_errors


def share_summary(steps: list[dict]) -> dict[str, dict[str, float]]:
    """Mean share per term over all share records, and over the last quarter of the records."""
    recs = [s["grad"]["share"] for s in steps if "grad" in s]
    if not recs:
        return {}
    tail = recs[len(recs) - max(1, len(recs) // 4):]
    names = sorted({k for r in recs for k in r})
    return {n: {"mean": statistics.fmean(r.get(n, 0.0) for r in recs),
                "last_quarter": statistics.fmean(r.get(n, 0.0) for r in tail)} for n in names}


def pseudo_view_mse(cfg: dict, field, background, views: dict) -> float:
    """MSE of the NeRF's albedo renders at the pseudo views' cameras to the pseudo views (resized
    to nerf.render_resolution, as stage 3 compares them)."""
    import torch
    import torch.nn.functional as F

    from ..nerf import render

    res = cfg["nerf"]["render_resolution"]
    with torch.no_grad():
        out = render(field, background, views["cameras"], res, res, shading="albedo", ambient=1.0,
                     num_samples=cfg["nerf"]["num_samples"], train=False, normals=False).image
        target = F.interpolate(views["images"].float(), size=res, mode="bilinear", antialias=True,
                               align_corners=False)
    return float(F.mse_loss(out, target))


def run_case(cfg: dict, run: Path, stage: str, subject_dir: Path, prompt_id: str) -> dict:
    from .. import stages
    from ..eval.coverage import nerf_coverage
    from ..io import read_json, torch_load
    from ..nerf import load_nerf

    from .. import variants as V

    # the checkpoint guiding `stage` (db3d.variants: "<upstream stage>:<file>"), in the run's folders
    up, name = V.STAGES[stage].guide.split(":")
    ckpt = (run.parent if V.STAGES[up].scope == "subject" else run) / V.STAGES[up].dir / name
    views = run / V.STAGES["stage2"].dir / V.PSEUDO_VIEWS
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        stages.fit_nerf(cfg, stage, ckpt, prompt_id, subject_dir, out,
                        pseudo_views=views if stage == "stage3" else None)
        losses = read_json(out / V.LOSSES)
        field, background, meta = load_nerf(out / V.NERF)
        row = {"shares": share_summary(losses["steps"]),
               "coverage": nerf_coverage(cfg, field, background, meta, "cpu"),
               "iters_per_s": losses["perf"]["iters_per_s"]}
        if stage == "stage3":
            row["pseudo_view_mse"] = pseudo_view_mse(cfg, field, background, torch_load(views))
        row.update(ground_truth_summary(cfg, field, background, meta, subject_dir))
    return row


GT_COLUMNS = ("silhouette_iou", "psnr", "psnr_back", "janus_gt")


def ground_truth_summary(cfg: dict, field, background, meta: dict, subject_dir: Path) -> dict:
    """The ground-truth numbers the defaults are tuned against (synthetic subjects only: {} else)."""
    from ..eval.groundtruth import ground_truth_metrics
    from ..synth.world import load_object

    obj = load_object(subject_dir)
    if obj is None:
        return {}
    rows, _ = ground_truth_metrics(cfg, field, background, meta, obj, "cpu")
    return {name: value for name, value, _ in rows if name in GT_COLUMNS}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m db3d.bench.objective", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="runs/<setting>/<subject>/<prompt_id> of a finished run")
    p.add_argument("--subject-dir", required=True, help="data/synthetic/<subject> or data/subjects/<subject>")
    p.add_argument("--stage", choices=("stage1", "stage3", "naive"), required=True)
    p.add_argument("--config", action="append", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--case", action="append", default=[], help="space-separated KEY=VALUE overrides of one case")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    run = Path(args.run)
    rows = []
    for case in args.case or [""]:
        cfg = load_config(args.config, parse_overrides(shlex.split(case)))
        cfg["seed"] = args.seed
        row = {"case": case, **run_case(cfg, run, args.stage, Path(args.subject_dir), run.name)}
        rows.append(row)
        shares = ", ".join(f"{k} {v['mean']:.3f}/{v['last_quarter']:.3f}" for k, v in row["shares"].items())
        extra = f" pseudo-view MSE {row['pseudo_view_mse']:.4f}" if "pseudo_view_mse" in row else ""
        extra += "".join(f"; {k} {row[k]:.3f}" for k in GT_COLUMNS if k in row)
        print(f"[{case or 'config'}] shares (mean/last quarter): {shares}; coverage {row['coverage']:.3f};"
              f"{extra} ({row['iters_per_s']:.1f} it/s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(report_errors(lambda: main(sys.argv[1:])))
