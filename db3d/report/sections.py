"""The report's section builders: each turns the gathered data (db3d.report.gather) into the dict the
template (Typst) and the HTML page show. The synthetic track's sections are in groundtruth.py, the
ablations in ablations.py, the NeRF objective in objective.py, the provenance in provenance.py."""
from __future__ import annotations

import math
from pathlib import Path

from .. import variants as V
from .. import workflow as wf
from .figures import loss_figure, preference_figure, userstudy_figure
from .paper import fmt_paper, load as load_paper, r_precision, source_line, userstudy_rows
from .common import METHOD, PAPER_CLIP_LABELS, VARIANT_NAMES, columns_table, fmt_num, model_sort_key, sha256_file
from .gather import Assets, Runs, metric_note, prompt_text, run_label, variant_render
from .images import subject_photos
from .select import USERSTUDY_QUESTIONS, base_model, read_losses, read_userstudy, select_failure_cases, is_seed_setting
from .stats import fmt_mean_se, mean_se

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
                          "paper": fmt_paper(r_precision(v, m)) if with_paper else ""})
        n_txt = str(max(ns)) if ns and min(ns) == max(ns) else "/".join(str(n) for n in ns)
        rows.append({"variant": v, "name": row_prefix + VARIANT_NAMES.get(v, v), "n": n_txt, "cells": cells})
    table = {
        "with_paper": with_paper, "intro": intro, "note": note, "rows": rows,
        "models": [{"label": m, "paper_label": PAPER_CLIP_LABELS.get(base_model(m), base_model(m))} for m in models],
    }
    return table, stats



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


# ----------------------------------------------------------------------------- galleries
def gallery_rows(df, runs: Runs, subjects_dir: Path, assets: Assets, setting: str, subject: str,
                 prompt_id: str, photos: bool = True) -> list[dict]:
    rows = []
    if photos:
        im = assets.strip(subject_photos(subjects_dir / subject))
        if im is not None:
            rows.append({"label": "Input photos", "note": f"data/subjects/{subject}", "image": im, "variant": None})
    present = set(df[(df["setting"] == setting) & (df["subject"] == subject) & (df["prompt_id"] == prompt_id)]["variant"])

    # along the method's chain (stage 1, the pseudo views, the final NeRF), then the baselines
    for kind, name in V.gallery_order():
        if kind == "preview":
            if METHOD not in present:
                continue
            stage = V.STAGES[name]
            file, label, note = stage.preview
            pv = runs.stage_dir(setting, name, subject, prompt_id) / stage.dir / file
            im = assets.strip(pv if pv.is_file() else None, units=2)
            if im is not None:
                rows.append({"label": label, "note": note, "image": im, "variant": None})
        elif name in present:
            im = assets.strip(variant_render(runs, setting, subject, prompt_id, name))
            if im is not None:
                rows.append({"label": run_label(df, V.VARIANTS[name].gallery, setting, subject, prompt_id, name),
                             "note": metric_note(df, setting, subject, prompt_id, name), "image": im,
                             "variant": name})
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
                                "prompt": prompt_text(runs, setting, subject, prompt_id), "rows": rows})
        out.append({"subject": subject, "entries": entries})
    return out, setting


# ----------------------------------------------------------------------------- failure cases
def failures_section(df, runs: Runs, subjects_dir: Path, assets: Assets, fig_dir: Path,
                     stand_in: bool | None = None) -> list[dict]:
    items = []
    for k, fc in enumerate(select_failure_cases(df, runs.dir, stand_in=stand_in)):
        rows = []
        eval_setting = fc.setting
        if fc.kind == "divergence":
            # the metrics row whose NeRF it is: any setting of the table sharing this stage folder
            cand = df[(df["subject"] == fc.subject) & (df["prompt_id"] == fc.prompt_id) & (df["variant"] == fc.variant)]
            same = sorted(s for s in set(cand["setting"]) if wf.stage_setting(s, fc.stage) == fc.setting)
            eval_setting = fc.setting if fc.setting in same else (same[0] if same else fc.setting)
        im = assets.strip(subject_photos(subjects_dir / fc.subject))
        if im is not None:
            rows.append({"label": "Input photos", "note": "", "image": im, "variant": None})
        im = assets.strip(variant_render(runs, eval_setting, fc.subject, fc.prompt_id, fc.variant))
        label = run_label(df, VARIANT_NAMES.get(fc.variant, fc.variant), eval_setting, fc.subject, fc.prompt_id,
                          fc.variant)
        note = metric_note(df, eval_setting, fc.subject, fc.prompt_id, fc.variant)
        rows.append({"label": label, "note": note if im is not None else (note + " \u00b7 no render found").strip(" \u00b7"),
                     "image": im, "variant": fc.variant})
        fig = None
        if fc.kind == "divergence":
            losses = read_losses(runs.path(fc.detail)) or []
            name = f"fig/loss_{k + 1:02d}.png"
            loss_figure(assets.build_dir / name, losses, f"{fc.stage} loss: {fc.subject}/{fc.prompt_id}, {fc.setting}")
            fig = name
        value = "inf" if math.isinf(fc.value) else f"{fc.value:.4g}"
        items.append({"title": fc.title, "kind": fc.kind, "flagged_by": fc.metric, "value": value,
                      "run": f"setting {eval_setting}, subject {fc.subject}, prompt {fc.prompt_id}, variant {fc.variant}",
                      "detail": fc.detail, "rows": rows, "figure": fig})
    return items


# ----------------------------------------------------------------------------- user study
def userstudy_section(path: Path, fig_dir: Path, build_dir: Path) -> dict:
    out = {"intro": USER_STUDY_INTRO, "status": USER_STUDY_STATUS, "table": None, "figure": None, "note": ""}
    us = read_userstudy(path)
    total = int(us["n_responses"].fillna(0).sum()) if us is not None and "n_responses" in us.columns else 0
    if us is not None and total == 0:
        out["status"] = "No responses yet (results/userstudy.tsv has no kept answers)."
    out["paper"] = paper_preferences(us if total else None, build_dir)
    if us is None or total == 0:
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
    userstudy_figure(build_dir / "fig" / "userstudy.png", items)
    out["figure"] = "fig/userstudy.png"
    kept = us["raters_kept"].iloc[0] if "raters_kept" in us.columns else float("nan")
    dropped = us["raters_dropped"].iloc[0] if "raters_dropped" in us.columns else float("nan")
    out["note"] = (f"Raters kept (passed the attention checks): {fmt_num(kept, 0)}; dropped: {fmt_num(dropped, 0)}. "
                   f"Source: results/userstudy.tsv (sha256 {sha256_file(path)[:16]}).")
    return out



def paper_preferences(us, build_dir: Path) -> dict:
    """The paper's user-study bars beside ours, in its layout (DreamBooth3D preferred / tied /
    baseline preferred). Ours: the pairs decided by majority vote (the paper's unit); tied = equal
    votes. The paper's tied share is the remainder of its two labelled bars."""
    rows, groups = [], []
    ours = {}
    if us is not None:
        for _, r in us.iterrows():
            n = r.get("n_pairs", float("nan"))
            if n == n and n:
                ours[(str(r["question"]), str(r["baseline"]))] = (
                    float(r["pairs_method"]) / n, float(r["pairs_tied"]) / n, float(r["pairs_baseline"]) / n, int(n))
    for b in userstudy_rows():
        o = ours.get((b["question"], b["baseline"]))
        bars = [{"source": "paper", "method": b["method"], "tied": b["tied"], "baseline": b["baseline_preferred"]}]
        if o is not None:
            bars.append({"source": f"ours ({o[3]} pairs)", "method": o[0], "tied": o[1], "baseline": o[2]})
        groups.append({"label": b["label"], "bars": bars})

        def pct(x):
            return f"{100 * x:.0f} %"
        rows.append({"label": b["label"], "code": None, "cells": [
            pct(b["method"]), pct(b["tied"]) + " (remainder)", pct(b["baseline_preferred"]),
            *((pct(o[0]), pct(o[1]), pct(o[2]), str(o[3])) if o else ("\u2014",) * 4)]})
    preference_figure(build_dir / "fig" / "preference.png", groups)
    p = load_paper()
    return {"table": {"header": ["Question vs baseline", ["paper", "DB3D preferred"], ["paper", "tied"],
                                 ["paper", "baseline preferred"], ["ours", "DB3D preferred"], ["ours", "tied"],
                                 ["ours", "baseline preferred"], ["ours", "pairs"]], "rows": rows},
            "figure": "fig/preference.png",
            "source": f"Paper: {source_line(p, 'figure')} Its design: {p['user_study']['design']}. The tied "
                      "bars are unlabelled in the figure; shown here as 100 % minus the two labelled shares.",
            "caption": ("The paper's user-study bars (first row of each pair) and ours (second, when there are "
                        "answers): share of pairs won by DreamBooth3D by majority vote, tied, won by the baseline.")}
