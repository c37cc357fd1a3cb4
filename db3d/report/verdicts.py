"""The headline's verdict rule: paired t-tests, Holm's correction over the family of comparisons.

A comparison is one (method, baseline, metric): the paired differences d_i = method - baseline
over the runs both were evaluated on. Each gets a two-sided paired t-test of mean(d) = 0
(t = mean / s.e., n - 1 degrees of freedom); n < 2 pairs, or n pairs all equal to zero, tests
nothing (p = NaN). The family is every comparison the headline makes that has a p-value, and
Holm's step-down procedure holds the chance of ANY false verdict in it at `ALPHA` (family-wise
error rate): sort the m p-values, reject the k-th smallest (k = 0, 1, ...) while
p_(k) <= ALPHA / (m - k), stop at the first that is not. A rejected comparison is `better` or
`worse` read in the metric's direction; every other one is `no clear difference`.

Why not 2 standard errors per comparison: each such verdict is wrong ~5 % of the time when nothing
differs (more at small n, where s.e. is itself noisy), so 14 of them (7 metrics x 2 baselines)
make at least one false verdict likely (1 - 0.95^14 = 51 %). tests/test_report_verdicts.py plants
effects and nulls and measures both.

The pairs are (subject, seed[, prompt]) runs taken as independent; seeds of one subject share the
subject, so with few subjects the test is about these subjects, not about subjects in general.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

ALPHA = 0.05
TEST = "two-sided paired t-test"
CORRECTION = "Holm"


def paired_t_pvalues(diffs: np.ndarray) -> np.ndarray:
    """p-values of the two-sided paired t-test for each row of `diffs` [k, n] (n >= 2 pairs each):
    NaN where a row is all zeros, 0 where it is a nonzero constant (no spread, a sure difference)."""
    from scipy import stats

    d = np.asarray(diffs, dtype=float)
    if d.ndim != 2 or d.shape[1] < 2:
        raise ValueError(f"paired_t_pvalues needs [k, n >= 2] differences, got shape {d.shape}")
    n = d.shape[1]
    mean = d.mean(axis=1)
    sd = d.std(axis=1, ddof=1)
    # a constant row's sd is rounding noise (~1e-17 x its size), not spread: treat it as exactly 0
    flat = sd <= 1e-12 * np.maximum(np.abs(mean), np.abs(d).max(axis=1, initial=0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        t = mean / (sd / math.sqrt(n))
    p = 2.0 * stats.t.sf(np.abs(t), n - 1)
    p[flat] = np.where(mean[flat] == 0.0, np.nan, 0.0)
    return p


def paired_t_pvalue(diffs: Sequence[float]) -> float:
    """The p-value of one comparison's paired differences (NaN with fewer than 2 pairs)."""
    d = np.asarray(list(diffs), dtype=float)
    return math.nan if d.size < 2 else float(paired_t_pvalues(d[None, :])[0])


def holm(pvalues: Sequence[float] | np.ndarray, alpha: float = ALPHA) -> tuple[np.ndarray, np.ndarray]:
    """Holm-adjusted p-values and rejections of the last axis of `pvalues` (one family per row when
    2-D). NaN p-values are not in the family: adjusted NaN, never rejected."""
    p = np.asarray(pvalues, dtype=float)
    one = p.ndim == 1
    p = np.atleast_2d(p)
    adjusted = np.full(p.shape, np.nan)
    for r in range(p.shape[0]):
        ok = np.flatnonzero(~np.isnan(p[r]))
        if ok.size == 0:
            continue
        order = ok[np.argsort(p[r, ok], kind="stable")]
        m = order.size
        steps = (m - np.arange(m)) * p[r, order]
        adjusted[r, order] = np.minimum(1.0, np.maximum.accumulate(steps))
    rejected = np.nan_to_num(adjusted, nan=np.inf) <= alpha
    return (adjusted[0], rejected[0]) if one else (adjusted, rejected)


def rule_text(m: int, alpha: float = ALPHA) -> str:
    """The rule as the report states it."""
    return (f"{TEST} per comparison over the paired runs, {CORRECTION}-corrected over the family of {m} "
            f"comparison{'s' if m != 1 else ''} (family-wise \u03b1 = {alpha:g})")


__all__ = ["ALPHA", "CORRECTION", "TEST", "holm", "paired_t_pvalue", "paired_t_pvalues", "rule_text"]
