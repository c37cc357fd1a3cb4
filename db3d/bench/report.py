"""Benchmark rows, ratios, the projection to a whole subject, and the TSV + Markdown tables (no torch).

The TSV is the machine-readable result (one row per (variant, row, resolution)); the Markdown copy
adds the environment (device, torch, date, precision), the projection and the notes. Both are
rewritten atomically after every row, so an interrupted run still leaves a complete table of what
it measured.
"""
from __future__ import annotations

import csv
import math
import statistics
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..io import atomic_path

GIB_24 = 24.0
CONTEXT_GIB = 0.75  # CUDA context + what the caching allocator does not see, on a 24 GiB card
PRIOR_BATCH = 4     # db3d.dreambooth.generate_class_images' default batch

# Which reference each row is reported against (`ratio` = ms / reference ms, same variant).
RATIO_TO = {
    "sds_step": "unet_cfg_b1",
    "sds_step_stage3": "unet_cfg_b1",
    "dreambooth_step": "diffusers_dreambooth_step",
}


@dataclass
class Row:
    variant: str
    row: str
    status: str = "ok"            # ok | error | oom | skipped
    ms: float | None = None       # median milliseconds per unit
    iters_per_s: float | None = None
    unit: str = "iter"            # iter | run | batch | save
    repeats: int = 0
    spread_pct: float | None = None  # (max - min) / median of the repeats
    res: int | None = None
    batch: int | None = None
    peak_alloc_gib: float | None = None    # torch.cuda.max_memory_allocated (CPU: process peak RSS)
    peak_reserved_gib: float | None = None  # torch.cuda.max_memory_reserved
    fits_24gib: str = ""          # yes | no (CUDA only: reserved + context <= 24 GiB)
    ratio: float | None = None
    ratio_to: str = ""
    precision: str = ""
    options: str = ""
    note: str = ""

    @classmethod
    def timed(cls, variant: str, row: str, times_ms: Sequence[float], **kw: Any) -> "Row":
        ts = sorted(float(t) for t in times_ms)
        if not ts:
            raise ValueError(f"{row}: no timings")
        med = statistics.median(ts)
        spread = 100.0 * (ts[-1] - ts[0]) / med if med > 0 and len(ts) > 1 else None
        return cls(variant=variant, row=row, ms=med, iters_per_s=(1000.0 / med if med > 0 else None),
                   repeats=len(ts), spread_pct=spread, **kw)


COLUMNS = [f.name for f in fields(Row)]


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    if isinstance(x, bool):
        return "1" if x else "0"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _cell(name: str, value: Any) -> str:
    digits = {"ms": 3, "iters_per_s": 3, "spread_pct": 1, "peak_alloc_gib": 2, "peak_reserved_gib": 2, "ratio": 2}
    text = _num(value, digits.get(name, 3))
    return " ".join(text.split())  # no tabs/newlines inside a cell


def add_ratios(rows: list[Row]) -> None:
    """Fill `ratio`/`ratio_to` of SDS and DreamBooth rows against the same variant's reference row."""
    ref = {(r.variant, r.row): r.ms for r in rows if r.status == "ok" and r.ms}
    for r in rows:
        to = RATIO_TO.get(r.row)
        if to is None or r.status != "ok" or r.ms is None:
            continue
        base = ref.get((r.variant, to))
        r.ratio_to = to
        r.ratio = (r.ms / base) if base else None


def read_table(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# ---- projection -----------------------------------------------------------------------------------

def _lookup(rows: Iterable[Row], variant: str, row: str, res: int | None = None) -> float | None:
    for r in rows:
        if r.variant == variant and r.row == row and r.status == "ok" and r.ms is not None:
            if res is None or r.res == res:
                return r.ms
    return None


def project(cfg: dict, rows: Sequence[Row], variant: str = "base", *, db_resume_every: int | None = None,
            nerf_resume_every: int = 25, db_resume_every_s: float = 600.0, startup: bool = True) -> dict:
    """Projected wall time of one subject and one prompt through the method at the config's counts.

    Returns {"stages": [{stage, formula, seconds, missing}], "total_s", "complete",
    "per_subject_s" (priors + DreamBooth), "per_prompt_s" (the rest), "grid": {...}}.
    Terms whose row is missing are left out of the sums and listed in `missing`.
    With `startup` (default) every stage job also pays its start-up once: `process_start`, the model
    build (`backend_build`; `eval_models_build` for the evaluation; random init standing in for the
    load from disk) and the warm-up of its first calls (the `*_warmup` rows: compilation or CUDA-graph
    capture and first-call set-up); each stage's `startup_s` and the total's `startup_s` say how much.
    Not included: the turntables the stages write, the baselines (naive, latent_nerf).
    """
    db, res = cfg["dreambooth"], int(cfg["nerf"]["render_resolution"])
    s1, s3 = int(cfg["stage1"]["iters"]), int(cfg["stage3"]["iters"])
    full, mv = int(db["full_steps"]), int(db["multiview_steps"])
    n_cls = int(db["num_class_images"])

    def term(name: str, count: float, row: str, r: int | None = None) -> tuple[str, float, float | None, str]:
        return (name, count, _lookup(rows, variant, row, r), row if r is None else f"{row}@{r}")

    def job(*warmups: tuple[str, int | None], build: str = "backend_build") -> list:
        """One stage job's start-up terms (name "startup"): process, model build, first calls."""
        if not startup:
            return []
        return ([term("startup", 1, "process_start"), term("startup", 1, build)]
                + [term("startup", 1, row, r) for row, r in warmups])

    def resumes(steps: int, every: int) -> int:
        return max(steps - 1, 0) // max(every, 1)

    def db_resumes(steps: int) -> int:
        # DreamBooth saves by time (db3d.dreambooth.RESUME_EVERY_S) unless given a step interval
        if db_resume_every:
            return resumes(steps, db_resume_every)
        step_ms = _lookup(rows, variant, "dreambooth_step", None)
        return int(steps * step_ms / 1000.0 // db_resume_every_s) if step_ms else 0

    plan = [
        ("class priors", job(("class_prior_batch_warmup", None)) + [
            term("batches", math.ceil(n_cls / PRIOR_BATCH), "class_prior_batch")]),
        ("DreamBooth (partial + full)", job(("dreambooth_step_warmup", None)) + [
            term("steps", full, "dreambooth_step"),
            term("resume saves", db_resumes(full), "dreambooth_resume_save"),
            term("checkpoints", len({int(db["partial_steps"]), full}), "dreambooth_checkpoint_save")]),
        ("stage 1 NeRF", job(("unet_cfg_b1_warmup", None), ("sds_step_warmup", res)) + [
            term("iters", s1, "sds_step", res),
            term("resume saves", resumes(s1, nerf_resume_every), "nerf_resume_save")]),
        ("stage 2 pseudo views", job(("img2img_views_warmup", None)) + [term("runs", 1, "img2img_views")]),
        ("multi-view DreamBooth", job(("dreambooth_step_warmup", None)) + [
            term("steps", mv, "dreambooth_step"),
            term("resume saves", db_resumes(mv), "dreambooth_resume_save"),
            term("checkpoints", 1, "dreambooth_checkpoint_save")]),
        ("stage 3 NeRF", job(("unet_cfg_b1_warmup", None), ("sds_step_stage3_warmup", res)) + [
            term("iters", s3, "sds_step_stage3", res),
            term("resume saves", resumes(s3, nerf_resume_every), "nerf_resume_save")]),
        ("evaluation", job(("eval_run_warmup", None), build="eval_models_build") + [term("runs", 1, "eval_run")]),
    ]
    stages = []
    for stage, terms in plan:
        seconds, start_s, parts, start_parts, missing = 0.0, 0.0, [], [], []
        for name, count, ms, label in terms:
            if count == 0:
                continue
            if ms is None:
                missing.append(label)
                continue
            seconds += count * ms / 1000.0
            if name == "startup":
                start_s += ms / 1000.0
                start_parts.append(f"{label} ({ms / 1000.0:.1f} s)")
            else:
                parts.append(f"{_num(count, 0) if isinstance(count, int) else count} x {label} ({ms:.1f} ms)")
        formula = " + ".join(parts) or "-"
        if start_parts:
            formula += f" + start-up {start_s:.1f} s [{', '.join(start_parts)}]"
        stages.append({"stage": stage, "formula": formula, "seconds": seconds, "startup_s": start_s,
                       "missing": missing})
    total = sum(s["seconds"] for s in stages)
    startup_total = sum(s["startup_s"] for s in stages)
    per_subject = sum(s["seconds"] for s in stages[:2])
    subjects = cfg["dataset"]["subjects"]
    n_subjects = 30 if subjects == "all" else len(subjects)
    n_prompts = int(cfg["dataset"]["prompts_per_subject"])
    n_seeds = len(cfg.get("seeds") or [0])
    per_prompt = total - per_subject
    grid = n_seeds * n_subjects * (per_subject + n_prompts * per_prompt)
    return {"stages": stages, "total_s": total, "complete": not any(s["missing"] for s in stages),
            "startup_s": startup_total, "startup": startup, "jobs": len(stages),
            "per_subject_s": per_subject, "per_prompt_s": per_prompt,
            "grid": {"subjects": n_subjects, "prompts_per_subject": n_prompts, "seeds": n_seeds, "seconds": grid}}


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{seconds:.1f}s")


def projection_lines(proj: dict) -> list[str]:
    out = []
    for s in proj["stages"]:
        miss = f"  [missing: {', '.join(s['missing'])}]" if s["missing"] else ""
        out.append(f"  {s['stage']:<28} {_hms(s['seconds']):>10}   {s['formula']}{miss}")
    flag = "" if proj["complete"] else "  (incomplete: some rows missing)"
    out.append(f"  {'one subject, one prompt':<28} {_hms(proj['total_s']):>10}{flag}")
    if proj.get("startup"):
        st = proj.get("startup_s", 0.0)
        out.append(f"  {'  of which job start-up':<28} {_hms(st):>10}   {proj.get('jobs', 0)} jobs: process start, "
                   f"model build (random init for the load), first-call warm-up (compile / CUDA-graph capture)")
        out.append(f"  {'  steady work alone':<28} {_hms(proj['total_s'] - st):>10}")
    g = proj["grid"]
    out.append(f"  {'each further prompt':<28} {_hms(proj['per_prompt_s']):>10}")
    out.append(f"  {'grid':<28} {_hms(g['seconds']):>10}   {g['subjects']} subjects x {g['prompts_per_subject']} "
               f"prompts x {g['seeds']} seeds (priors counted per subject; baselines not included)")
    return out


# ---- writing --------------------------------------------------------------------------------------

def write_tsv(path: str | Path, rows: Sequence[Row]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n")
            w.writerow(COLUMNS)
            for r in rows:
                d = asdict(r)
                w.writerow([_cell(c, d[c]) for c in COLUMNS])


MD_COLUMNS = ["variant", "row", "res", "batch", "ms", "iters_per_s", "unit", "spread_pct", "peak_alloc_gib",
              "peak_reserved_gib", "fits_24gib", "ratio", "ratio_to", "status", "note"]


def markdown(meta: dict, rows: Sequence[Row], proj: dict | None, notes: Sequence[str] = ()) -> str:
    lines = [f"# db3d benchmark: {meta.get('name', '')}", ""]
    for key in ("date", "device", "torch", "cuda", "diffusers", "python", "backend", "model", "precision",
                "config", "nerf_sampler", "git", "timing", "command", "status"):
        if meta.get(key) not in (None, ""):
            lines.append(f"- {key}: {meta[key]}")
    lines += ["", "## Rows", "", "| " + " | ".join(MD_COLUMNS) + " |", "|" + "---|" * len(MD_COLUMNS)]
    for r in rows:
        d = asdict(r)
        cells = [_cell(c, d[c]).replace("|", "/") for c in MD_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    variants = {}
    for r in rows:
        variants.setdefault(r.variant, r.options)
    lines += ["", "Variants:", ""] + [f"- `{k}`: {v}" for k, v in variants.items()]
    if proj is not None:
        lines += ["", "## Projection (variant `base`)", "", "```"] + projection_lines(proj) + ["```"]
    if notes:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_tables(tsv_path: str | Path, meta: dict, rows: Sequence[Row], proj: dict | None,
                 notes: Sequence[str] = ()) -> Path:
    """Write the TSV and its Markdown copy (`.md` beside it), both atomically; returns the md path."""
    tsv_path = Path(tsv_path)
    md_path = tsv_path.with_suffix(".md")
    write_tsv(tsv_path, rows)
    with atomic_path(md_path) as tmp:
        tmp.write_text(markdown(meta, rows, proj, notes))
    return md_path


def summary_lines(rows: Sequence[Row]) -> list[str]:
    """A short human summary (printed at the end)."""
    out = []
    for r in rows:
        where = f"@{r.res}" if r.res else ""
        if r.status == "ok" and r.ms is not None:
            mem = f"  peak {r.peak_alloc_gib:.2f} GiB" if r.peak_alloc_gib is not None else ""
            ratio = f"  x{r.ratio:.2f} of {r.ratio_to}" if r.ratio is not None else ""
            out.append(f"  {r.variant:<14} {r.row + where:<30} {r.ms:10.2f} ms/{r.unit:<5} "
                       f"{r.iters_per_s or 0:8.2f}/s{mem}{ratio}")
        else:
            out.append(f"  {r.variant:<14} {r.row + where:<30} {r.status}: {r.note[:120]}")
    return out
