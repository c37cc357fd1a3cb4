"""The ablations section: one subsection per ablation table in the metrics (figure, table, renders)."""
from __future__ import annotations

from pathlib import Path

from ..config import parse_setting, resolve_key
from .figures import ablation_figure
from .common import METHOD, VARIANT_NAMES, config_value, variant_sort_key
from .gather import Assets, Runs, run_label, variant_render
from .objective import shares_cell
from .select import (METRIC_LABEL, METRICS, ablation_groups, as_number, base_model, metric_model, setting_params,
                     variant_depends)
from .stats import fmt_mean_se, mean_se

MAX_ABLATION_SUBJECTS = 3       # image rows per ablation: first prompt and seed of each

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
            ablation_figure(assets.build_dir / name, param, panels, default, tiny,
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
        show = METHOD if METHOD in dep else dep[0]
        strips = []
        seed = g.seeds[0] if g.seeds else 0
        for subject in sorted(set(sub["subject"]))[:MAX_ABLATION_SUBJECTS]:
            prompt_id = sorted(set(sub[sub["subject"] == subject]["prompt_id"]))[0]
            rows_img = []
            for value in g.values:
                cell = _cell_of(g, value, seed)
                if cell is None:
                    continue
                im = assets.strip(variant_render(runs, cell, subject, prompt_id, show))
                if im is not None:
                    rows_img.append({"label": run_label(df, f"{param} = {value}", cell, subject, prompt_id, show),
                                     "note": "", "image": im})
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

