"""The synthetic track's sections of the report: the trained `toy` prior and the ground-truth metrics.

On the synthetic track the subjects are procedurally generated objects with known geometry and the
evaluation adds rows with `model == "ground truth"` to metrics.tsv (GT_METRICS). This module turns
them into:

- `groundtruth_section`: a table per variant (mean +- s.e. over (subject, seed) runs, n), a
  per-subject table, a figure (psnr, silhouette_iou, chamfer, janus_gt per variant), and the
  headline: DreamBooth3D against each baseline as the mean paired difference over matched runs,
  judged by paired t-tests with Holm's correction over all the headline's comparisons
  (`db3d.report.verdicts`, `judge`, `verdict`) and put into one sentence per baseline
  (`headline_sentence`); nothing in it is written by hand.
- `prior_section`: the `toy` prior's checkpoint folder (`cfg["models"]["toy"]`: samples.png,
  train_log.json, model.safetensors): the sample grid, its training numbers and loss curve, and
  the provenance rows (checkpoint sha256, steps, wall time). A missing file gives a sentence.

`db3d.report.build.build_data` calls both; the template shows them only when they are not None.
"""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

from .figures import groundtruth_figure, prior_loss_figure
from .verdicts import ALPHA, holm, paired_t_pvalue, rule_text
from .common import BASELINE_WORDS, BASELINES, METHOD, VARIANT_NAMES, columns_table, sha256_file, variant_sort_key
from .select import GT_MODEL
from .stats import fmt_mean_se, mean_se

# (metric, label, unit, higher is better), in display order
GT_METRICS = [
    ("psnr", "PSNR", "dB", True),
    ("psnr_back", "back-view PSNR", "dB", True),
    ("ssim", "SSIM", "", True),
    ("lpips", "LPIPS", "AlexNet", False),
    ("silhouette_iou", "silhouette IoU", "", True),
    ("chamfer", "Chamfer distance", "world units", False),
    ("janus_gt", "Janus (GT)", "fraction", False),
]
GT_LABEL = {m: label for m, label, _, _ in GT_METRICS}
GT_UNIT = {m: unit for m, _, unit, _ in GT_METRICS}
GT_HIGHER = {m: hib for m, _, _, hib in GT_METRICS}
PLOT_METRICS = ["psnr", "silhouette_iou", "chamfer", "janus_gt"]
# the headline: METHOD against each of BASELINES (db3d.report.common), where both have ground-truth rows
# a run: what two variants' rows must share to be paired (seed~N settings: the seed; subject; prompt)
PAIR_KEYS = ("setting", "subject", "prompt_id", "seed")
BETTER, WORSE, UNCLEAR, NO_DATA = "better", "worse", "no clear difference", "no data"
# reference rows (db3d.eval.reference, results/reference.tsv): shown under the variants, never judged
REFERENCE_NAMES = {"untrained": "Untrained field (reference)",
                   "oracle": "Oracle NeRF (reference, fit to true renders)"}

# what the report reads from the checkpoint folder (rules/report.smk can list them as inputs)
PRIOR_FILES = ("samples.png", "train_log.json", "model.safetensors")
PRIOR_MAX_CM = (17.0, 15.0)     # widest, tallest sample grid
PRIOR_MIN_PX = 1400             # narrower sample grids are upscaled (nearest neighbour, integer factor)
PRIOR_MAX_UPSCALE = 16


def arrow(metric: str) -> str:
    h = GT_HIGHER.get(metric)
    return "" if h is None else ("\u2191" if h else "\u2193")


def gt_rows(df):
    """The ground-truth rows of a metrics table (may be empty)."""
    return df[df["model"] == GT_MODEL] if len(df) else df


def reference_rows(metrics_path: Path):
    """The reference rows beside the metrics table (results/reference.tsv), main (seed~N) cells only."""
    from ..eval.reference import load_reference
    from .select import is_seed_setting

    ref = load_reference(Path(metrics_path).parent)
    return ref[ref["setting"].map(is_seed_setting)] if len(ref) else ref


def _reference_table_rows(ref, cols) -> list[dict]:
    present = [k for k in REFERENCE_NAMES if len(ref) and k in set(ref["variant"])]
    rows = columns_table(ref, cols, present)["rows"] if present else []
    for r in rows:
        r["label"] = REFERENCE_NAMES[r["code"]]
    return rows


# what each reference row says, for the section's intro
REFERENCE_SENTENCES = {
    "untrained": ("the untrained field (the initial NeRF at each seed, not one step of training) brackets "
                  "the variants from below - a variant near it learnt little about the object; if all are, "
                  "the comparison below is between failures"),
    "oracle": ("the oracle NeRF (the same initial NeRF, fit for as many steps as stage 1 by reconstruction "
               "to true renders from all around the object, no diffusion model) brackets them from above - "
               "what this NeRF scores when it is shown the answer"),
}


def _reference_sentence(refs: list[str]) -> str:
    parts = [REFERENCE_SENTENCES[r] for r in refs if r in REFERENCE_SENTENCES]
    if not parts:
        return ""
    return (f" Reference row{'s' if len(parts) > 1 else ''}, below the variants, through the same evaluation: "
            + "; ".join(parts) + ".")


def gt_metrics(gt) -> list[str]:
    """Ground-truth metrics with at least one value: GT_METRICS order, unknown names after (sorted)."""
    have = set(gt[gt["value"].notna()]["metric"]) if len(gt) else set()
    known = [m for m, *_ in GT_METRICS if m in have]
    return known + sorted(have - set(known))


# ----------------------------------------------------------------------------- paired differences
def verdict(mean: float, n: int, rejected: bool, higher_is_better: bool) -> str:
    """`better`/`worse` when the comparison's null was rejected (`db3d.report.verdicts`; mean =
    method - baseline, its sign read in the metric's direction), else `no clear difference`;
    `no data` without pairs."""
    if n == 0 or mean != mean:
        return NO_DATA
    if not rejected:
        return UNCLEAR
    gain = mean if higher_is_better else -mean
    return BETTER if gain > 0 else WORSE


def judge(results: list[dict], alpha: float = ALPHA) -> list[dict]:
    """Holm over the family `results` (`paired_difference` dicts): each gets `p_holm`, `rejected`
    and its `verdict` (in place; also returned). The family is the comparisons with a p-value."""
    adjusted, rejected = holm([r["p"] for r in results], alpha)
    for r, adj, rej in zip(results, adjusted, rejected):
        r["p_holm"], r["rejected"] = float(adj), bool(rej)
        r["verdict"] = verdict(r["mean"], r["n"], bool(rej), r["higher"])
    return results


def paired_difference(df, metric: str, a: str = METHOD, b: str = "naive",
                      higher_is_better: bool | None = None) -> dict[str, Any]:
    """Variant `a` minus variant `b` on `metric`, over the runs both have (matched on PAIR_KEYS
    present in `df`): {"metric", "a", "b", "mean", "se", "n", "dropped", "higher", "p", "p_holm",
    "rejected", "verdict"}.

    `df`: long-format metric rows (already restricted to one model, e.g. `gt_rows`). A pair with a
    NaN or infinite value on either side is dropped (counted in `dropped`, not in n). `p`: the
    paired t-test's; the verdict here judges this comparison alone (a family of one): `headline`
    re-judges all its comparisons together (`judge`). The direction is the metric's (`GT_HIGHER`
    unless `higher_is_better` is given)."""
    higher = GT_HIGHER.get(metric, True) if higher_is_better is None else higher_is_better
    keys = [k for k in PAIR_KEYS if k in df.columns]
    sub = df[df["metric"] == metric] if len(df) else df

    def by_run(variant: str) -> dict[tuple, float]:
        s = sub[sub["variant"] == variant]
        return {tuple(k): float(v) for *k, v in zip(*(s[c] for c in keys), s["value"])}

    va, vb = by_run(a), by_run(b)
    diffs, dropped = [], 0
    for key in sorted(set(va) & set(vb), key=lambda k: tuple(map(str, k))):
        x, y = va[key], vb[key]
        if math.isfinite(x) and math.isfinite(y):
            diffs.append(x - y)
        else:
            dropped += 1
    mean, se, n = mean_se(diffs)
    res = {"metric": metric, "a": a, "b": b, "mean": mean, "se": se, "n": n, "dropped": dropped,
           "higher": higher, "p": paired_t_pvalue(diffs)}
    return judge([res])[0]


def _join(labels: list[str]) -> str:
    return ", ".join(labels)


def headline_sentence(results: list[dict], baseline: str) -> str:
    """`On the synthetic track, DreamBooth3D beats naive on X, Y; is worse on Z; no clear difference
    on W.` from the `paired_difference` results of one baseline (empty groups left out)."""
    name = BASELINE_WORDS.get(baseline, baseline)
    groups = {v: [GT_LABEL.get(r["metric"], r["metric"]) for r in results if r["verdict"] == v]
              for v in (BETTER, WORSE, UNCLEAR)}
    parts: list[str] = []
    if groups[BETTER]:
        parts.append(f"beats {name} on {_join(groups[BETTER])}")
    if groups[WORSE]:
        parts.append(f"is worse on {_join(groups[WORSE])}" if parts else
                     f"is worse than {name} on {_join(groups[WORSE])}")
    if groups[UNCLEAR]:
        parts.append(f"no clear difference on {_join(groups[UNCLEAR])}" if parts else
                     f"shows no clear difference from {name} on {_join(groups[UNCLEAR])}")
    if not parts:
        return f"On the synthetic track, DreamBooth3D and {name} have no matched ground-truth runs."
    return "On the synthetic track, DreamBooth3D " + "; ".join(parts) + "."


def headline_short(results: list[dict], baseline: str) -> str:
    """The title page's form: `vs naive (n = 6): better on X; worse on Z; no clear difference on W`."""
    name = BASELINE_WORDS.get(baseline, baseline)
    ns = sorted({r["n"] for r in results})
    n_txt = "/".join(map(str, ns)) if ns else "0"
    parts = []
    for v in (BETTER, WORSE, UNCLEAR):
        labels = [GT_LABEL.get(r["metric"], r["metric"]) for r in results if r["verdict"] == v]
        if labels:
            parts.append(f"{v} on {_join(labels)}")
    return f"vs {name} (n = {n_txt} runs): " + ("; ".join(parts) if parts else "no matched runs")


def _p_text(r: dict) -> str:
    p, adj = r["p"], r.get("p_holm", math.nan)
    if p != p:
        return "-" if r["n"] < 2 else "- (no spread)"
    return f"{p:.2g} ({adj:.2g})"


def headline(gt, metrics: list[str], alpha: float = ALPHA) -> dict | None:
    """Per baseline present: the paired results, the sentence, its short form and the table rows;
    every comparison judged in ONE family (Holm over all baselines and metrics, `judge`)."""
    present = set(gt["variant"]) if len(gt) else set()
    if METHOD not in present:
        return None
    known = [m for m in metrics if m in GT_HIGHER]
    per_baseline = [(b, [paired_difference(gt, m, METHOD, b) for m in known]) for b in BASELINES if b in present]
    if not per_baseline:
        return None
    family = judge([r for _, res in per_baseline for r in res], alpha)
    m = sum(1 for r in family if r["p"] == r["p"])
    ns = sorted({r["n"] for r in family if r["p"] == r["p"]})
    comparisons, rows = [], []
    for b, res in per_baseline:
        comparisons.append({"baseline": b, "sentence": headline_sentence(res, b), "short": headline_short(res, b)})
        for i, r in enumerate(res):  # the baseline named on its first row only
            rows.append({"baseline": f"vs {VARIANT_NAMES.get(b, b)}" if i == 0 else "", "code": b if i == 0 else "",
                         "metric": f"{GT_LABEL[r['metric']]} {arrow(r['metric'])}",
                         "diff": fmt_mean_se(r["mean"], r["se"], r["n"]),
                         "n": str(r["n"]) + (f" ({r['dropped']} dropped)" if r["dropped"] else ""),
                         "p": _p_text(r), "verdict": r["verdict"]})
    rule = rule_text(m, alpha)
    n_txt = "/".join(map(str, ns)) if ns else "0"
    return {"comparisons": comparisons, "rows": rows, "family": m, "alpha": alpha,
            "sentence": " ".join(c["sentence"] for c in comparisons),
            "short": [c["short"] for c in comparisons],
            "rule": rule, "rule_short": f"{rule}; n = {n_txt} pairs"}


# ----------------------------------------------------------------------------- the section
def _header(metric: str) -> list[str]:
    label = f"{GT_LABEL.get(metric, metric)} {arrow(metric)}".strip()
    unit = GT_UNIT.get(metric, "")
    return [label, unit] if unit else [label]


def groundtruth_section(df, variants: list[str], fig_dir: Path, reference=None) -> dict | None:
    """The ground-truth section of the main (seed~N) rows of `df`, or None without ground-truth rows.
    `reference`: rows of `REFERENCE_NAMES` variants (`reference_rows`), shown under the variants."""
    import pandas as pd

    gt = gt_rows(df)
    ref = gt_rows(reference) if reference is not None and len(reference) else gt.iloc[0:0]
    metrics = gt_metrics(gt)
    if not metrics:
        return None
    present = [v for v in variants if v in set(gt["variant"])]
    present += sorted(set(gt["variant"]) - set(present), key=variant_sort_key)
    cols = [(m, GT_MODEL, _header(m)) for m in metrics]
    table = columns_table(gt, cols, present)
    table["rows"] += _reference_table_rows(ref, cols)

    subjects = sorted(set(gt["subject"]))
    sub_rows = []
    for s in subjects:
        t = columns_table(gt[gt["subject"] == s], cols, present)
        t["rows"] += _reference_table_rows(ref[ref["subject"] == s] if len(ref) else ref, cols)
        for i, r in enumerate(t["rows"]):
            name = REFERENCE_NAMES.get(r["code"]) or VARIANT_NAMES.get(r["code"], r["code"]).split(" (")[0]
            sub_rows.append({"label": s if i == 0 else "", "code": None, "cells": [name] + r["cells"]})
    subject_table = {"header": ["Subject", "Variant", "n"] + [h for _, _, h in cols], "rows": sub_rows}

    refs = [k for k in REFERENCE_NAMES if len(ref) and k in set(ref["variant"])]
    both = pd.concat([gt, ref], ignore_index=True) if refs else gt
    panels = []
    for m in [m for m in PLOT_METRICS if m in metrics]:
        items = []
        for v in present + refs:
            vs = both[(both["variant"] == v) & (both["metric"] == m)]
            mean, se, n = mean_se(vs["value"].tolist())
            per_subject = [mean_se(vs[vs["subject"] == s]["value"].tolist())[0] for s in subjects]
            label = (REFERENCE_NAMES.get(v) or VARIANT_NAMES.get(v, v)).split(" (")[0]
            items.append({"label": label, "mean": mean, "se": se, "n": n,
                          "points": [p for p in per_subject if p == p]})
        unit = GT_UNIT.get(m, "")
        panels.append({"title": f"{GT_LABEL[m]} {arrow(m)}",
                       "ylabel": GT_LABEL[m] + (f" ({unit})" if unit else ""), "items": items})
    figure = None
    if panels:
        groundtruth_figure(fig_dir / "groundtruth.png", panels)
        figure = "fig/groundtruth.png"

    seeds = sorted({int(s) for s in gt["seed"]})
    n_runs = len(gt[["setting", "subject", "prompt_id", "seed"]].drop_duplicates())
    dirs = "; ".join(f"{GT_LABEL[m]} {arrow(m)}" for m in metrics if m in GT_HIGHER)
    hl = headline(gt, metrics)
    return {
        "intro": ("The subjects of the synthetic track are procedurally generated objects whose geometry and "
                  "appearance are known, so each NeRF is compared with the truth at the fixed evaluation cameras: "
                  "PSNR, SSIM and LPIPS (AlexNet, v0.1) of the renders against the ground-truth renders "
                  "(back-view PSNR: the views with |azimuth| \u2265 135\u00b0 only), silhouette IoU of the opacity "
                  "masks, the Chamfer distance between the NeRF's surface points and the object's (world units), and Janus (GT): the fraction "
                  "of back views that show the front. Arrows: \u2191 higher is better, \u2193 lower is better ("
                  f"{dirs}). Mean \u00b1 standard error over the (subject, seed) runs of the seed~N settings; "
                  f"n = runs. {len(subjects)} subject(s), seeds {', '.join(map(str, seeds))}, {n_runs} "
                  "ground-truth run(s) in all."
                  + _reference_sentence(refs)),
        "table": table,
        "subject_table": subject_table,
        "subject_intro": "Per subject: mean \u00b1 s.e. over its seeds (n = seeds).",
        "figure": figure,
        "caption": ("Ground-truth metrics per variant: mean \u00b1 standard error over (subject, seed) runs (large "
                    "marker, error bar) and each subject's mean over its seeds (small dots)."),
        "headline": hl,
        "headline_intro": ("DreamBooth3D against each baseline on the same runs: for every (subject, seed, prompt) "
                           "both were evaluated on, the difference DreamBooth3D \u2212 baseline; mean \u00b1 s.e. of "
                           "these paired differences, n = pairs (a pair with a missing or non-finite value is "
                           "dropped). Verdict rule: " + (hl["rule"] if hl else rule_text(0)) + ": the "
                           "chance of any false verdict in the table is at most \u03b1. p: the test's p-value "
                           "(in brackets: Holm-adjusted). Better or worse when the adjusted p \u2264 \u03b1, read "
                           "in the metric's direction (for \u2193 metrics a negative difference is better); "
                           "otherwise no clear difference. Fewer than 2 pairs, or pairs all equal, test nothing."),
    }


# ----------------------------------------------------------------------------- the trained prior
def prior_dir(cfg: dict, root: Path) -> Path:
    """The toy prior's checkpoint folder: `cfg["models"]["toy"]` (default models/toy), relative to `root`."""
    p = Path(str(cfg.get("models", {}).get("toy") or "models/toy"))
    return p if p.is_absolute() else Path(root) / p


def read_train_log(path: Path) -> dict | None:
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _num(v: Any, fmt: str = "{:g}") -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "?"
    return fmt.format(f) if math.isfinite(f) else str(f)


def _duration(s: Any) -> str:
    try:
        s = float(s)
    except (TypeError, ValueError):
        return "?"
    if not math.isfinite(s):
        return "?"
    return f"{s:.0f} s" if s < 120 else f"{s:.0f} s ({s / 60:.1f} min)" if s < 7200 else f"{s:.0f} s ({s / 3600:.2f} h)"


def _loss_curve(log_: dict) -> list[tuple[float, float]]:
    out = []
    for item in log_.get("loss_curve") or []:
        try:
            step, loss = item
            out.append((float(step), float(loss)))
        except (TypeError, ValueError):
            continue
    return out


def prior_info(folder: Path, label: str | None = None) -> dict:
    """What the report says about the toy prior in `folder` (shown as `label`): its train log (or
    None) and the checkpoint's sha256, as logged and as the file on disk has it."""
    folder = Path(folder)
    log_ = read_train_log(folder / "train_log.json")
    ckpt = folder / "model.safetensors"
    actual = sha256_file(ckpt) if ckpt.is_file() else None
    logged = str(log_.get("sha256")) if log_ and log_.get("sha256") else None
    return {"dir": folder, "log": log_, "sha_logged": logged, "sha_file": actual,
            "sha": logged or actual, "label": label or str(folder)}


def prior_caption(info: dict) -> str:
    lg = info["log"]
    if lg is None:
        return f"Samples of the trained toy prior. No readable train_log.json in {info['label']}."
    return (f"Samples of the trained toy prior (rows: classes; columns: colours, front and back views). "
            f"Trained for {_num(lg.get('steps'), '{:.0f}')} steps at batch size {_num(lg.get('batch_size'), '{:.0f}')} "
            f"on {_num(lg.get('num_images'), '{:.0f}')} synthetic renders in {_duration(lg.get('wall_time_s'))} on "
            f"{lg.get('device', '?')} ({_num(lg.get('threads'), '{:.0f}')} threads); final loss "
            f"{_num(lg.get('final_loss'), '{:.4f}')}; checkpoint sha256 {(info['sha'] or '?')[:16]}.")


def _sha_text(info: dict) -> str:
    logged, actual = info["sha_logged"], info["sha_file"]
    if logged and actual:
        return logged + (" (train_log.json; matches model.safetensors)" if logged == actual else
                         f" (train_log.json) - model.safetensors differs: {actual}")
    if logged:
        return logged + " (train_log.json; model.safetensors not found)"
    if actual:
        return actual + " (model.safetensors; no train_log.json)"
    return f"unknown: no train_log.json or model.safetensors in {info['label']}"


def prior_provenance(info: dict) -> list[list[str]]:
    lg = info["log"] or {}
    rows = [["toy prior checkpoint (sha256)", f"{info['label']}/model.safetensors: {_sha_text(info)}"]]
    if info["log"] is not None:
        def i(key: str) -> str:
            return _num(lg.get(key), "{:.0f}")

        rows.append(["toy prior training",
                     f"{i('steps')} steps, batch size {i('batch_size')}, {i('num_images')} images, wall time "
                     f"{_duration(lg.get('wall_time_s'))} on {lg.get('device', '?')} ({i('threads')} threads), "
                     f"final loss {_num(lg.get('final_loss'), '{:.4f}')}"])
    return rows


def prior_section(info: dict, build_dir: Path) -> dict:
    """The 'Trained prior' section: sample grid (copied into the build folder), caption, loss curve,
    the training config; `status` is a sentence when the samples are missing."""
    folder = info["dir"]
    out: dict[str, Any] = {"status": None, "samples": None, "caption": prior_caption(info), "loss_figure": None,
                           "config": None,
                           "intro": ("The toy backend's diffusion prior is a small pixel-space text-to-image model "
                                     "trained from scratch on renders of the synthetic object classes (db3d.synth); "
                                     "it knows only this synthetic world. Its checkpoint folder: "
                                     f"{info['label']}.")}
    samples = folder / "samples.png"
    if samples.is_file():
        try:
            from PIL import Image

            dst = build_dir / "img" / "prior_samples.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(samples) as im:
                w, h = im.size
                k = min(PRIOR_MAX_UPSCALE, math.ceil(PRIOR_MIN_PX / w)) if w < PRIOR_MIN_PX else 1
                if k > 1:  # small samples: blown up pixel by pixel, not blurred by the PDF viewer
                    im.convert("RGB").resize((w * k, h * k), Image.NEAREST).save(dst, format="PNG")
                else:
                    shutil.copyfile(samples, dst)
            scale = min(PRIOR_MAX_CM[0] / w, PRIOR_MAX_CM[1] / h)
            out["samples"] = {"path": dst.relative_to(build_dir).as_posix(), "width_cm": round(w * scale, 3),
                              "height_cm": round(h * scale, 3)}
        except (OSError, ValueError) as e:
            out["status"] = f"The prior's samples ({info['label']}/samples.png) could not be read: {e}."
    else:
        out["status"] = (f"No samples of the trained prior: {info['label']}/samples.png does not exist (train it "
                         "with the toy_prior rule, or point models.toy at its folder).")
    curve = _loss_curve(info["log"] or {})
    if curve:
        prior_loss_figure(build_dir / "fig" / "prior_loss.png", curve)
        out["loss_figure"] = "fig/prior_loss.png"
    pc = (info["log"] or {}).get("prior_cfg")
    if isinstance(pc, dict) and pc:
        out["config"] = ", ".join(f"{k}: {json.dumps(pc[k], sort_keys=True)}" for k in sorted(pc))
    return out


def toy_note(info: dict) -> dict:
    """The title page's box for backend toy (what the numbers mean)."""
    sha = info["sha"]
    ref = f"checkpoint sha256 {sha[:16]}" if sha else f"checkpoint hash unknown: no train_log.json in {info['label']}"
    headline_ = "Synthetic track: a small trained prior, ground truth from a synthetic world."
    body = (f"This report was produced with backend: toy. The diffusion prior is a small text-to-image model trained "
            f"on synthetic renders of procedurally generated objects ({ref}, {info['label']}). The ground-truth "
            "metrics (PSNR, SSIM, LPIPS, silhouette IoU, Chamfer distance, Janus (GT)) measure how well each method "
            "recovers objects of this synthetic world - not real photographs, and not the paper's subjects. The "
            "CLIP and DINO numbers (CLIP R-Precision, CLIP-T, CLIP-I, DINO-I, Janus) come from random-weight "
            "stand-ins and mean nothing about the method.")
    short = ("Backend toy: CLIP and DINO metrics from random-weight stand-ins (meaningless); the ground-truth section "
             f"measures the synthetic world ({ref}).")
    return {"headline": headline_, "body": body, "short": short}
