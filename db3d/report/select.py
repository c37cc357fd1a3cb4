"""What the report picks out of the metrics table and the run folders: ablation groups, the model
each summary uses, loss divergence, the failure cases, the user-study summary.

Pure functions of their inputs (a metrics DataFrame with `db3d.eval.table.METRIC_COLUMNS`, the runs
folder): ties are broken by sorting on the run's identity, so the choice is deterministic.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import workflow as wf
from ..config import parse_setting, resolve_key

# Metrics the report knows, in display order: (name, short label, higher is better)
METRICS = [
    ("clip_r_precision", "CLIP R@1", True),
    ("clip_t", "CLIP-T", True),
    ("dino_i", "DINO-I", True),
    ("clip_i", "CLIP-I", True),
    ("janus", "Janus", False),
]
METRIC_LABEL = {m: label for m, label, _ in METRICS}
HIGHER_IS_BETTER = {m: hib for m, _, hib in METRICS}
# Preference of embedders for a one-model summary (ablation plots, failure cases): DINO first
# where it exists (fidelity, Janus), then the largest CLIP.
MODEL_PREFERENCE = ["dino", "ViT-L-14", "ViT-B-16", "ViT-B-32"]

# Ground-truth failure cases, in order: (metric, title, worst is the max, what it measures)
GT_MODEL = "ground truth"
GT_FAILURES = [
    ("janus_gt", "Worst Janus (GT)", True, "fraction of back views that show the front"),
    ("psnr_back", "Worst back-view PSNR", False, "PSNR of the views with |azimuth| >= 135 deg against the truth"),
    ("lpips", "Worst LPIPS", True, "LPIPS (AlexNet) of the renders against the truth"),
]
MAX_COLLAPSED = 6   # collapsed runs shown one by one; the rest are counted


def base_model(label: str) -> str:
    """`tiny-random(ViT-B-16)` -> `ViT-B-16`; real labels pass through."""
    m = re.fullmatch(r"tiny-random\((.*)\)", str(label))
    return m.group(1) if m else str(label)


def is_seed_setting(setting: str) -> bool:
    return re.fullmatch(r"seed~\d+", str(setting)) is not None


def primary_model(labels) -> str | None:
    """The model a one-model summary uses, among `labels` (see MODEL_PREFERENCE)."""
    labels = sorted(set(labels) - {""})
    if not labels:
        return None

    def rank(label: str) -> tuple:
        b = base_model(label)
        for i, pref in enumerate(MODEL_PREFERENCE):
            if (pref == "dino" and "dino" in b.lower()) or b == pref:
                return (i, label)
        return (len(MODEL_PREFERENCE), label)

    return min(labels, key=rank)


def metric_model(df, metric: str) -> str | None:
    """The primary model of `metric` in the table (None when the metric is absent)."""
    sub = df[(df["metric"] == metric) & df["value"].notna()]
    return primary_model(sub["model"]) if len(sub) else None


def setting_params(setting: str) -> dict[str, str]:
    """The non-seed parameters of a setting (`recon_weight~0.1/seed~0` -> {"recon_weight": "0.1"})."""
    return {k: v for k, v in parse_setting(setting).items() if k != "seed"}


def as_number(value: str) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def variant_depends(variant: str, param: str) -> bool:
    """Whether the NeRF `variant` is judged by depends on the config key behind `param`."""
    stage = wf.VARIANT_NERF.get(variant, (None,))[0]
    if stage is None:
        return True
    key = resolve_key(param)
    return any(key == p or key.startswith(p + ".") for p in wf.STAGE_KEYS[stage])


@dataclass
class AblationGroup:
    params: tuple[str, ...]                 # e.g. ("recon_weight",)
    settings: list[str]                     # every cell (all seeds)
    values: list[str] = field(default_factory=list)   # values of params[0], sorted
    seeds: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return " \u00d7 ".join(self.params)


def ablation_groups(df) -> list[AblationGroup]:
    """Cells of the metrics table grouped by the parameters they set (seed aside), one group per
    ablation table in effect; values sorted numerically where they are numbers."""
    groups: dict[tuple[str, ...], AblationGroup] = {}
    for setting in sorted(set(df["setting"])):
        params = setting_params(setting)
        if not params:
            continue
        key = tuple(params)
        g = groups.setdefault(key, AblationGroup(params=key, settings=[]))
        g.settings.append(setting)
    for g in groups.values():
        first = g.params[0]
        vals = {setting_params(s)[first] for s in g.settings}
        g.values = sorted(vals, key=lambda v: (as_number(v) is None, as_number(v) or 0.0, v))
        sub = df[df["setting"].isin(g.settings)]
        g.seeds = sorted({int(s) for s in sub["seed"]})
    return [groups[k] for k in sorted(groups)]


# ----------------------------------------------------------------------------- losses
def read_losses(path: Path) -> list[float] | None:
    """The per-step `loss` values of a losses.json (NaN/inf kept), or None when unreadable."""
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    steps = obj.get("steps") if isinstance(obj, dict) else obj
    if not isinstance(steps, list):
        return None
    out = []
    for s in steps:
        if isinstance(s, dict) and "loss" in s:
            v = s["loss"]
            try:
                out.append(float(v) if v is not None else float("nan"))
            except (TypeError, ValueError):
                out.append(float("nan"))
    return out


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    n = len(xs)
    return xs[n // 2] if n % 2 else 0.5 * (xs[n // 2 - 1] + xs[n // 2])


def loss_divergence(losses: list[float]) -> dict[str, Any] | None:
    """How much a run's loss grew: `ratio` = median loss over the last quarter of the steps /
    median over the first quarter (robust to SDS's random-timestep spikes), and `nonfinite` =
    steps whose loss is NaN or inf. None with fewer than 2 steps."""
    if losses is None or len(losses) < 2:
        return None
    nonfinite = sum(1 for v in losses if not math.isfinite(v))
    finite = [v for v in losses if math.isfinite(v)]
    q = max(1, len(losses) // 4)
    first = [v for v in losses[:q] if math.isfinite(v)]
    last = [v for v in losses[-q:] if math.isfinite(v)]
    if not first or not last:
        ratio = float("inf")
    else:
        a, b = _median(first), _median(last)
        ratio = b / a if a > 0 else (float("inf") if b > a else 1.0)
    return {"ratio": ratio, "nonfinite": nonfinite, "steps": len(losses), "finite": len(finite)}


def divergence_score(d: dict) -> tuple:
    """Sort key, larger = worse: any non-finite loss first, then the ratio."""
    return (d["nonfinite"] > 0, d["nonfinite"], d["ratio"])


# ----------------------------------------------------------------------------- failure cases
@dataclass
class FailureCase:
    kind: str            # collapsed | groundtruth | janus | fidelity | divergence
    title: str
    metric: str          # what flagged it, in words
    value: float
    setting: str         # the setting of the metrics row (divergence: the stage's own folder)
    subject: str
    prompt_id: str
    variant: str
    model: str = ""
    stage: str = ""
    detail: str = ""


def _run_sort_key(row) -> tuple:
    return (str(row["setting"]), str(row["subject"]), str(row["prompt_id"]), str(row["variant"]))


def _extreme_row(sub, worst_is_max: bool):
    rows = [r for _, r in sub.iterrows() if r["value"] == r["value"]]  # drop NaN
    if not rows:
        return None
    rows.sort(key=_run_sort_key)  # ties: first run in sorted order
    best = rows[0]
    for r in rows[1:]:
        if (r["value"] > best["value"]) if worst_is_max else (r["value"] < best["value"]):
            best = r
    return best


def is_stand_in(label: str) -> bool:
    """A random-weight stand-in model's label (`tiny-random(...)`): its scores mean nothing."""
    return str(label).startswith("tiny-random(")


def _run_key(r) -> tuple:
    return (r["setting"], r["subject"], r["prompt_id"], r["variant"])


def collapsed_runs(df) -> list[tuple]:
    """(setting, subject, prompt_id, variant) of every run whose NeRF collapsed, in run order."""
    col = df[(df["metric"] == "collapsed") & (df["value"] >= 0.5)] if len(df) else df
    return sorted({_run_key(r) for _, r in col.iterrows()}) if len(col) else []


def select_failure_cases(df, runs_dir: Path, stand_in: bool | None = None) -> list[FailureCase]:
    """The failure cases of every run of the metrics table (main and ablation cells), chosen by what
    is true; each only when its data exist:

    1. collapsed NeRFs first (the `collapsed` metric, db3d.eval.coverage), at most MAX_COLLAPSED;
    2. with ground-truth rows (synthetic track): the worst Janus (GT), back-view PSNR and LPIPS
       (GT_FAILURES) among the runs that did not collapse (all runs when every one did);
    3. without them, and only when the CLIP/DINO models are real (`stand_in` False; default: no
       model label is a `tiny-random(...)` stand-in): the largest `janus` of the primary model and
       the smallest `dino_i` (else `clip_i`). Random-weight stand-ins never choose a case.
    4. the highest loss divergence: over the losses.json of each run's NeRF stage (stage3, stage1,
       naive, latent_nerf as the variant says), the largest `loss_divergence` (non-finite losses
       first); its `setting` is the stage's own folder (db3d.workflow.stage_setting), `detail` the file."""
    runs_dir = Path(runs_dir)
    out: list[FailureCase] = []
    if len(df) == 0:
        return out
    if stand_in is None:
        stand_in = any(is_stand_in(m) for m in set(df["model"]))

    dead = collapsed_runs(df)
    coverage = {_run_key(r): float(r["value"]) for _, r in df[df["metric"] == "coverage"].iterrows()}
    for key in dead[:MAX_COLLAPSED]:
        cov = coverage.get(key, float("nan"))
        rest = f"; {len(dead) - MAX_COLLAPSED} more collapsed runs not shown" if len(dead) > MAX_COLLAPSED else ""
        out.append(FailureCase("collapsed", "Collapsed NeRF (empty scene)",
                               f"collapsed (coverage {cov:.3f}, below eval.collapse_coverage){rest}", cov, *key,
                               model="opacity", detail="the background explains the views; the NeRF is empty"))

    gt = df[df["model"] == GT_MODEL]
    if len(gt):
        alive = gt[[_run_key(r) not in set(dead) for _, r in gt.iterrows()]]
        pool, scope = (alive, "the runs that did not collapse") if len(alive) else (gt, "all runs (all collapsed)")
        for metric, title, worst_max, what in GT_FAILURES:
            r = _extreme_row(pool[pool["metric"] == metric], worst_is_max=worst_max)
            if r is not None:
                out.append(FailureCase("groundtruth", title,
                                       f"{metric} (ground truth), the {'highest' if worst_max else 'lowest'} of "
                                       f"{scope}", float(r["value"]), r["setting"], r["subject"], r["prompt_id"],
                                       r["variant"], model=GT_MODEL, detail=what))
    elif not stand_in:
        model = metric_model(df, "janus")
        if model is not None:
            r = _extreme_row(df[(df["metric"] == "janus") & (df["model"] == model)], worst_is_max=True)
            if r is not None:
                out.append(FailureCase("janus", "Worst Janus score", f"janus ({model}), the highest of all runs",
                                       float(r["value"]), r["setting"], r["subject"], r["prompt_id"], r["variant"],
                                       model=model,
                                       detail="back views resemble the front more than the side views do"))
        for metric in ("dino_i", "clip_i"):
            model = metric_model(df, metric)
            if model is None:
                continue
            r = _extreme_row(df[(df["metric"] == metric) & (df["model"] == model)], worst_is_max=False)
            if r is not None:
                out.append(FailureCase("fidelity", "Lowest subject fidelity",
                                       f"{metric} ({model}), the lowest of all runs", float(r["value"]),
                                       r["setting"], r["subject"], r["prompt_id"], r["variant"], model=model,
                                       detail="mean cosine between the views and the subject's photos"))
                break

    seen: set[str] = set()
    best: tuple | None = None
    runs = df[["setting", "subject", "prompt_id", "variant"]].drop_duplicates()
    for _, r in sorted(runs.iterrows(), key=lambda kv: _run_sort_key(kv[1])):
        stage = wf.VARIANT_NERF.get(r["variant"], (None,))[0]
        if stage is None:
            continue
        rel = wf.stage_file(r["setting"], stage, r["subject"], r["prompt_id"], which=1)
        if rel is None or rel in seen:
            continue
        seen.add(rel)
        path = runs_dir / rel.removeprefix("runs/")
        if not path.is_file():
            continue
        d = loss_divergence(read_losses(path))
        if d is None:
            continue
        if best is None or divergence_score(d) > divergence_score(best[0]):
            best = (d, r, stage, rel)
    if best is not None:
        d, r, stage, rel = best
        ratio = "inf" if math.isinf(d["ratio"]) else f"{d['ratio']:.3g}"
        out.append(FailureCase(
            "divergence", "Highest loss divergence",
            f"loss divergence of {stage}: median loss of the last / first quarter of the steps = {ratio}; "
            f"{d['nonfinite']} of {d['steps']} steps non-finite",
            d["ratio"], wf.stage_setting(r["setting"], stage), r["subject"], r["prompt_id"], r["variant"],
            stage=stage, detail=rel))
    return out


# ----------------------------------------------------------------------------- user study
USERSTUDY_QUESTIONS = {"subject": "Subject fidelity", "consistency": "3D consistency", "prompt": "Prompt fidelity"}


def read_userstudy(path: Path):
    """results/userstudy.tsv (docs/userstudy.md) as a DataFrame, or None when absent/empty."""
    import pandas as pd

    path = Path(path)
    if not path.is_file() or path.stat().st_size == 0:
        return None
    df = pd.read_csv(path, sep="\t", dtype={"question": str, "baseline": str})
    if len(df) == 0 or "rate" not in df.columns:
        return None
    return df
