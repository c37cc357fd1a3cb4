"""`python -m db3d report`: typeset `reports/main.pdf` with Typst from the metrics and run folders.

How it is built: `build_report` gathers everything the report shows into one JSON document
(`data.json`), draws the figures with matplotlib (PNG), writes the gallery strips (PIL), all into a
fresh build folder (`<out dir>/build/<out stem>/`), copies `template.typ` there as `main.typ`
and compiles it with the `typst` Python package (the Typst compiler in-process; no network, only
Typst's embedded fonts - Libertinus Serif, New Computer Modern, DejaVu Sans Mono - so the fonts
and the output are the same on every machine). The PDF is written atomically.

What it reads (rules/report.smk declares the same files as inputs, `db3d.workflow.report_inputs`):
the metrics table; for each (setting, subject, prompt, variant) of that table the evaluation
renders (`eval/<variant>/turntable.gif`, `eval_info.json`, `retrieval_pool.json`) and the stage
folders of its NeRF (`losses.json`, `turntable.png`, `stage2/pseudo_views.png`) found through
`db3d.workflow.stage_setting`, so stale folders under runs/ never leak in; the subjects' photos
(`data/subjects/<subject>/images_*`); `runs/<setting>/config.json`; the ablation tables named in
the config; `results/userstudy.tsv` beside the metrics table when it exists; with backend toy the
prior's folder (`models.toy`: samples.png, train_log.json, model.safetensors). The synthetic
track's sections (ground-truth metrics, the trained prior) are made in `groundtruth.py`.

Reproducible: same inputs -> same PDF. The document date is `none`, nothing reads a clock, and
lists are sorted. Provenance that comes from the environment (git commit, hardware of the machine
that builds the report) is stated as such. Layout and choices: docs/report.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

from .. import variants as V
from .. import workflow as wf
from ..config import REPO_ROOT, parse_setting, resolve_key
from ..errors import Db3dError
from ..io import atomic_path
from . import figures
from .images import strip_from, subject_photos
from .objective import objective_section, shares_cell
from .stats import fmt_mean_se, mean_se
from .select import (METRIC_LABEL, METRICS, USERSTUDY_QUESTIONS, ablation_groups, as_number, base_model,
                     is_seed_setting, metric_model, read_losses, read_userstudy, select_failure_cases, setting_params,
                     variant_depends)

log = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).with_name("template.typ")

# Display order and names of the variants (the code names stay visible in the tables): db3d.variants.
VARIANT_ORDER = list(V.VARIANTS)
VARIANT_NAMES = V.labels()
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
# Backends whose CLIP/DINO metrics come from the random-weight stand-ins (toy: its prior is trained,
# the evaluation models are not; the ground-truth metrics are its real numbers, db3d.report.groundtruth).
STAND_IN_BACKENDS = ("tiny", "toy")
USER_STUDY_INTRO = ("The paper complements CLIP R-Precision with pairwise user preferences on subject "
                    "fidelity, 3D consistency and prompt fidelity: raters compare DreamBooth3D with one baseline "
                    "per pair (docs/userstudy.md). Rates are the share of kept answers preferring DreamBooth3D with "
                    "Wilson 95% intervals and two-sided binomial tests against 0.5; pairs are also decided by "
                    "majority vote (the paper's unit).")
USER_STUDY_STATUS = "No responses yet."
MAX_GALLERY_SUBJECTS = 40       # one page each
MAX_ABLATION_SUBJECTS = 3       # image rows per ablation: first prompt and seed of each
STRIP_ROW_CM = 1.45             # height of one image row in the galleries
STRIP_MAX_CM = 13.4             # widest image in a gallery row (A4 text width minus the label column)

# What each swept parameter is (keys: short names of db3d.config.ABLATION_KEYS).
ABLATION_INFO = {
    "partial_steps": ("Iterations of the partial DreamBooth that guides the stage-1 NeRF and starts the multi-view "
                      "DreamBooth (paper: 150 of 800; partial = full is the naive DreamBooth+Fusion case)."),
    "full_steps": "Iterations of the fully trained DreamBooth (pseudo views and the naive baseline).",
    "recon_weight": ("Weight of the stage-3 reconstruction loss on the pseudo multi-view images; 0 is the paper's "
                     "'without reconstruction' ablation."),
    "noise_level": ("Img2img noise level of stage 2: the fraction of the diffusion time the stage-1 renders are "
                    "noised to before the full DreamBooth denoises them into pseudo views."),
    "num_pseudo_views": "Number of pseudo multi-view images made in stage 2 (paper: about 20).",
    "multiview_steps": ("Iterations of the multi-view DreamBooth continued from the partial model on the inputs and "
                        "the pseudo views; 0 = stage 3 guided by the partial model itself."),
    "guidance_scale": "Classifier-free guidance scale of the SDS loss, in every NeRF stage (baselines included).",
    "stage1_iters": "SDS iterations of the stage-1 NeRF.",
    "stage3_iters": "Iterations of the stage-3 NeRF.",
}


# ----------------------------------------------------------------------------- helpers
variant_sort_key = V.order_key


def model_sort_key(label: str) -> tuple:
    b = base_model(label)
    return (CLIP_ORDER.index(b) if b in CLIP_ORDER else len(CLIP_ORDER), b, label)


def fmt_paper(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def fmt_num(v: Any, digits: int = 3) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "\u2014"
    if math.isnan(f):
        return "\u2014"
    return f"{f:.{digits}f}"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def config_value(cfg: dict, param: str) -> Any:
    node: Any = cfg
    for part in resolve_key(param).split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


class Runs:
    """Paths inside the runs folder from the `runs/...` paths of db3d.workflow."""

    def __init__(self, runs_dir: Path):
        self.dir = Path(runs_dir)

    def path(self, rel: str) -> Path:
        return self.dir / rel.removeprefix("runs/")

    def eval_dir(self, setting: str, subject: str, prompt_id: str, variant: str) -> Path:
        return self.dir / setting / subject / prompt_id / "eval" / variant

    def stage_dir(self, setting: str, stage: str, subject: str, prompt_id: str) -> Path:
        return self.path(wf.stage_dir(setting, stage, subject, prompt_id))


class Assets:
    """Images written into the build folder under deterministic names (img/0001.png, ...)."""

    def __init__(self, build_dir: Path):
        self.build_dir = build_dir
        self.n = 0
        (build_dir / "img").mkdir(parents=True, exist_ok=True)

    def _next(self) -> Path:
        self.n += 1
        return self.build_dir / "img" / f"{self.n:04d}.png"

    def strip(self, source, units: int = 1) -> dict | None:
        """An image row: {"path", "width_cm", "height_cm"} (None when the source is missing)."""
        if source is None or (isinstance(source, list) and not source):
            return None
        try:
            path, aspect = strip_from(source, self._next())
        except (OSError, ValueError) as e:
            log.warning("report: cannot read %s: %s", source, e)
            return None
        h = STRIP_ROW_CM * units
        w = aspect * h
        if w > STRIP_MAX_CM:
            w, h = STRIP_MAX_CM, STRIP_MAX_CM / aspect
        return {"path": path.relative_to(self.build_dir).as_posix(), "width_cm": round(w, 3), "height_cm": round(h, 3)}


# ----------------------------------------------------------------------------- metrics
def load_metrics(metrics_path: Path):
    import pandas as pd

    from ..eval.table import METRIC_COLUMNS, read_metrics

    if not Path(metrics_path).is_file():
        raise Db3dError(f"metrics table {metrics_path} does not exist; run `python -m db3d collect-metrics` first")
    if Path(metrics_path).stat().st_size == 0:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    return read_metrics(metrics_path)


def table_models(df, cfg: dict, metric: str = "clip_r_precision") -> list[str]:
    sub = df[df["metric"] == metric] if len(df) else df
    labels = sorted(set(sub["model"]) - {""}, key=model_sort_key) if len(sub) else []
    if labels:
        return labels
    tiny = cfg.get("backend") in STAND_IN_BACKENDS
    return [f"tiny-random({m})" if tiny else m for m in cfg["models"]["clip"]]


def table_variants(df, cfg: dict) -> list[str]:
    """The config's variants (all declared ones when it names none) and every variant of the table."""
    return sorted(set(cfg.get("variants") or VARIANT_ORDER) | set(df["variant"]), key=variant_sort_key)


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


def columns_table(df, columns: list[tuple[str, str, str]], variants: list[str]) -> dict:
    """Rows = variants, one column per (metric, model, header): mean +- s.e. (n)."""
    rows = []
    for v in variants:
        cells, ns = [], []
        for metric, model, _ in columns:
            vals = df[(df["variant"] == v) & (df["metric"] == metric) & (df["model"] == model)]["value"].tolist()
            mean, se, n = mean_se(vals)
            ns.append(n)
            cells.append(fmt_mean_se(mean, se, n))
        if max(ns, default=0) == 0:
            continue
        n_txt = str(max(ns)) if min(ns) == max(ns) else "/".join(map(str, ns))
        rows.append({"label": VARIANT_NAMES.get(v, v), "code": v, "cells": [n_txt] + cells})
    return {"header": ["Variant", "n"] + [h for _, _, h in columns], "rows": rows}


def fidelity_section(df, variants: list[str], tiny: bool) -> dict | None:
    cols = []
    for metric, title in (("dino_i", "DINO-I"), ("clip_i", "CLIP-I")):
        labels = sorted(set(df[(df["metric"] == metric) & df["value"].notna()]["model"]), key=model_sort_key)
        cols += [(metric, m, [title, base_model(m)]) for m in labels]
    if not cols:
        return None
    return {"table": columns_table(df, cols, variants),
            "intro": ("Subject fidelity as in DreamBooth (Ruiz et al.): mean cosine similarity between the embeddings "
                      "of every fixed-camera view and every input photo of the subject, DINO ViT-S/16 (DINO-I) and "
                      "CLIP image embeddings (CLIP-I); higher = closer to the subject. Mean \u00b1 standard error "
                      "over subjects \u00d7 prompts \u00d7 seeds of the seed~N settings."
                      + (" Models: the tiny-random(...) random-weight stand-ins - meaningless." if tiny else ""))}


def janus_section(df, variants: list[str], tiny: bool) -> dict | None:
    labels = sorted(set(df[(df["metric"] == "janus") & df["value"].notna()]["model"]),
                    key=lambda m: (0 if "dino" in m.lower() else 1, model_sort_key(m)))
    if not labels:
        return None
    return {"table": columns_table(df, [("janus", m, ["Janus", base_model(m)]) for m in labels], variants),
            "intro": ("Janus score per embedder: mean cosine of the back views (|azimuth| \u2265 135\u00b0) to the front "
                      "view minus that of the side views; above 0 the back looks more like the front than the sides "
                      "do (the multi-face failure), lower = more 3D consistent. Comparable across variants for one "
                      "embedder only. Mean \u00b1 s.e. over subjects \u00d7 prompts \u00d7 seeds."
                      + (" Models: the tiny-random(...) random-weight stand-ins - meaningless." if tiny else ""))}


# ----------------------------------------------------------------------------- ablations
def _cell_of(group, value: str, seed: int) -> str | None:
    first = group.params[0]
    for s in group.settings:
        p = setting_params(s)
        if p[first] == value and parse_setting(s).get("seed") == str(seed):
            return s
    return None


def ablations_section(df, cfg: dict, runs: Runs, assets: Assets, fig_dir: Path, tiny: bool) -> list[dict]:
    items = []
    for k, g in enumerate(ablation_groups(df)):
        param = g.params[0]
        sub = df[df["setting"].isin(g.settings)]
        present = sorted(set(sub["variant"]), key=variant_sort_key)
        dep = [v for v in present if any(variant_depends(v, p) for p in g.params)] or present
        others = [v for v in present if v not in dep]
        numeric = all(as_number(v) is not None for v in g.values)
        xpos = {v: (as_number(v) if numeric else float(i)) for i, v in enumerate(g.values)}

        def series_keys(rows) -> list[tuple[str, str]]:
            keys = set()
            for s, v in zip(rows["setting"], rows["variant"]):
                rest = {p: x for p, x in setting_params(s).items() if p != param}
                keys.add((v, ", ".join(f"{p}={x}" for p, x in rest.items())))
            return sorted(keys, key=lambda kv: (variant_sort_key(kv[0]), kv[1]))

        panels, metric_cols = [], []
        for metric, label, higher in METRICS:
            model = metric_model(df, metric)
            msub = sub[(sub["metric"] == metric) & (sub["model"] == model) & sub["variant"].isin(dep)]
            if model is None or msub["value"].notna().sum() == 0:
                continue
            metric_cols.append((metric, model))
            series = []
            for variant, rest in series_keys(msub):
                xs, ys, ses = [], [], []
                for value in g.values:
                    cells = [s for s in g.settings if setting_params(s)[param] == value and
                             ", ".join(f"{p}={x}" for p, x in setting_params(s).items() if p != param) == rest]
                    vals = msub[(msub["variant"] == variant) & msub["setting"].isin(cells)]["value"].tolist()
                    mean, se, n = mean_se(vals)
                    if n:
                        xs.append(xpos[value]); ys.append(mean); ses.append(se)
                if xs:
                    series.append({"label": VARIANT_NAMES.get(variant, variant) + (f" ({rest})" if rest else ""),
                                   "x": xs, "y": ys, "se": ses})
            panels.append({"title": f"{label} ({base_model(model)})",
                           "ylabel": label + (" (higher = better)" if higher else " (lower = better)"),
                           "series": series})
        default = as_number(config_value(cfg, param)) if numeric else None
        fig = None
        if panels:
            name = f"fig/ablation_{k + 1:02d}.png"
            figures.ablation_figure(assets.build_dir / name, param, panels, default, tiny,
                                    xlabels=None if numeric else {xpos[v]: v for v in g.values})
            fig = name
        # table: one row per (value, variant), one column per metric (its primary model)
        rows = []
        for value in g.values:
            cells_v = [s for s in g.settings if setting_params(s)[param] == value]
            for variant in dep:
                vs = sub[(sub["variant"] == variant) & sub["setting"].isin(cells_v)]
                cells, ns = [], []
                for metric, model in metric_cols:
                    mean, se, n = mean_se(vs[(vs["metric"] == metric) & (vs["model"] == model)]["value"].tolist())
                    cells.append(fmt_mean_se(mean, se, n))
                    ns.append(n)
                if max(ns, default=0):
                    rows.append({"label": f"{param} = {value}", "code": variant,
                                 "cells": [str(max(ns))] + cells + [shares_cell(vs, runs)]})
        table = {"header": ["Cell", "n"] + [[METRIC_LABEL[m], base_model(mod)] for m, mod in metric_cols]
                 + ["gradient shares (training mean)"], "rows": rows}
        # images: the final NeRF of the most affected variant per value, for the first subjects
        show = V.METHOD if V.METHOD in dep else dep[0]
        strips = []
        seed = g.seeds[0] if g.seeds else 0
        for subject in sorted(set(sub["subject"]))[:MAX_ABLATION_SUBJECTS]:
            prompt_id = sorted(set(sub[sub["subject"] == subject]["prompt_id"]))[0]
            rows_img = []
            for value in g.values:
                cell = _cell_of(g, value, seed)
                if cell is None:
                    continue
                im = assets.strip(_variant_render(runs, cell, subject, prompt_id, show))
                if im is not None:
                    rows_img.append({"label": f"{param} = {value}", "note": "", "image": im})
            if rows_img:
                strips.append({"heading": f"{subject} / {prompt_id}, seed {seed}: "
                                          f"{VARIANT_NAMES.get(show, show)} ({show})", "rows": rows_img})
        n_seeds = len(g.seeds)
        seeds_note = (f"Seeds per cell: {n_seeds} ({', '.join(map(str, g.seeds))})."
                      + (" Fewer than 3: the points differ by chance as much as by the parameter - no difference "
                         "is claimed (run with seeds: [0, 1, 2] or more; ablations/README.md)." if n_seeds < 3 else ""))
        desc = " ".join(ABLATION_INFO.get(p, f"Sweep of {p} ({resolve_key(p)}).") for p in g.params)
        caption = (f"Metrics against {param} ({resolve_key(param)}): mean \u00b1 standard error over subjects "
                   f"\u00d7 prompts \u00d7 seeds per point; one model per metric (DINO where present, else the "
                   f"largest CLIP). Lines: the variants whose NeRF depends on {param}"
                   + (f"; not shown (their NeRF does not depend on it): {', '.join(others)}" if others else "")
                   + (f". Dotted: the config's value ({config_value(cfg, param)})." if default is not None else ".")
                   + (" Random-weight models: meaningless." if tiny else ""))
        items.append({"name": g.name, "key": ", ".join(resolve_key(p) for p in g.params), "description": desc,
                      "values": ", ".join(g.values), "cells": len(g.settings), "seeds_note": seeds_note,
                      "figure": fig, "caption": caption, "table": table, "strips": strips})
    return items


# ----------------------------------------------------------------------------- images of runs
def _variant_render(runs: Runs, setting: str, subject: str, prompt_id: str, variant: str) -> Path | None:
    """The fixed-camera turntable of a variant (eval GIF), else the stage's training turntable PNG."""
    gif = runs.eval_dir(setting, subject, prompt_id, variant) / V.EVAL_FILES["turntable"]
    if gif.is_file():
        return gif
    if variant not in V.VARIANTS:
        return None
    stage = V.STAGES[V.VARIANTS[variant].judged]
    png = runs.stage_dir(setting, stage.name, subject, prompt_id) / stage.dir / V.TURNTABLE
    return png if png.is_file() else None


def _metric_note(df, setting: str, subject: str, prompt_id: str, variant: str) -> str:
    sub = df[(df["setting"] == setting) & (df["subject"] == subject) & (df["prompt_id"] == prompt_id)
             & (df["variant"] == variant)]
    parts = []
    for metric in ("clip_r_precision", "dino_i", "janus"):
        model = metric_model(df[df["model"] != "ground truth"], metric)
        vals = sub[(sub["metric"] == metric) & (sub["model"] == model)]["value"].tolist()
        if vals and vals[0] == vals[0]:
            parts.append(f"{METRIC_LABEL[metric]} {vals[0]:.3f}")
    for metric, label in (("psnr", "PSNR"), ("chamfer", "Chamfer")):  # synthetic track: ground truth
        vals = sub[(sub["metric"] == metric) & (sub["model"] == "ground truth")]["value"].tolist()
        if vals and vals[0] == vals[0]:
            parts.append(f"{label} {vals[0]:.3f}")
    return " \u00b7 ".join(parts)


def _prompt_text(runs: Runs, setting: str, subject: str, prompt_id: str) -> str | None:
    for variant in sorted(VARIANT_NAMES, key=variant_sort_key):
        pool = runs.eval_dir(setting, subject, prompt_id, variant) / V.RETRIEVAL_POOL
        if pool.is_file():
            try:
                return str(json.loads(pool.read_text()).get("prompt") or "") or None
            except (OSError, ValueError):
                return None
    return None


def gallery_rows(df, runs: Runs, subjects_dir: Path, assets: Assets, setting: str, subject: str,
                 prompt_id: str, photos: bool = True) -> list[dict]:
    rows = []
    if photos:
        im = assets.strip(subject_photos(subjects_dir / subject))
        if im is not None:
            rows.append({"label": "Input photos", "note": f"data/subjects/{subject}", "image": im})
    present = set(df[(df["setting"] == setting) & (df["subject"] == subject) & (df["prompt_id"] == prompt_id)]["variant"])

    # along DreamBooth3D's chain (stage 1, the pseudo views, the final NeRF), then the baselines
    for kind, name in V.gallery_order():
        if kind == "preview":
            if V.METHOD not in present:
                continue
            stage = V.STAGES[name]
            file, label, note = stage.preview
            pv = runs.stage_dir(setting, name, subject, prompt_id) / stage.dir / file
            im = assets.strip(pv if pv.is_file() else None, units=2)
            if im is not None:
                rows.append({"label": label, "note": note, "image": im})
        elif name in present:
            im = assets.strip(_variant_render(runs, setting, subject, prompt_id, name))
            if im is not None:
                rows.append({"label": V.VARIANTS[name].gallery,
                             "note": _metric_note(df, setting, subject, prompt_id, name), "image": im})
    return rows


def galleries_section(df, cfg: dict, runs: Runs, subjects_dir: Path, assets: Assets) -> tuple[list[dict], str]:
    if len(df) == 0:
        return [], ""
    seeds = sorted({s for s in df["setting"] if is_seed_setting(s)}, key=lambda s: int(s.split("~")[1]))
    setting = seeds[0] if seeds else sorted(set(df["setting"]))[0]
    sub = df[df["setting"] == setting]
    out = []
    for subject in sorted(set(sub["subject"]))[:MAX_GALLERY_SUBJECTS]:
        entries = []
        for prompt_id in sorted(set(sub[sub["subject"] == subject]["prompt_id"])):
            rows = gallery_rows(df, runs, subjects_dir, assets, setting, subject, prompt_id, photos=not entries)
            if rows:
                entries.append({"heading": f"prompt {prompt_id}, setting {setting}",
                                "prompt": _prompt_text(runs, setting, subject, prompt_id), "rows": rows})
        out.append({"subject": subject, "entries": entries})
    return out, setting


def azimuth_text(runs: Runs, df, cfg: dict) -> str:
    for _, r in df[["setting", "subject", "prompt_id", "variant"]].drop_duplicates().iterrows():
        info = runs.eval_dir(r["setting"], r["subject"], r["prompt_id"], r["variant"]) / V.EVAL_FILES["info"]
        if info.is_file():
            try:
                az = json.loads(info.read_text()).get("azimuth_deg")
            except (OSError, ValueError):
                az = None
            if az:
                return ", ".join(f"{float(a):g}\u00b0" for a in az)
    n = int(cfg.get("eval", {}).get("num_views", 8))
    return ", ".join(f"{360 * i / n:g}\u00b0" for i in range(n))


# ----------------------------------------------------------------------------- failure cases
def failures_section(df, runs: Runs, subjects_dir: Path, assets: Assets, fig_dir: Path) -> list[dict]:
    items = []
    for k, fc in enumerate(select_failure_cases(df, runs.dir)):
        rows = []
        eval_setting = fc.setting
        if fc.kind == "divergence":
            # the metrics row whose NeRF it is: any setting of the table sharing this stage folder
            cand = df[(df["subject"] == fc.subject) & (df["prompt_id"] == fc.prompt_id) & (df["variant"] == fc.variant)]
            same = sorted(s for s in set(cand["setting"]) if wf.stage_setting(s, fc.stage) == fc.setting)
            eval_setting = fc.setting if fc.setting in same else (same[0] if same else fc.setting)
        im = assets.strip(subject_photos(subjects_dir / fc.subject))
        if im is not None:
            rows.append({"label": "Input photos", "note": "", "image": im})
        im = assets.strip(_variant_render(runs, eval_setting, fc.subject, fc.prompt_id, fc.variant))
        if im is not None:
            rows.append({"label": f"{VARIANT_NAMES.get(fc.variant, fc.variant)}",
                         "note": _metric_note(df, eval_setting, fc.subject, fc.prompt_id, fc.variant), "image": im})
        fig = None
        if fc.kind == "divergence":
            losses = read_losses(runs.path(fc.detail)) or []
            name = f"fig/loss_{k + 1:02d}.png"
            figures.loss_figure(assets.build_dir / name, losses, f"{fc.stage} loss: {fc.subject}/{fc.prompt_id}, {fc.setting}")
            fig = name
        value = "inf" if math.isinf(fc.value) else f"{fc.value:.4g}"
        items.append({"title": fc.title, "flagged_by": fc.metric, "value": value,
                      "run": f"setting {eval_setting}, subject {fc.subject}, prompt {fc.prompt_id}, variant {fc.variant}",
                      "detail": fc.detail, "rows": rows, "figure": fig})
    return items


# ----------------------------------------------------------------------------- user study
def userstudy_section(path: Path, fig_dir: Path, build_dir: Path) -> dict:
    out = {"intro": USER_STUDY_INTRO, "status": USER_STUDY_STATUS, "table": None, "figure": None, "note": ""}
    us = read_userstudy(path)
    if us is None:
        return out
    total = int(us["n_responses"].fillna(0).sum()) if "n_responses" in us.columns else 0
    if total == 0:
        out["status"] = "No responses yet (results/userstudy.tsv has no kept answers)."
        return out
    out["status"] = None

    def g(row, col):
        return row[col] if col in row.index else float("nan")

    rows, items = [], []
    for _, r in us.iterrows():
        q = str(r["question"])
        qname = USERSTUDY_QUESTIONS.get(q, q)
        bname = str(g(r, "baseline_name")) if isinstance(g(r, "baseline_name"), str) else VARIANT_NAMES.get(r["baseline"], r["baseline"])
        rate, lo, hi = (float(g(r, c)) for c in ("rate", "ci_low", "ci_high"))
        n_pairs = g(r, "n_pairs")
        pairs = "\u2014" if n_pairs != n_pairs else (f"{int(g(r, 'pairs_method'))}/{int(g(r, 'pairs_baseline'))}/"
                                                   f"{int(g(r, 'pairs_tied'))}")
        rows.append({"label": qname, "code": None, "cells": [
            f"{bname}", f"{int(g(r, 'n_responses'))} ({int(g(r, 'n_raters'))})",
            "\u2014" if rate != rate else f"{rate:.2f} [{lo:.2f}, {hi:.2f}]", fmt_num(g(r, "p_value"), 3),
            pairs, "\u2014" if g(r, "pair_rate") != g(r, "pair_rate") else
            f"{float(g(r, 'pair_rate')):.2f} [{float(g(r, 'pair_ci_low')):.2f}, {float(g(r, 'pair_ci_high')):.2f}]",
            fmt_num(g(r, "fleiss_kappa"), 2)]})
        items.append({"label": f"{qname} vs {bname}", "rate": rate, "lo": lo, "hi": hi})
    out["table"] = {"header": ["Question", "vs baseline", "answers (raters)", "prefer DreamBooth3D [95% CI]",
                               "p (binomial)", "pairs won/lost/tied", "pair rate [95% CI]", "Fleiss \u03ba"],
                    "rows": rows}
    figures.userstudy_figure(build_dir / "fig" / "userstudy.png", items)
    out["figure"] = "fig/userstudy.png"
    kept = us["raters_kept"].iloc[0] if "raters_kept" in us.columns else float("nan")
    dropped = us["raters_dropped"].iloc[0] if "raters_dropped" in us.columns else float("nan")
    out["note"] = (f"Raters kept (passed the attention checks): {fmt_num(kept, 0)}; dropped: {fmt_num(dropped, 0)}. "
                   f"Source: results/userstudy.tsv (sha256 {sha256_file(path)[:16]}).")
    return out


# ----------------------------------------------------------------------------- provenance
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


# stages with a record file, by their display name, in pipeline order; then the evaluation
STAGE_LABELS = {s.name: s.label for s in V.STAGE_LIST if s.record}
EVALUATE_LABEL = "evaluate"


def wall_times(df, runs: Runs) -> list[dict]:
    """Wall time per stage over the runs behind the metrics table (shared stages counted once)."""
    per_stage: dict[str, list[float]] = {}
    seen: set[str] = set()
    runs_df = df[["setting", "subject", "prompt_id", "variant"]].drop_duplicates() if len(df) else []
    for _, r in (runs_df.iterrows() if len(df) else []):
        files = [(STAGE_LABELS[st], wf.stage_file(r["setting"], st, r["subject"], r["prompt_id"], which=1))
                 for st in wf.VARIANT_STAGES.get(r["variant"], ()) if st in STAGE_LABELS]
        ev = runs.eval_dir(r["setting"], r["subject"], r["prompt_id"], r["variant"]) / V.EVAL_FILES["info"]
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
    order = list(STAGE_LABELS.values()) + [EVALUATE_LABEL]
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


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "open_clip_torch", "diffusers", "typst"):
        try:
            out.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return ", ".join(out)


# ----------------------------------------------------------------------------- main entry
def build_data(cfg: dict, metrics_path: Path, runs_dir: Path, build_dir: Path, *,
               userstudy: Path | None = None, subjects_dir: Path | None = None,
               ablation_dir: Path | None = None, prior_dir: Path | None = None) -> dict:
    """Everything the template shows (also writes the figures and image strips into build_dir)."""
    from . import groundtruth as gtm  # imports this module

    df = load_metrics(metrics_path)
    runs = Runs(runs_dir)
    backend = str(cfg.get("backend"))
    tiny = backend in STAND_IN_BACKENDS  # the CLIP/DINO metrics are random-weight stand-ins
    models = table_models(df, cfg)
    variants = table_variants(df, cfg)
    userstudy = Path(userstudy) if userstudy is not None else Path(metrics_path).parent / "userstudy.tsv"
    subjects_dir = Path(subjects_dir) if subjects_dir is not None else Path(runs_dir).parent / "data" / "subjects"
    ablation_dir = Path(ablation_dir) if ablation_dir is not None else Path(runs_dir).parent / "ablations"
    assets = Assets(build_dir)
    fig_dir = build_dir / "fig"
    fig_dir.mkdir(parents=True, exist_ok=True)

    main_df = df[df["setting"].map(is_seed_setting)] if len(df) else df
    if len(df) and len(main_df) == 0:
        main_df, scope = df, "all settings (no plain seed~N settings found)"
    else:
        scope = "the seed~N settings (the ablation cells are in section 2)"
    unit = "subjects \u00d7 prompts \u00d7 seeds"
    main_table, stats_r = results_table(
        main_df, "clip_r_precision", variants, models, True,
        intro=(f"Fraction of the fixed turntable views whose prompt CLIP ranks first among the retrieval pool "
               f"(all eval3d prompts of all subjects, class noun in, rare token out). Mean \u00b1 standard error over "
               f"{unit}; n = number of (subject, prompt, seed) runs; rows from {scope}."),
        note=("Paper: DreamBooth3D (Raj et al., ICCV 2023) Table 1; n/a = not reported there or not yet "
              "checked against the paper (db3d.report.build.PAPER_VALUES). The paper's retrieval pool and "
              "renders differ from ours, so the columns are comparable in trend, not digit by digit."
              + (f" Ours: random-weight CLIP stand-ins ({backend} backend) - meaningless." if tiny else "")))
    clipt_table, stats_t = results_table(
        main_df, "clip_t", variants, models, False,
        intro=f"Mean cosine similarity between the views and the prompt text (token removed); mean \u00b1 s.e. over {unit}.")

    figs = []
    if len(df):
        figures.rprecision_figure(fig_dir / "metrics.png", stats_r, stats_t, variants, models, VARIANT_NAMES,
                                  PAPER_VALUES, base_model, tiny)
        figs.append({"path": "fig/metrics.png",
                     "caption": ("CLIP R-Precision (left) and CLIP-T (right) per variant; bars: CLIP models, "
                                 "error bars: standard error, diamonds: paper (where known)."
                                 + (" Random-weight models: meaningless." if tiny else ""))})
    present_variants = [v for v in variants if v in set(main_df["variant"])] if len(main_df) else []
    fidelity = fidelity_section(main_df, present_variants, tiny) if len(main_df) else None
    janus = janus_section(main_df, present_variants, tiny) if len(main_df) else None
    groundtruth = (gtm.groundtruth_section(main_df, variants, fig_dir, reference=gtm.reference_rows(metrics_path))
                   if len(main_df) else None)
    objective = objective_section(main_df, runs, variants, VARIANT_NAMES, fig_dir)
    toy = backend == "toy"
    prior_info = None
    if toy:
        folder = Path(prior_dir) if prior_dir is not None else gtm.prior_dir(cfg, Path(runs_dir).parent)
        prior_info = gtm.prior_info(folder, str(prior_dir if prior_dir is not None else
                                                 cfg.get("models", {}).get("toy") or folder))

    ablations = ablations_section(df, cfg, runs, assets, fig_dir, tiny) if len(df) else []
    named = list(cfg.get("ablations", []) or [])
    ablation_intro = ("Each ablation is a table in ablations/ (one row per cell, each row run with every seed of "
                      "the config; ablations/README.md). A cell re-runs only the stages that depend on its "
                      "parameters and reuses the rest. Tables named in this config: "
                      + (", ".join(named) if named else "none") + ".")
    ablation_empty = (None if ablations else
                      "No ablation cells in the metrics table. Run one, e.g. snakemake --cores all reports/main.pdf "
                      "--config 'ablations=[recon_weight]'.")

    failures = failures_section(df, runs, subjects_dir, assets, fig_dir) if len(df) else []
    galleries, gallery_setting = galleries_section(df, cfg, runs, subjects_dir, assets)
    user_study = userstudy_section(userstudy, fig_dir, build_dir)

    settings = sorted(set(df["setting"])) if len(df) else []
    configs = scan_configs(runs, settings + wf.main_settings(cfg) if cfg.get("seeds") else settings)
    wall = wall_times(df, runs)
    cpu, gpu = hardware_info()
    subjects = sorted(set(df["subject"])) if len(df) else []
    prompts = sorted(set(zip(df["subject"], df["prompt_id"]))) if len(df) else []
    seeds = sorted({int(s) for s in df["seed"]}) if len(df) else []
    summary = [
        f"Inputs: {Path(metrics_path).name} (sha256 {sha256_file(metrics_path)[:16]}), {len(df)} metric rows; "
        f"runs folder {Path(runs_dir).name}/ with {len(configs)} setting config(s).",
        f"Subjects ({len(subjects)}): {', '.join(subjects) or 'none'}; subject-prompt pairs: {len(prompts)}; "
        f"seeds: {', '.join(map(str, seeds)) or 'none'}; settings: {len(settings)} "
        f"({len(ablations)} ablation(s)).",
        f"Variants: {', '.join(f'{VARIANT_NAMES.get(v, v)} ({v})' for v in variants)}.",
    ]
    tables = []
    for name in named:
        p = ablation_dir / f"{name}.tsv"
        tables.append(f"{name} ({sha256_file(p)[:16]})" if p.is_file() else f"{name} (missing)")
    dino = metric_model(df, "dino_i") if len(df) else None
    toy_sha = prior_info["sha"] if prior_info else None
    provenance = {
        "items": [
            ["git commit", git_info()],
            ["backend", str(cfg.get("backend"))],
            ["model ids", model_ids(cfg, models, dino, toy_sha)],
            *(gtm.prior_provenance(prior_info) if prior_info else []),
            ["seeds", f"in metrics: {', '.join(map(str, seeds)) or 'none'}; config seeds: "
                      f"{', '.join(map(str, cfg.get('seeds', [])))}"],
            ["report config hash", canonical_hash(cfg)],
            ["metrics table sha256", sha256_file(metrics_path)],
            ["ablation tables (sha256)", ", ".join(tables) or "none"],
            ["user study table", f"{userstudy.name} (sha256 {sha256_file(userstudy)[:16]})" if userstudy.is_file()
             else "absent"],
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
        "warning": ({"headline": WARNING_HEADLINE, "body": WARNING_BODY, "short": WARNING_SHORT}
                    if backend == "tiny" else None),
        "toy_note": gtm.toy_note(prior_info) if prior_info else None,
        "prior": gtm.prior_section(prior_info, build_dir) if prior_info else None,
        "groundtruth": groundtruth,
        "objective": objective,
        "summary": summary,
        "main_table": main_table,
        "clipt_table": clipt_table,
        "figures": figs,
        "fidelity": fidelity,
        "janus": janus,
        "ablation_intro": ablation_intro,
        "ablation_empty": ablation_empty,
        "ablations": ablations,
        "failure_intro": ("Chosen automatically over every run of the metrics table (main and ablation cells): the "
                          "worst Janus score, the lowest subject fidelity (DINO-I, else CLIP-I) and the highest loss "
                          "divergence of a NeRF stage (median loss of the last quarter of the steps over the first "
                          "quarter, runs with non-finite losses first). Each only when its data exist."),
        "failures": failures,
        "gallery_intro": ("Per subject, the first prompt-seed runs side by side: the input photos, the initial NeRF "
                          "(stage 1), the pseudo multi-view images (stage 2), the final DreamBooth3D NeRF and the "
                          "baselines. NeRF rows are the fixed evaluation cameras the metrics are computed on "
                          f"(azimuth {azimuth_text(runs, df, cfg) if len(df) else '-'}), else the training "
                          f"turntable; setting {gallery_setting or '-'}; under each label its R@1, DINO-I and Janus "
                          "(primary models) where present."),
        "galleries": galleries,
        "provenance": provenance,
        "user_study": user_study,
    }


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


def build_report(cfg: dict, metrics_path: Path, runs_dir: Path, out_pdf: Path, *,
                 userstudy: Path | None = None, subjects_dir: Path | None = None,
                 ablation_dir: Path | None = None, prior_dir: Path | None = None) -> Path:
    """Typeset the report PDF from the metrics table and the run folders; returns `out_pdf`.

    Defaults: `userstudy` = userstudy.tsv beside the metrics table (read when present),
    `subjects_dir` = data/subjects and `ablation_dir` = ablations/ beside the runs folder; with
    backend toy, `prior_dir` = `cfg["models"]["toy"]` (relative: to the runs folder's parent)."""
    metrics_path, runs_dir, out_pdf = Path(metrics_path), Path(runs_dir), Path(out_pdf)
    build_dir = out_pdf.parent / "build" / out_pdf.stem
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    data = build_data(cfg, metrics_path, runs_dir, build_dir, userstudy=userstudy, subjects_dir=subjects_dir,
                      ablation_dir=ablation_dir, prior_dir=prior_dir)
    (build_dir / "data.json").write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    shutil.copyfile(TEMPLATE_PATH, build_dir / "main.typ")
    pdf = compile_typst(build_dir)
    with atomic_path(out_pdf) as tmp:
        tmp.write_bytes(pdf)
    log.info("report: %s (%d bytes; build folder %s)", out_pdf, len(pdf), build_dir)
    return out_pdf
