"""`python -m db3d report`: typeset `reports/main.pdf` with Typst from the metrics and run folders.

How it is built: `build_report` gathers everything the report shows into one JSON document
(`data.json`), draws the figures with matplotlib (PNG), copies the gallery images, all into a
fresh build folder (`<out dir>/build/<out stem>/`), copies `template.typ` there as `main.typ`
and compiles it with the `typst` Python package (the Typst compiler in-process; no network, only
Typst's embedded fonts - Libertinus Serif, New Computer Modern, DejaVu Sans Mono - so the fonts
and the output are the same on every machine). The PDF is written atomically.

Reproducible: same inputs -> same PDF. The document date is `none`, nothing reads a clock, and
lists are sorted. Provenance that comes from the environment (git commit, hardware of the machine
that builds the report) is stated as such.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from ..config import REPO_ROOT
from ..errors import Db3dError
from ..io import atomic_path

log = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).with_name("template.typ")

# Display order and names of the variants (the code names stay visible in the tables).
VARIANT_ORDER = ["latent_nerf", "naive", "dreambooth3d", "single_stage"]
VARIANT_NAMES = {
    "latent_nerf": "Latent-NeRF",
    "naive": "DreamBooth+Fusion",
    "dreambooth3d": "DreamBooth3D",
    "single_stage": "Single stage (stage-1 NeRF)",
}
CLIP_ORDER = ["ViT-B-16", "ViT-B-32", "ViT-L-14"]
PAPER_CLIP_LABELS = {"ViT-B-16": "ViT-B/16", "ViT-B-32": "ViT-B/32", "ViT-L-14": "ViT-L/14"}

# CLIP R-Precision published in DreamBooth3D (Raj et al., ICCV 2023, arXiv:2303.13508), Table 1,
# for Latent-NeRF, DreamBooth+Fusion and DreamBooth3D with CLIP ViT-B/16, ViT-B/32, ViT-L/14.
# !! These MUST be checked against the paper before they are filled in: they were not available
# !! to verify when this was written, so every entry is None and the report prints "n/a".
# The paper has no single-stage row in Table 1.
PAPER_VALUES: dict[str, dict[str, float | None]] = {
    "latent_nerf": {"ViT-B-16": None, "ViT-B-32": None, "ViT-L-14": None},
    "naive": {"ViT-B-16": None, "ViT-B-32": None, "ViT-L-14": None},
    "dreambooth3d": {"ViT-B-16": None, "ViT-B-32": None, "ViT-L-14": None},
    "single_stage": {"ViT-B-16": None, "ViT-B-32": None, "ViT-L-14": None},
}

WARNING_HEADLINE = "These numbers come from random-weight models and mean nothing about the method."
WARNING_BODY = ("This report was produced with backend: tiny - the diffusion model, the VAE and the CLIP "
                "models used for the metrics are small networks with RANDOM weights, so the pipeline can run "
                "end to end offline on a CPU. Every image is noise and every metric (labelled "
                "tiny-random(...)) is the score of one random network on another's output. Use backend "
                "sd or if with the real CLIP weights for results that can be compared with the paper.")
WARNING_SHORT = "Backend tiny: random-weight diffusion and CLIP models (labelled tiny-random(...))."
USER_STUDY_INTRO = ("The paper complements CLIP R-Precision with pairwise user preferences on subject "
                    "fidelity, 3D consistency and prompt fidelity. This section will summarise the responses "
                    "collected for this reproduction.")
USER_STUDY_STATUS = "No responses yet."
MAX_ENTRIES_PER_SUBJECT = 8


# ----------------------------------------------------------------------------- helpers
def base_model(label: str) -> str:
    """`tiny-random(ViT-B-16)` -> `ViT-B-16`; real labels pass through."""
    m = re.fullmatch(r"tiny-random\((.*)\)", str(label))
    return m.group(1) if m else str(label)


def variant_sort_key(v: str) -> tuple:
    return (VARIANT_ORDER.index(v) if v in VARIANT_ORDER else len(VARIANT_ORDER), v)


def model_sort_key(label: str) -> tuple:
    b = base_model(label)
    return (CLIP_ORDER.index(b) if b in CLIP_ORDER else len(CLIP_ORDER), b, label)


def mean_se(values) -> tuple[float, float | None, int]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(vals)
    if n == 0:
        return float("nan"), None, 0
    mean = sum(vals) / n
    if n < 2:
        return mean, None, n
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, math.sqrt(var / n), n


def fmt_mean_se(mean: float, se: float | None, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "\u2014"
    return f"{mean:.3f} \u00b1 {se:.3f}" if se is not None else f"{mean:.3f}"


def fmt_paper(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def is_seed_setting(setting: str) -> bool:
    return re.fullmatch(r"seed~\d+", str(setting)) is not None


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- metrics
def load_metrics(metrics_path: Path):
    import pandas as pd

    from ..eval.table import METRIC_COLUMNS, read_metrics

    if not Path(metrics_path).is_file():
        raise Db3dError(f"metrics table {metrics_path} does not exist; run `python -m db3d collect-metrics` first")
    if Path(metrics_path).stat().st_size == 0:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    return read_metrics(metrics_path)


def table_models(df, cfg: dict) -> list[str]:
    labels = sorted(set(df["model"]) - {""}, key=model_sort_key) if len(df) else []
    if labels:
        return labels
    tiny = cfg.get("backend") == "tiny"
    return [f"tiny-random({m})" if tiny else m for m in cfg["models"]["clip"]]


def table_variants(df, cfg: dict) -> list[str]:
    return sorted(set(VARIANT_ORDER) | set(cfg.get("variants", [])) | set(df["variant"]), key=variant_sort_key)


def results_table(df, metric: str, variants: list[str], models: list[str], with_paper: bool,
                  intro: str, note: str = "", row_prefix: str = "") -> tuple[dict, dict]:
    """The table dict for the template and the raw stats {(variant, model): (mean, se, n)}."""
    sub = df[df["metric"] == metric]
    stats: dict[tuple[str, str], tuple[float, float | None, int]] = {}
    rows = []
    for v in variants:
        cells, ns = [], []
        for m in models:
            vals = sub[(sub["variant"] == v) & (sub["model"] == m)]["value"].tolist()
            mean, se, n = mean_se(vals)
            stats[(v, m)] = (mean, se, n)
            ns.append(n)
            cells.append({"ours": fmt_mean_se(mean, se, n),
                          "paper": fmt_paper(PAPER_VALUES.get(v, {}).get(base_model(m)))})
        n_txt = str(max(ns)) if ns and min(ns) == max(ns) else "/".join(str(n) for n in ns)
        rows.append({"variant": v, "name": row_prefix + VARIANT_NAMES.get(v, v), "n": n_txt, "cells": cells})
    table = {
        "with_paper": with_paper, "intro": intro, "note": note, "rows": rows,
        "models": [{"label": m, "paper_label": PAPER_CLIP_LABELS.get(base_model(m), base_model(m))} for m in models],
    }
    return table, stats


def rprecision_figure(path: Path, stats_r: dict, stats_t: dict, variants: list[str], models: list[str],
                      tiny: bool) -> None:
    """Bar charts of R@1 and CLIP-T per variant (bars: CLIP models; error bars: s.e.)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9.0, 3.4), dpi=200)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    width = 0.8 / max(len(models), 1)
    xs = list(range(len(variants)))
    colors = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377"]
    for ax, stats, title, paper in ((axes[0], stats_r, "CLIP R-Precision (R@1)", True),
                                    (axes[1], stats_t, "CLIP-T (view-prompt cosine)", False)):
        for j, m in enumerate(models):
            off = (j - (len(models) - 1) / 2) * width
            means = [stats.get((v, m), (float("nan"), None, 0))[0] for v in variants]
            errs = [stats.get((v, m), (0, None, 0))[1] or 0.0 for v in variants]
            ax.bar([x + off for x in xs], [0 if math.isnan(y) else y for y in means], width, yerr=errs,
                   capsize=2, color=colors[j % len(colors)], label=m, error_kw={"elinewidth": 0.8})
            if paper:
                pv = [(x + off, PAPER_VALUES.get(v, {}).get(base_model(m))) for x, v in zip(xs, variants)]
                pv = [(x, y) for x, y in pv if y is not None]
                if pv:
                    ax.plot([p[0] for p in pv], [p[1] for p in pv], "kD", markersize=4,
                            label="paper" if j == 0 else None)
        ax.set_xticks(xs)
        ax.set_xticklabels([VARIANT_NAMES.get(v, v).split(" (")[0] for v in variants], fontsize=7, rotation=12)
        ax.set_title(title + (" - random weights" if tiny else ""), fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(axis="y", linewidth=0.3, alpha=0.6)
        ax.set_axisbelow(True)
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(fontsize=6, loc="upper left", frameon=False)
    fig.tight_layout()
    fig.savefig(path, format="png", metadata={"Software": None})


# ----------------------------------------------------------------------------- runs folder
def _prompt_dir_key(prompt_dir: Path, runs_dir: Path) -> tuple[str, str, str] | None:
    """runs/<setting>/<subject>/<prompt_id> -> (setting, subject, prompt_id)."""
    try:
        rel = prompt_dir.relative_to(runs_dir)
    except ValueError:
        return None
    parts = rel.parts
    if len(parts) < 3:
        return None
    return "/".join(parts[:-2]), parts[-2], parts[-1]


def scan_galleries(runs_dir: Path) -> dict[tuple[str, str, str], dict]:
    """{(setting, subject, prompt_id): {"eval": {variant: png}, "stage1": png, "stage2": png, "prompt": str}}"""
    found: dict[tuple[str, str, str], dict] = {}
    if not runs_dir.is_dir():
        return found

    def entry(prompt_dir: Path) -> dict | None:
        key = _prompt_dir_key(prompt_dir, runs_dir)
        if key is None:
            return None
        return found.setdefault(key, {"eval": {}, "stage1": None, "stage2": None, "prompt": None})

    for p in sorted(runs_dir.rglob("contact_sheet.png")):
        if p.parent.parent.name != "eval":
            continue
        e = entry(p.parent.parent.parent)
        if e is None:
            continue
        e["eval"][p.parent.name] = p
        pool = p.parent / "retrieval_pool.json"
        if e["prompt"] is None and pool.is_file():
            try:
                e["prompt"] = str(json.loads(pool.read_text()).get("prompt") or "") or None
            except (OSError, ValueError):
                pass
    for name, stage in (("turntable.png", "stage1"), ("pseudo_views.png", "stage2")):
        for p in sorted(runs_dir.rglob(name)):
            if p.parent.name == stage:
                e = entry(p.parent.parent)
                if e is not None:
                    e[stage] = p
    return found


def build_galleries(found: dict, build_dir: Path) -> list[dict]:
    img_dir = build_dir / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    counter = 0

    def copy(src: Path) -> str:
        nonlocal counter
        counter += 1
        dst = img_dir / f"{counter:04d}{src.suffix.lower()}"
        shutil.copyfile(src, dst)
        return dst.relative_to(build_dir).as_posix()

    by_subject: dict[str, list] = {}
    for (setting, subject, prompt_id) in sorted(found):
        by_subject.setdefault(subject, []).append((setting, prompt_id))
    galleries = []
    for subject in sorted(by_subject):
        entries = []
        keys = by_subject[subject]
        for setting, prompt_id in keys[:MAX_ENTRIES_PER_SUBJECT]:
            e = found[(setting, subject, prompt_id)]
            images = []
            for v in sorted(e["eval"], key=variant_sort_key):
                images.append({"path": copy(e["eval"][v]),
                               "caption": f"{VARIANT_NAMES.get(v, v)} ({v}): fixed-camera turntable"})
            if e["stage1"] is not None:
                images.append({"path": copy(e["stage1"]), "caption": "stage 1: initial NeRF turntable"})
            if e["stage2"] is not None:
                images.append({"path": copy(e["stage2"]), "caption": "stage 2: pseudo multi-view images"})
            if images:
                entries.append({"heading": f"prompt {prompt_id}, setting {setting}", "prompt": e["prompt"],
                                "images": images})
        if len(keys) > MAX_ENTRIES_PER_SUBJECT:
            log.info("gallery of %s: showing %d of %d runs", subject, MAX_ENTRIES_PER_SUBJECT, len(keys))
            entries.append({"heading": f"({len(keys) - MAX_ENTRIES_PER_SUBJECT} more runs not shown)",
                            "prompt": None, "images": []})
        galleries.append({"subject": subject, "entries": entries})
    return galleries


def scan_configs(runs_dir: Path) -> list[dict]:
    out = []
    if not runs_dir.is_dir():
        return out
    for p in sorted(runs_dir.rglob("config.json")):
        rel = p.parent.relative_to(runs_dir)
        if not rel.parts or not all("~" in part for part in rel.parts):
            continue  # only runs/<setting>/config.json
        try:
            cfg = json.loads(p.read_text())
        except (OSError, ValueError):
            out.append({"setting": rel.as_posix(), "hash": "unreadable", "backend": "?", "seed": "?"})
            continue
        out.append({"setting": rel.as_posix(), "hash": canonical_hash(cfg), "backend": str(cfg.get("backend", "?")),
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
    if isinstance(obj, list):
        for item in reversed(obj):
            if isinstance(item, dict) and isinstance(item.get("wall_time_s"), (int, float)):
                return float(item["wall_time_s"])
    return None


def scan_wall_times(runs_dir: Path) -> list[dict]:
    per_stage: dict[str, list[float]] = {}
    if runs_dir.is_dir():
        for p in sorted(runs_dir.rglob("losses.json")):
            try:
                wt = _wall_time(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
            if wt is not None:
                per_stage.setdefault(p.parent.name, []).append(wt)
    order = ["dreambooth", "stage1", "stage2", "stage3", "naive", "latent_nerf"]
    rows = []
    for stage in sorted(per_stage, key=lambda s: (order.index(s) if s in order else len(order), s)):
        v = per_stage[stage]
        rows.append({"stage": stage, "n": str(len(v)), "mean": f"{sum(v) / len(v):.1f}", "total": f"{sum(v):.1f}"})
    return rows


# ----------------------------------------------------------------------------- environment
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


def hardware_info() -> tuple[str, str]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cpu = f"{cpu or platform.processor() or platform.machine()} ({os.cpu_count()} logical cores)"
    gpu = "none"
    try:
        import torch

        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:  # noqa: BLE001 - provenance must not fail the report
        gpu = "unknown"
    return cpu, gpu


def model_ids(cfg: dict, clip_labels: list[str]) -> str:
    b = cfg.get("backend")
    models = cfg.get("models", {})
    if b == "tiny":
        gen = f"tiny random-weight stand-ins (tiny_space: {models.get('tiny_space', '?')})"
    elif b == "sd":
        gen = f"Stable Diffusion: {models.get('sd', '?')}"
    elif b == "if":
        gen = f"DeepFloyd IF: {models.get('if', '?')}"
    else:
        gen = str(b)
    return f"generator: {gen}; CLIP: {', '.join(clip_labels)}"


# ----------------------------------------------------------------------------- main entry
def build_data(cfg: dict, metrics_path: Path, runs_dir: Path, build_dir: Path) -> dict:
    """Everything the template shows (also writes the figure and gallery images into build_dir)."""
    df = load_metrics(metrics_path)
    tiny = cfg.get("backend") == "tiny"
    models = table_models(df, cfg)
    variants = table_variants(df, cfg)

    main_df = df[df["setting"].map(is_seed_setting)] if len(df) else df
    if len(df) and len(main_df) == 0:
        main_df, scope = df, "all settings (no plain seed~N settings found)"
    else:
        scope = "the seed~N settings (the ablation settings are in the per-setting table)"
    unit = "subjects \u00d7 prompts \u00d7 seeds"
    main_table, stats_r = results_table(
        main_df, "clip_r_precision", variants, models, True,
        intro=(f"Fraction of the fixed turntable views whose prompt CLIP ranks first among the retrieval pool "
               f"(all eval3d prompts of all subjects, class noun in, rare token out). Mean \u00b1 standard error over "
               f"{unit}; n = number of (subject, prompt, seed) runs; rows from {scope}."),
        note=("Paper: DreamBooth3D (Raj et al., ICCV 2023) Table 1; n/a = not reported there or not yet "
              "checked against the paper (db3d.report.build.PAPER_VALUES). The paper's retrieval pool and "
              "renders differ from ours, so the columns are comparable in trend, not digit by digit."
              + (" Ours: random-weight CLIP stand-ins (tiny backend) - meaningless." if tiny else "")))
    clipt_table, stats_t = results_table(
        main_df, "clip_t", variants, models, False,
        intro=f"Mean cosine similarity between the views and the prompt text (token removed); mean \u00b1 s.e. over {unit}.")

    setting_table = None
    settings = sorted(set(df["setting"])) if len(df) else []
    if any(not is_seed_setting(s) for s in settings):  # ablation cells present
        rows_all = {"with_paper": False, "models": None, "rows": [], "note": "",
                    "intro": "CLIP R-Precision (R@1) per experiment setting (mean \u00b1 s.e. over subjects \u00d7 prompts)."}
        for s in settings:
            t, _ = results_table(df[df["setting"] == s], "clip_r_precision",
                                 [v for v in variants if v in set(df["variant"])], models, False, intro="",
                                 row_prefix=f"{s}: ")
            rows_all["models"] = t["models"]
            rows_all["rows"].extend(t["rows"])
        setting_table = rows_all

    fig_dir = build_dir / "fig"
    fig_dir.mkdir(parents=True, exist_ok=True)
    figures = []
    if len(df):
        rprecision_figure(fig_dir / "metrics.png", stats_r, stats_t, variants, models, tiny)
        figures.append({"path": "fig/metrics.png",
                        "caption": ("CLIP R-Precision (left) and CLIP-T (right) per variant; bars: CLIP models, "
                                    "error bars: standard error, diamonds: paper (where known)."
                                    + (" Random-weight models: meaningless." if tiny else ""))})

    galleries = build_galleries(scan_galleries(runs_dir), build_dir)
    configs = scan_configs(runs_dir)
    wall = scan_wall_times(runs_dir)
    cpu, gpu = hardware_info()

    subjects = sorted(set(df["subject"])) if len(df) else []
    prompts = sorted(set(zip(df["subject"], df["prompt_id"]))) if len(df) else []
    seeds = sorted({int(s) for s in df["seed"]}) if len(df) else []
    summary = [
        f"Inputs: {Path(metrics_path).name} (sha256 {sha256_file(metrics_path)[:16]}), {len(df)} metric rows; "
        f"runs folder {Path(runs_dir).name}/ with {len(configs)} setting config(s).",
        f"Subjects ({len(subjects)}): {', '.join(subjects) or 'none'}; subject-prompt pairs: {len(prompts)}; "
        f"seeds: {', '.join(map(str, seeds)) or 'none'}; settings: {len(settings)}.",
        f"Variants: {', '.join(f'{VARIANT_NAMES.get(v, v)} ({v})' for v in variants)}.",
    ]
    provenance = {
        "items": [
            ["git commit", git_info()],
            ["backend", str(cfg.get("backend"))],
            ["model ids", model_ids(cfg, models)],
            ["seeds", f"in metrics: {', '.join(map(str, seeds)) or 'none'}; config seeds: "
                      f"{', '.join(map(str, cfg.get('seeds', [])))}"],
            ["report config hash", canonical_hash(cfg)],
            ["metrics table sha256", sha256_file(metrics_path)],
            ["hardware (machine that built this report)", f"CPU: {cpu}; GPU: {gpu}"],
            ["software", f"Python {platform.python_version()}; " + _versions()],
        ],
        "configs": configs,
        "wall_times": wall,
    }
    return {
        "title": str(cfg.get("report", {}).get("title", "DreamBooth3D reproduction")),
        "subtitle": "A reproduction of DreamBooth3D: Subject-Driven Text-to-3D Generation (Raj et al., ICCV 2023)",
        "backend": str(cfg.get("backend")),
        "clip_models": models,
        "warning": {"headline": WARNING_HEADLINE, "body": WARNING_BODY, "short": WARNING_SHORT} if tiny else None,
        "summary": summary,
        "main_table": main_table,
        "clipt_table": clipt_table,
        "setting_table": setting_table,
        "figures": figures,
        "gallery_intro": ("Fixed-camera turntables (the views the metrics are computed on) of every evaluated "
                          "variant, with the stage-1 turntable and the stage-2 pseudo multi-view images where "
                          "present."),
        "galleries": galleries,
        "provenance": provenance,
        "user_study": {"intro": USER_STUDY_INTRO, "status": USER_STUDY_STATUS},
    }


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "open_clip_torch", "diffusers", "typst"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


def compile_typst(build_dir: Path) -> bytes:
    try:
        import typst
    except ImportError as e:
        raise Db3dError(f"the `typst` Python package is needed to build the report ({e}); "
                        f"install the pinned environment (envs/requirements-cpu.txt)") from None
    try:
        return typst.compile(str(build_dir / "main.typ"), root=str(build_dir), ignore_system_fonts=True)
    except Exception as e:  # typst.TypstError: a template/data bug, keep the details
        raise RuntimeError(f"Typst failed on {build_dir / 'main.typ'}: {e}") from e


def build_report(cfg: dict, metrics_path: Path, runs_dir: Path, out_pdf: Path) -> Path:
    """Typeset the report PDF from the metrics table and the run folders; returns `out_pdf`."""
    metrics_path, runs_dir, out_pdf = Path(metrics_path), Path(runs_dir), Path(out_pdf)
    build_dir = out_pdf.parent / "build" / out_pdf.stem
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    data = build_data(cfg, metrics_path, runs_dir, build_dir)
    (build_dir / "data.json").write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    shutil.copyfile(TEMPLATE_PATH, build_dir / "main.typ")
    pdf = compile_typst(build_dir)
    with atomic_path(out_pdf) as tmp:
        tmp.write_bytes(pdf)
    log.info("report: %s (%d bytes; build folder %s)", out_pdf, len(pdf), build_dir)
    return out_pdf
