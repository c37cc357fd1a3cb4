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
from .stats import fmt_mean_se, mean_se

log = logging.getLogger(__name__)

TERM_LABELS = {"sds": "SDS", "recon": "reconstruction", "opacity": "opacity (sparsity)",
               "distortion": "distortion", "orientation": "orientation"}
TERM_ORDER = list(TERM_LABELS)
PROGRESS_BINS = 10


def _cell(values: list[float]) -> str:
    return fmt_mean_se(*mean_se(values))


def _mean_share(run: list[tuple[float, dict[str, float]]], term: str, since: float = 0.0) -> float:
    """A run's mean share of `term` over its records from training progress `since` on (all of
    them when none is that late)."""
    late = [r.get(term, 0.0) for p, r in run if p >= since] or [r.get(term, 0.0) for _, r in run]
    return statistics.fmean(late)


def _terms(runs_: list[list[tuple[float, dict[str, float]]]]) -> list[str]:
    """The terms present in any record of these runs, in TERM_ORDER."""
    seen = {k for run in runs_ for _, r in run for k in r}
    return [t for t in TERM_ORDER if t in seen]


def run_shares(losses: dict) -> list[tuple[float, dict[str, float]]]:
    """(training progress in [0, 1], {term: share}) for each share record of one NeRF stage."""
    steps = losses.get("steps", [])
    iters = max(int(losses.get("meta", {}).get("iters") or len(steps) or 1), 1)
    return [(s["step"] / iters, s["grad"]["share"]) for s in steps if "grad" in s]


def _records(runs, setting: str, subject: str, prompt_id: str, variant: str) -> list | None:
    """The share records of one run's judged NeRF stage (None: the variant has none, or no file)."""
    if variant not in wf.VARIANT_NERF:
        return None
    path = runs.path(wf.stage_file(setting, wf.VARIANT_NERF[variant][0], subject, prompt_id, which=1))
    try:
        return run_shares(read_json(path)) or None
    except (OSError, ValueError, KeyError) as e:
        log.warning("report: no gradient shares in %s (%s)", path, e)
        return None


def _runs_records(df, runs):
    """(variant, share records) for each run of the metrics rows `df` that has share records."""
    keys = df[["setting", "subject", "prompt_id", "variant"]].drop_duplicates().itertuples(index=False)
    for setting, subject, prompt_id, variant in keys:
        if records := _records(runs, setting, subject, prompt_id, variant):
            yield variant, records


def collect(df, runs, variants: list[str]) -> dict[str, list[list[tuple[float, dict[str, float]]]]]:
    """Per variant, the share records of every run of the metrics table (main settings)."""
    out: dict[str, list] = {v: [] for v in variants}
    for variant, records in _runs_records(df[df["variant"].isin(variants)], runs):
        out[variant].append(records)
    return out


def shares_cell(rows, runs) -> str:
    """One ablation cell's gradient shares: each term's mean share over training, mean over the
    runs in `rows` (metrics-table rows of one variant: setting, subject, prompt_id), e.g.
    "SDS 0.62, reconstruction 0.35, opacity 0.03"; "-" when no run has share records."""
    runs_ = [records for _, records in _runs_records(rows, runs)]
    if not runs_:
        return "-"
    return ", ".join(f"{TERM_LABELS[t]} {statistics.fmean(_mean_share(run, t) for run in runs_):.2f}"
                     for t in _terms(runs_))


def shares_table(shares: dict[str, list], names: dict[str, str]) -> dict | None:
    terms = _terms([run for runs_ in shares.values() for run in runs_])
    if not terms:
        return None
    rows = []
    for variant, runs_ in shares.items():
        if not runs_:
            continue
        cells = [f"{_cell([_mean_share(run, t) for run in runs_])} / {_cell([_mean_share(run, t, 0.75) for run in runs_])}"
                 for t in terms]
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
        records = [rec for run in shares[variant] for rec in run]
        bins = [min(int(p * PROGRESS_BINS), PROGRESS_BINS - 1) for p, _ in records]  # progress 1.0: last bin
        for term in _terms(shares[variant]):
            xs, ys = [], []
            for b in sorted(set(bins)):
                xs.append((b + 0.5) / PROGRESS_BINS)
                ys.append(statistics.fmean(r.get(term, 0.0) for (_, r), rb in zip(records, bins) if rb == b))
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
                     "cells": [f"{int(c.sum())} of {len(c)}", _cell(v)]})
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
