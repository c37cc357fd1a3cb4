"""The headline's verdict rule (db3d.report.verdicts): paired t-tests, Holm over the family.

Planted effects: a true effect is found; over many simulated nulls the chance of any false verdict
in a family stays at the stated alpha (the old 2-s.e. rule, uncorrected, does not). numpy only."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from db3d.report import verdicts
from db3d.report.verdicts import ALPHA, holm, paired_t_pvalue, paired_t_pvalues

N_SIMS = 2000
FAMILY = 14   # 7 ground-truth metrics x 2 baselines, as in the report's headline
N_PAIRS = 9   # e.g. 3 subjects x 3 seeds


def test_paired_t_matches_scipy_and_the_edge_cases():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=9), rng.normal(size=9)
    assert paired_t_pvalue(a - b) == pytest.approx(stats.ttest_rel(a, b).pvalue, rel=1e-12)
    assert math.isnan(paired_t_pvalue([0.3]))              # one pair: no test
    assert math.isnan(paired_t_pvalue([0.0, 0.0, 0.0]))    # identical runs: nothing to test
    assert paired_t_pvalue([0.3, 0.3, 0.3]) == 0.0         # a constant nonzero difference is sure
    assert paired_t_pvalue([0.1 + 0.2, 0.3, 0.3]) == 0.0   # ... also when rounding leaves ~1e-17 of spread
    with pytest.raises(ValueError):
        paired_t_pvalues(np.zeros((2, 1)))


def test_holm_by_hand():
    adj, rej = holm([0.01, 0.04, 0.03, 0.005], alpha=0.05)
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max
    assert adj.tolist() == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert rej.tolist() == [True, False, False, True]
    # NaN: not in the family (m = 2 here), never rejected
    adj, rej = holm([0.02, math.nan, 0.001])
    assert adj[0] == pytest.approx(0.02) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.002)
    assert rej.tolist() == [True, False, True]
    # step-down stops at the first failure even if a later adjusted value would pass alone
    assert holm([0.026, 0.026], alpha=0.05)[1].tolist() == [False, False]
    assert holm([0.02, 0.026], alpha=0.05)[1].tolist() == [True, True]


def _family_pvalues(effects: np.ndarray, rng: np.random.Generator, n_sims: int) -> np.ndarray:
    """[n_sims, FAMILY] p-values of paired differences ~ N(effect, 1) over N_PAIRS pairs."""
    d = rng.normal(size=(n_sims, FAMILY, N_PAIRS)) + effects[None, :, None]
    return paired_t_pvalues(d.reshape(-1, N_PAIRS)).reshape(n_sims, FAMILY)


def test_a_true_effect_is_found_and_nulls_are_not():
    rng = np.random.default_rng(1)
    effects = np.zeros(FAMILY)
    effects[3] = 2.5                      # one real difference of 2.5 sd among 13 nulls
    _, rej = holm(_family_pvalues(effects, rng, N_SIMS))
    power = rej[:, 3].mean()
    assert power > 0.9, power             # found almost always at n = 9 (measured 0.993)
    others = np.delete(rej, 3, axis=1)
    assert others.any(axis=1).mean() <= ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / N_SIMS)


def test_family_wise_false_verdict_rate_under_the_null():
    rng = np.random.default_rng(2)
    p = _family_pvalues(np.zeros(FAMILY), rng, N_SIMS)
    _, rej = holm(p)
    fwer = rej.any(axis=1).mean()
    se = math.sqrt(ALPHA * (1 - ALPHA) / N_SIMS)
    assert fwer <= ALPHA + 2 * se, fwer
    # the rule it replaces, |mean| > 2 s.e. per comparison with no correction, fails this
    d = rng.normal(size=(N_SIMS, FAMILY, N_PAIRS))
    t = d.mean(axis=2) / (d.std(axis=2, ddof=1) / math.sqrt(N_PAIRS))
    assert (np.abs(t) > 2).any(axis=1).mean() > 0.4


def test_the_rule_is_stated_with_alpha_and_the_family():
    text = verdicts.rule_text(14)
    assert "paired t-test" in text and "Holm" in text and "14 comparisons" in text and "0.05" in text
