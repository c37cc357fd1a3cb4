"""Where an SDS iteration's time goes: `NerfFit.iteration` under `torch.profiler`.

The bench says how long a step takes; this says which part of it (the `record_function` regions
of `NerfFit.iteration` and `ScoreDistillation`: grid update, render, VAE encode, UNet, backward,
Adam) and whether the GPU or the host is the limit: per step, the wall time against the time the
GPU spent in kernels. A step whose kernel time is far below its wall time is launch-bound (the
host cannot issue kernels fast enough), and faster kernels will not help it; fewer launches will.

    python -m db3d.bench.profile --config config/paper.yaml --set backend=sd --set models.sd=random \\
        --stage stage1 --steps 12 [--trace trace.json] [--out summary.json]

On CPU (tiny backend) it runs too, for the plumbing; only GPU numbers say anything.
"""
from __future__ import annotations

import argparse
import bisect
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REGIONS = ("nerf.grid_update", "nerf.render", "sds", "sds.encode", "sds.unet", "nerf.recon_render",
           "backward", "adam")


def _self_device_time(evt) -> float:
    """An event's own device time in µs (the attribute's name changed across torch versions)."""
    for name in ("self_device_time_total", "self_cuda_time_total"):
        if hasattr(evt, name):
            return float(getattr(evt, name))
    return 0.0


def trace_gpu_time(trace: dict, steps: int) -> dict:
    """From a Chrome trace: GPU time per step (kernels, copies, memsets: the sum of their durations;
    the aten ops above them would count it twice) and, per labelled region, the span of its GPU work
    and the kernel time inside that span (a span much longer than its kernels: the GPU waited for
    the host)."""
    gpu = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace["traceEvents"]
                 if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and "dur" in e)
    starts = [a for a, _ in gpu]
    span: dict[str, float] = {}
    inside: dict[str, float] = {}
    for e in trace["traceEvents"]:
        if e.get("cat") == "gpu_user_annotation" and e.get("name") in REGIONS:
            a0, a1 = e["ts"], e["ts"] + e["dur"]
            span[e["name"]] = span.get(e["name"], 0.0) + e["dur"]
            i = bisect.bisect_left(starts, a0)
            busy = 0.0
            while i < len(gpu) and gpu[i][0] < a1:
                busy += min(gpu[i][1], a1) - gpu[i][0]
                i += 1
            inside[e["name"]] = inside.get(e["name"], 0.0) + busy
    return {"kernel_ms": sum(b - a for a, b in gpu) / 1e3 / steps, "kernels_per_step": len(gpu) / steps,
            "span_ms": {k: v / 1e3 / steps for k, v in span.items()},
            "region_kernel_ms": {k: v / 1e3 / steps for k, v in inside.items()}}


def profile_steps(cfg: dict, stage: str = "stage1", steps: int = 12, warmup: int = 16,
                  trace: str | None = None, top: int = 20) -> dict:
    """Warm up, time `steps` iterations plainly (synced wall clock), then profile `steps` more."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from .. import stages
    from .workloads import STEADY_STATE_STEP, NerfRun

    backend = stages._backend(cfg)
    run = NerfRun(cfg, backend, stage=stage)
    run.warm_estimator()
    cuda = backend.device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    step = STEADY_STATE_STEP
    for _ in range(warmup):
        run.step(step)
        step += 1
    sync()
    walls = []
    for _ in range(steps):
        t0 = time.perf_counter()
        run.step(step)
        sync()
        walls.append((time.perf_counter() - t0) * 1e3)
        step += 1

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            run.step(step)
            step += 1
        sync()
        profiled_wall = (time.perf_counter() - t0) * 1e3 / steps
    trace_path = Path(trace) if trace else Path(tempfile.mkdtemp(prefix="db3d-profile-")) / "trace.json"
    prof.export_chrome_trace(str(trace_path))
    gpu = trace_gpu_time(json.loads(trace_path.read_text()), steps)
    if not trace:
        shutil.rmtree(trace_path.parent, ignore_errors=True)
    events = prof.key_averages()
    regions = {}
    for e in events:
        if e.key in REGIONS:
            regions[e.key] = {"calls_per_step": e.count / steps, "cpu_ms": e.cpu_time_total / 1e3 / steps,
                              "gpu_span_ms": gpu["span_ms"].get(e.key, 0.0),
                              "gpu_ms": gpu["region_kernel_ms"].get(e.key, 0.0)}
    by_gpu = sorted((e for e in events if e.key not in REGIONS), key=_self_device_time, reverse=True)[:top]
    by_cpu = sorted((e for e in events if e.key not in REGIONS), key=lambda e: e.self_cpu_time_total,
                    reverse=True)[:top]
    launches = sum(e.count for e in events if e.key in ("cudaLaunchKernel", "cudaLaunchKernelExC",
                                                        "cuLaunchKernel", "cudaGraphLaunch")) / steps
    return {
        "stage": stage, "device": torch.cuda.get_device_name() if cuda else "cpu", "steps": steps,
        "wall_ms_median": statistics.median(walls), "wall_ms": [round(w, 2) for w in walls],
        "profiled_wall_ms": profiled_wall, "gpu_kernel_ms": gpu["kernel_ms"],
        "gpu_busy_fraction": gpu["kernel_ms"] / profiled_wall if cuda else None,
        "launches_per_step": launches, "samples_per_step": run.samples / max(len(run.records), 1),
        "regions": regions,
        "top_gpu": [{"op": e.key, "calls": e.count / steps, "gpu_ms": _self_device_time(e) / 1e3 / steps}
                    for e in by_gpu],
        "top_cpu": [{"op": e.key, "calls": e.count / steps, "cpu_ms": e.self_cpu_time_total / 1e3 / steps}
                    for e in by_cpu],
    }


def format_summary(s: dict) -> str:
    lines = [f"{s['stage']} on {s['device']}: {s['wall_ms_median']:.1f} ms/step (synced wall, median of "
             f"{s['steps']}); under the profiler {s['profiled_wall_ms']:.1f} ms/step, GPU kernels "
             f"{s['gpu_kernel_ms']:.1f} ms/step"
             + (f" ({100 * s['gpu_busy_fraction']:.0f} % busy)" if s["gpu_busy_fraction"] is not None else "")
             + f", {s['launches_per_step']:.0f} launches/step, {s['samples_per_step']:.0f} samples/step",
             "", f"{'region':<20} {'calls':>6} {'cpu ms':>9} {'gpu span ms':>12} {'kernels ms':>11}"]
    for k in REGIONS:
        if k in s["regions"]:
            r = s["regions"][k]
            lines.append(f"{k:<20} {r['calls_per_step']:>6.1f} {r['cpu_ms']:>9.2f} {r['gpu_span_ms']:>12.2f} "
                         f"{r['gpu_ms']:>11.2f}")
    lines.append("(backward runs in autograd's device thread, outside the labels; cpu ms of a region is its "
                 "host time where the profiler attributes it)")
    lines += ["", "top ops by GPU time per step:"]
    lines += [f"  {e['gpu_ms']:8.3f} ms  x{e['calls']:<6.1f} {e['op'][:90]}" for e in s["top_gpu"]]
    lines += ["", "top ops by host (self CPU) time per step:"]
    lines += [f"  {e['cpu_ms']:8.3f} ms  x{e['calls']:<6.1f} {e['op'][:90]}" for e in s["top_cpu"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m db3d.bench.profile", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", action="append", default=None, help="config file(s), merged over config/config.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--stage", default="stage1", choices=["stage1", "stage3", "naive"])
    p.add_argument("--steps", type=int, default=12, help="steps timed, then as many profiled")
    p.add_argument("--warmup", type=int, default=16)
    p.add_argument("--top", type=int, default=20)
    p.add_argument("--trace", default=None, help="write a Chrome trace (chrome://tracing, Perfetto)")
    p.add_argument("--out", default=None, help="write the summary as JSON")
    args = p.parse_args(argv)
    from ..config import parse_overrides
    from .runner import load_bench_config

    cfg = load_bench_config(args.config, parse_overrides(args.set))
    summary = profile_steps(cfg, args.stage, args.steps, args.warmup, args.trace, args.top)
    print(format_summary(summary))
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    from db3d.errors import report_errors

    sys.exit(report_errors(main))
