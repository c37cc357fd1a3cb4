"""The report's section on the NeRF objective: what each loss term contributed, and collapses.

- *Gradient shares*: for each variant's judged NeRF stage, each term's share of the gradient at the
  field's parameters (its gradient norm over the sum of all terms' norms, `losses.json` records
  every `nerf.grad_share_every` steps; db3d.nerf.objective), mean +- s.e. over runs, over all of
  training and over its last quarter; a figure of the shares against training progress.
- *Collapses*: per variant, how many runs' NeRFs cover less than `eval.collapse_coverage` of their
  evaluation views (the `collapsed` rows of db3d.eval.coverage), and the mean coverage.
"""
from __future__ import annotations

import logging
import statistics
from pathlib import Path
from typing import Any

from .. import workflow as wf
from ..io import read_json

log = logging.getLogger(__name__)

TERM_LABELS = {"sds": "SDS", "recon": "reconstruction", "opacity": "opacity (sparsity)",
               "distortion": "distortion", "orientation": "orientation"}
TERM_ORDER = list(TERM_LABELS)
PROGRESS_BINS = 10


def _mean_se(values: list[float]) -> str:
    if not values:
        return "-"
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{m:.3f} (n=1)"
    se = statistics.stdev(values) / len(values) ** 0.5
    return f"{m:.3f} \u00b1 {se:.3f}"


def run_shares(losses: dict) -> list[tuple[float, dict[str, float]]]:
    """(training progress in [0, 1], {term: share}) for each share record of one NeRF stage."""
    steps = losses.get("steps", [])
    iters = max(int(losses.get("meta", {}).get("iters") or len(steps) or 1), 1)
    return [(s["step"] / iters, s["grad"]["share"]) for s in steps if "grad" in s]


def collect(df, runs, variants: list[str]) -> dict[str, list[list[tuple[float, dict[str, float]]]]]:
    """Per variant, the share records of every run of the metrics table (main settings)."""
    out: dict[str, list] = {v: [] for v in variants}
    keys = df[["setting", "subject", "prompt_id", "variant"]].drop_duplicates().itertuples(index=False)
    for setting, subject, prompt_id, variant in keys:
        if variant not in out or variant not in wf.VARIANT_NERF:
            continue
        stage = wf.VARIANT_NERF[variant][0]
        path = runs.stage_dir(setting, stage, subject, prompt_id) / "losses.json"
        try:
            records = run_shares(read_json(path))
        except (OSError, ValueError, KeyError) as e:
            log.warning("report: no gradient shares in %s (%s)", path, e)
            continue
        if records:
            out[variant].append(records)
    return out


def shares_table(shares: dict[str, list], names: dict[str, str]) -> dict | None:
    terms = [t for t in TERM_ORDER if any(t in rec for runs_ in shares.values() for run in runs_ for _, rec in run)]
    if not terms:
        return None
    rows = []
    for variant, runs_ in shares.items():
        if not runs_:
            continue
        cells = []
        for term in terms:
            whole = [statistics.fmean(r.get(term, 0.0) for _, r in run) for run in runs_]
            tail = [statistics.fmean(r.get(term, 0.0) for p, r in run if p >= 0.75) if any(p >= 0.75 for p, _ in run)
                    else whole[i] for i, run in enumerate(runs_)]
            cells.append(f"{_mean_se(whole)} / {_mean_se(tail)}")
        rows.append({"label": names.get(variant, variant), "code": variant, "cells": cells + [str(len(runs_))]})
    return {"header": ["variant", *[TERM_LABELS[t] for t in terms], "n"], "rows": rows}


def shares_figure(path: Path, shares: dict[str, list], names: dict[str, str]) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [v for v, r in shares.items() if r]
    if not present:
        return False
    fig, axes = plt.subplots(1, len(present), figsize=(3.2 * len(present), 2.6), sharey=True, squeeze=False)
    for ax, variant in zip(axes[0], present):
        for term in TERM_ORDER:
            xs, ys = [], []
            for b in range(PROGRESS_BINS):
                lo, hi = b / PROGRESS_BINS, (b + 1) / PROGRESS_BINS
                vals = [r.get(term, 0.0) for run in shares[variant] for p, r in run if lo <= p < hi or (b == PROGRESS_BINS - 1 and p == 1.0)]
                if vals and any(term in r for run in shares[variant] for _, r in run):
                    xs.append((lo + hi) / 2)
                    ys.append(statistics.fmean(vals))
            if xs:
                ax.plot(xs, ys, marker="o", ms=3, label=TERM_LABELS[term])
        ax.set_title(names.get(variant, variant), fontsize=9)
        ax.set_xlabel("training progress", fontsize=8)
        ax.set_ylim(0, 1)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("gradient share at the parameters", fontsize=8)
    axes[0][-1].legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


def collapse_table(df, variants: list[str], names: dict[str, str]) -> dict | None:
    rows = []
    col = df[df["metric"] == "collapsed"]
    cov = df[df["metric"] == "coverage"]
    if col.empty:
        return None
    note = str(col["note"].iloc[0])
    for variant in variants:
        c = col[col["variant"] == variant]["value"].astype(float)
        if c.empty:
            continue
        v = cov[cov["variant"] == variant]["value"].astype(float).tolist()
        rows.append({"label": names.get(variant, variant), "code": variant,
                     "cells": [f"{int(c.sum())} of {len(c)}", _mean_se(v)]})
    return {"header": ["variant", "collapsed NeRFs", "coverage"], "rows": rows, "note": note}


def objective_section(df, runs, variants: list[str], names: dict[str, str], fig_dir: Path) -> dict[str, Any] | None:
    if df is None or not len(df):
        return None
    shares = collect(df, runs, variants)
    table = shares_table(shares, names)
    figure = "fig/shares.png" if shares_figure(Path(fig_dir) / "shares.png", shares, names) else None
    collapses = collapse_table(df, variants, names)
    if table is None and collapses is None:
        return None
    return {
        "intro": ("Each NeRF stage differentiates every loss term on its own every nerf.grad_share_every steps "
                  "(db3d.nerf.objective). A term's share is the norm of its gradient at the field's and "
                  "background's parameters over the sum of all terms' norms. All terms are on SDS's per-element "
                  "scale, so a weight of 1 is as strong per element as SDS (docs/losses.md). Cells: mean \u00b1 s.e. "
                  "over runs of the share over all of training / over its last quarter; n = runs."),
        "table": table,
        "figure": figure,
        "caption": "Gradient share of each loss term against training progress (mean over runs, per variant's "
                   "judged NeRF stage).",
        "collapses": collapses,
    }
