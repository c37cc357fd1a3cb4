"""The report's provenance: enough to explain a difference between two machines.

What the run folders and logs say about the runs (each cell's resolved config hash, per-stage wall
times from the stages' own records and from each job's `db3d job:` log line, db3d.jobperf), and what
the machine that builds the report is (git commit, CPU model and SIMD flags, thread counts, the
torch build, package versions). The latter is labelled as the report machine's: the jobs may have
run elsewhere (their log lines name their samplers and peak GPU memory).
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from .. import workflow as wf
from ..config import REPO_ROOT
from .common import EVAL_INFO, EVALUATE_LABEL, STAGE_LABELS, STAGE_ORDER, canonical_hash
from .gather import Runs

# the CPU flags that change what torch's kernels do (vector width, FMA, bf16/fp16, AMX)
CPU_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
             "avx512_bf16", "amx_bf16", "amx_tile", "asimd", "sve")


def scan_configs(runs: Runs, settings: list[str]) -> list[dict]:
    out = []
    for s in sorted(set(settings)):
        p = runs.dir / s / "config.json"
        if not p.is_file():
            continue
        try:
            cfg = json.loads(p.read_text())
        except (OSError, ValueError):
            out.append({"setting": s, "hash": "unreadable", "backend": "?", "seed": "?"})
            continue
        out.append({"setting": s, "hash": canonical_hash(cfg), "backend": str(cfg.get("backend", "?")),
                    "seed": str(cfg.get("seed", "?"))})
    return out


def _wall_time(obj: Any) -> float | None:
    if isinstance(obj, dict):
        for key in ("wall_time_s",):
            if isinstance(obj.get(key), (int, float)):
                return float(obj[key])
        for sub in ("meta", "summary"):
            if isinstance(obj.get(sub), dict) and isinstance(obj[sub].get("wall_time_s"), (int, float)):
                return float(obj[sub]["wall_time_s"])
        timing = obj.get("timing_s")
        if isinstance(timing, dict) and isinstance(timing.get("total"), (int, float)):
            return float(timing["total"])
    if isinstance(obj, list):
        for item in reversed(obj):
            if isinstance(item, dict) and isinstance(item.get("wall_time_s"), (int, float)):
                return float(item["wall_time_s"])
    return None

def wall_times(df, runs: Runs) -> list[dict]:
    """Wall time per stage over the runs behind the metrics table (shared stages counted once)."""
    per_stage: dict[str, list[float]] = {}
    seen: set[str] = set()
    runs_df = df[["setting", "subject", "prompt_id", "variant"]].drop_duplicates() if len(df) else []
    for _, r in (runs_df.iterrows() if len(df) else []):
        files = [(STAGE_LABELS[st], wf.stage_file(r["setting"], st, r["subject"], r["prompt_id"], which=1))
                 for st in wf.VARIANT_STAGES.get(r["variant"], ()) if st in STAGE_LABELS]
        ev = runs.eval_dir(r["setting"], r["subject"], r["prompt_id"], r["variant"]) / EVAL_INFO
        files.append((EVALUATE_LABEL, "runs/" + ev.relative_to(runs.dir).as_posix()))
        for label, rel in files:
            if rel is None or rel in seen:
                continue
            seen.add(rel)
            try:
                wt = _wall_time(json.loads(runs.path(rel).read_text()))
            except (OSError, ValueError):
                continue
            if wt is not None:
                per_stage.setdefault(label, []).append(wt)
    order = STAGE_ORDER
    rows = []
    for stage in sorted(per_stage, key=lambda s: (order.index(s) if s in order else len(order), s)):
        v = per_stage[stage]
        rows.append({"stage": stage, "n": str(len(v)), "mean": f"{sum(v) / len(v):.1f}", "total": f"{sum(v):.1f}"})
    return rows


def git_info() -> str:
    try:
        head = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=20)
        if head.returncode != 0:
            return "unavailable (not a git checkout)"
        dirty = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20)
        flag = " (working tree has uncommitted changes)" if dirty.returncode == 0 and dirty.stdout.strip() else ""
        return head.stdout.strip() + flag
    except (OSError, subprocess.SubprocessError):
        return "unavailable (git not found)"


def _cpuinfo() -> dict[str, str]:
    out: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if ":" in line:
                k, v = (x.strip() for x in line.split(":", 1))
                out.setdefault(k.lower(), v)
    except OSError:
        pass
    return out


def hardware_info() -> tuple[str, str]:
    info = _cpuinfo()
    cpu = info.get("model name", "")
    cpu = f"{cpu or platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - provenance must not fail the report
        gpu = "unknown"
    return cpu, gpu


def cpu_flags() -> str:
    """The CPU_FLAGS this CPU has (from /proc/cpuinfo `flags`, or `Features` on ARM)."""
    info = _cpuinfo()
    have = set((info.get("flags") or info.get("features") or "").split())
    present = [f for f in CPU_FLAGS if f in have]
    return ", ".join(present) if have else "unknown (no /proc/cpuinfo flags)"


def torch_build() -> tuple[str, str]:
    """(torch build: version, CUDA, cuDNN, CPU capability, MKL/oneDNN/OpenMP; threads: torch's
    intra-/inter-op threads and the environment variables that set them)."""
    env = ", ".join(f"{k}={os.environ[k]}" for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ)
    try:
        import torch

        cap = getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")()
        build = (f"torch {torch.__version__}; CUDA {torch.version.cuda or 'none'}; cuDNN "
                 f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else 'none'}; CPU capability "
                 f"{cap}; MKL {torch.backends.mkl.is_available()}; oneDNN {torch.backends.mkldnn.is_available()}; "
                 f"OpenMP {torch.backends.openmp.is_available()}")
        threads = (f"torch intra-op {torch.get_num_threads()}, inter-op {torch.get_num_interop_threads()}; "
                   f"{env or 'OMP_NUM_THREADS/MKL_NUM_THREADS unset'}")
    except Exception as e:  # noqa: BLE001 - provenance must not fail the report
        build, threads = f"torch unavailable ({type(e).__name__})", env or "unknown"
    return build, threads


def job_times(logs_dir: Path) -> list[dict]:
    """Per job kind, from the `db3d job:` line each job's log ends with (db3d.jobperf; read by
    db3d.bench.joblog): jobs, failed, mean and total wall, start-up, steady it/s, samplers."""
    from ..bench.joblog import read_logs

    if not Path(logs_dir).is_dir():
        return []
    per: dict[str, list] = {}
    for r in read_logs(Path(logs_dir)):
        if r.status == "no job line":
            continue
        per.setdefault(r.job, []).append(r)
    out = []
    for job in sorted(per):
        rs = per[job]
        walls = [r.wall_s for r in rs if r.wall_s is not None]
        starts = [r.startup_s for r in rs if r.startup_s is not None]
        rates = [r.steady_it_s for r in rs if r.steady_it_s is not None]
        out.append({"job": job, "n": str(len(rs)), "failed": str(sum(r.status != "ok" for r in rs)),
                    "mean": f"{sum(walls) / len(walls):.1f}" if walls else "\u2014",
                    "total": f"{sum(walls):.1f}" if walls else "\u2014",
                    "startup": f"{sum(starts) / len(starts):.1f}" if starts else "\u2014",
                    "steady": f"{sum(rates) / len(rates):.2f}" if rates else "\u2014",
                    "samplers": ", ".join(sorted({x for r in rs for x in r.samplers.split(",") if x})) or "\u2014"})
    return out


def model_ids(cfg: dict, clip_labels: list[str], dino_label: str | None = None, toy_sha: str | None = None) -> str:
    b = cfg.get("backend")
    models = cfg.get("models", {})
    if b == "toy":
        gen = (f"toy prior trained on synthetic renders ({models.get('toy', 'models/toy')}, "
               f"sha256 {toy_sha[:16] if toy_sha else 'unknown'}); CLIP/DINO: random-weight stand-ins")
    elif b == "tiny":
        gen = f"tiny random-weight stand-ins (tiny_space: {models.get('tiny_space', '?')})"
    elif b == "sd":
        gen = f"Stable Diffusion: {models.get('sd', '?')}"
    elif b == "if":
        gen = f"DeepFloyd IF: {models.get('if', '?')}"
    else:
        gen = str(b)
    dino = f"; DINO: {dino_label}" if dino_label else (f"; DINO: {models['dino']}" if models.get("dino") else "")
    return f"generator: {gen}; CLIP: {', '.join(clip_labels)}{dino}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "open_clip_torch", "diffusers", "typst"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)

