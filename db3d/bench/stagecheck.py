"""A NeRF stage run as its job runs it, with a wall-clock stamp per iteration.

The bench times `NerfFit.iteration` in blocks; this runs the whole `stages.fit_nerf` job (backend
build, `compile_unet` as the config says, the loop with its resume saves, the turntable) and stamps
every iteration, so a real stage run says (1) its steady iteration rate, (2) what the first
iterations cost (compilation, CUDA-graph recording), (3) that its losses stay finite, and (4), next
to a run of the same config and seed without compilation, that the losses are comparable (same
timesteps drawn, same cameras and shading; values differ only by rounding, then by the drift of an
optimisation fed slightly different numbers).

    python -m db3d.bench.stagecheck --config config/paper.yaml --set models.sd=random \\
        --set stage1.iters=400 --out off.json
    python -m db3d.bench.stagecheck ... --set compile_unet=true --out on.json
    python -m db3d.bench.stagecheck --compare off.json on.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from ..variants import LOSSES

GRID_WARMUP = 256  # fit_nerf's occupancy grid is refreshed in full every 16 steps until this step
FIRST = 5          # the iterations reported one by one (compilation happens in the first ones)


def run_stage(cfg: dict, stage: str = "stage1", *, subject: str = "dog", prompt_id: str = "plain",
              out_dir: Path | None = None) -> dict:
    """Run `stages.fit_nerf` (stage1 / naive: no checkpoint needed with random weights) and return
    its timing and loss summary."""
    from .. import stages

    stamps: list[float] = []
    marks: dict[str, float] = {}
    orig_iter, orig_init = stages.NerfFit.iteration, stages.NerfFit.__init__

    def init(self, *a, **k):
        orig_init(self, *a, **k)
        marks["init_done"] = time.perf_counter()

    def iteration(self, step):
        out = orig_iter(self, step)
        # when the host has issued the iteration (no per-step sync since the records are flushed every
        # RESUME_EVERY steps); nerfacc's sampling waits for the GPU at the start of every render, so
        # the host is never more than about one iteration ahead and steady intervals are the step time
        stamps.append(time.perf_counter())
        return out

    tmp = None
    if out_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="db3d-stagecheck-")
        out_dir = Path(tmp.name) / "out"
    t0 = time.perf_counter()
    stages.NerfFit.iteration, stages.NerfFit.__init__ = iteration, init
    try:
        stages.fit_nerf(cfg, stage, None, prompt_id, Path("/nonexistent") / subject, Path(out_dir))
    finally:
        stages.NerfFit.iteration, stages.NerfFit.__init__ = orig_iter, orig_init
    t_end = time.perf_counter()
    losses = json.loads((Path(out_dir) / LOSSES).read_text())
    if tmp is not None:
        tmp.cleanup()
    return summarise(cfg, stage, losses, stamps, t0, marks.get("init_done", t0), t_end)


def summarise(cfg: dict, stage: str, losses: dict, stamps: list[float], t0: float, t_init: float,
              t_end: float) -> dict:
    dts = [b - a for a, b in zip([t_init] + stamps[:-1], stamps)]
    n = len(dts)
    start = GRID_WARMUP if n >= GRID_WARMUP + 40 else n // 2
    steady = sorted(dts[start:])
    med = statistics.median(steady) if steady else float("nan")
    records = losses["steps"]
    sds = [r["sds"] for r in records]
    total = [r["loss"] for r in records]
    finite = all(math.isfinite(x) for x in sds + total)
    return {
        "stage": stage, "iters": n, "compile_unet": bool(cfg.get("compile_unet")),
        "deterministic": bool(cfg.get("deterministic")), "precision": cfg.get("precision"),
        "render_resolution": losses["perf"]["render_resolution"],
        "perf": losses["perf"],
        "job_wall_s": t_end - t0, "setup_s": t_init - t0, "loop_s": (stamps[-1] - t_init) if stamps else 0.0,
        "after_loop_s": (t_end - stamps[-1]) if stamps else 0.0,
        "first_iters_ms": [round(d * 1e3, 1) for d in dts[:FIRST]],
        "steady_from_step": start, "steady_ms_median": med * 1e3,
        "steady_ms_p90": (steady[int(0.9 * (len(steady) - 1))] * 1e3) if steady else float("nan"),
        "steady_iters_per_s": 1.0 / med if steady else float("nan"),
        # the first iterations' excess over the steady rate: compilation + CUDA-graph recording
        # (and the occupancy grid's first full refresh, which an eager run pays too)
        "first_iters_excess_s": sum(dts[:FIRST]) - FIRST * med if steady else float("nan"),
        "losses_finite": finite,
        "sds": sds, "loss": total, "t": [r.get("t") for r in records],
        "shading": [r.get("shading") for r in records],
    }


def _window_median(xs: list[float], lo: int, hi: int) -> float:
    w = [x for x in xs[lo:hi] if math.isfinite(x)]
    return statistics.median(w) if w else float("nan")


def compare(a: dict, b: dict) -> dict:
    """Run `b` (e.g. compiled) against `a` (eager): speed, warm-up and whether the losses agree."""
    n = min(a["iters"], b["iters"])
    same_t = a["t"][:n] == b["t"][:n] and a["shading"][:n] == b["shading"][:n]
    rel = [abs(x - y) / max(abs(x), 1e-12) for x, y in zip(a["sds"][:n], b["sds"][:n])]
    windows = {}
    for lo, hi in ((0, 10), (0, n // 4), (n // 2, n)):
        ma, mb = _window_median(a["sds"], lo, hi), _window_median(b["sds"], lo, hi)
        windows[f"{lo}-{hi}"] = {"a": ma, "b": mb, "ratio": mb / ma if ma else float("nan")}
    return {
        "a": a.get("label", "a"), "b": b.get("label", "b"),
        "speedup_steady": a["steady_ms_median"] / b["steady_ms_median"],
        "steady_ms": [a["steady_ms_median"], b["steady_ms_median"]],
        "perf_iters_per_s": [a["perf"]["iters_per_s"], b["perf"]["iters_per_s"]],
        "first_iters_ms": [a["first_iters_ms"], b["first_iters_ms"]],
        "warmup_excess_s": b["first_iters_excess_s"] - a["first_iters_excess_s"],
        "job_wall_s": [a["job_wall_s"], b["job_wall_s"]],
        "peak_gpu_mem_gib": [a["perf"].get("peak_gpu_mem_gib"), b["perf"].get("peak_gpu_mem_gib")],
        "same_timesteps_and_shading": same_t,
        "sds_rel_diff_first": [round(x, 4) for x in rel[:5]],
        "sds_rel_diff_median_first10": statistics.median(rel[:10]) if rel else float("nan"),
        "sds_median_windows": windows,
        "finite": [a["losses_finite"], b["losses_finite"]],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m db3d.bench.stagecheck", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", default=None, help="config file(s), merged over config/config.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stage", default="stage1", choices=["stage1", "naive"])
    p.add_argument("--label", default=None)
    p.add_argument("--cudagraphs", default=None, choices=["direct", "compile"],
                   help="with compile_unet: true, how the UNet's calls without autograd become CUDA graphs "
                        "(default: stages.STAGE_COMPILE's, direct)")
    p.add_argument("--out", default=None, help="JSON summary to write")
    p.add_argument("--compare", nargs=2, metavar="JSON", help="compare two summaries (eager first) and exit")
    args = p.parse_args(argv)
    if args.compare:
        a, b = (json.loads(Path(f).read_text()) for f in args.compare)
        print(json.dumps(compare(a, b), indent=1))
        return 0
    import logging

    from .. import stages
    from ..config import parse_overrides
    from .runner import load_bench_config

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_bench_config(args.config, parse_overrides(args.set))
    if args.cudagraphs:  # this process's stage jobs only
        stages.STAGE_COMPILE = dict(stages.STAGE_COMPILE, cudagraphs=args.cudagraphs)
    summary = run_stage(cfg, args.stage)
    if cfg.get("compile_unet"):
        summary["cudagraphs"] = stages.STAGE_COMPILE["cudagraphs"]
    summary["label"] = args.label or ("compiled" if cfg.get("compile_unet") else "eager")
    short = {k: v for k, v in summary.items() if k not in ("sds", "loss", "t", "shading")}
    print(json.dumps(short, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(summary))
    return 0 if summary["losses_finite"] else 1


if __name__ == "__main__":
    from db3d.errors import report_errors

    sys.exit(report_errors(main))
