"""User-study analysis: preference rates with Wilson 95% CIs, two-sided binomial tests against 0.5,
majority vote per pair (as the paper reports), Fleiss' kappa, attention-check filtering.

`analyse(study_dir, out)` writes three tables (columns in docs/userstudy.md):
- `out`                       (e.g. results/userstudy.tsv): one row per question x baseline
- `<out stem>_pairs.tsv`      one row per question x pair: the votes and the majority
- `<out stem>_raters.tsv`     one row per rater: attention checks and whether the rater is kept

A rater is kept when they answered at least one attention check and got at least `min_attention`
of them right (default 1.0: all). Only kept raters' answers count.
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Iterable, Sequence

from ..errors import Db3dError
from ..io import atomic_path
from . import design

log = logging.getLogger(__name__)

SUMMARY_COLUMNS = ["question", "question_text", "baseline", "baseline_name", "raters_kept", "raters_dropped",
                   "n_raters", "n_responses", "n_prefer_method", "rate", "ci_low", "ci_high", "p_value",
                   "n_pairs", "pairs_method", "pairs_baseline", "pairs_tied", "pair_rate", "pair_ci_low",
                   "pair_ci_high", "pair_p_value", "fleiss_kappa", "kappa_items"]
PAIR_COLUMNS = ["question", "pair_id", "subject", "prompt_id", "baseline", "votes_method", "votes_baseline", "n",
                "majority"]
RATER_COLUMNS = ["rater_id", "n_answers", "n_pair_answers", "checks_answered", "checks_correct", "kept", "reason"]


# ----------------------------------------------------------------------------- statistics
def wilson_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n; (nan, nan) when n == 0."""
    if n <= 0:
        return float("nan"), float("nan")
    if not 0 <= k <= n:
        raise ValueError(f"k={k} outside [0, n={n}]")
    from scipy.stats import norm

    z = float(norm.ppf(0.5 + confidence / 2))
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def binomial_p(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test of k successes in n trials against p (scipy); nan when n == 0."""
    if n <= 0:
        return float("nan")
    from scipy.stats import binomtest

    return float(binomtest(int(k), int(n), p, alternative="two-sided").pvalue)


def fleiss_kappa(counts: Sequence[Sequence[int]]) -> float:
    """Fleiss' kappa of an items x categories table of rating counts.

    Items may have different numbers of ratings n_i (per-item agreement
    P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1)), P_bar their mean, p_j = sum_i n_ij / sum_i n_i,
    P_e = sum_j p_j^2, kappa = (P_bar - P_e) / (1 - P_e)); with equal n_i this is Fleiss (1971).
    Items with fewer than two ratings are left out. nan when no item is left or P_e == 1
    (every rating in one category: agreement by chance is total, kappa undefined).
    """
    rows = [[int(c) for c in row] for row in counts]
    rows = [r for r in rows if sum(r) >= 2]
    if not rows:
        return float("nan")
    total = sum(sum(r) for r in rows)
    k = len(rows[0])
    p_j = [sum(r[j] for r in rows) / total for j in range(k)]
    p_e = sum(p * p for p in p_j)
    p_bar = sum((sum(c * c for c in r) - sum(r)) / (sum(r) * (sum(r) - 1)) for r in rows) / len(rows)
    if math.isclose(p_e, 1.0):
        return float("nan")
    return (p_bar - p_e) / (1 - p_e)


def majority(votes_method: int, votes_baseline: int) -> str:
    """The pair's majority: method, baseline, or tie (equal votes; also 0-0)."""
    if votes_method > votes_baseline:
        return "method"
    if votes_baseline > votes_method:
        return "baseline"
    return "tie"


# ----------------------------------------------------------------------------- responses
def load_responses(study_dir: Path, responses: str | Path | None = None) -> list[dict]:
    """Responses from the study's SQLite file (default `<study>/responses.sqlite`) or a TSV export."""
    import csv
    import sqlite3

    path = Path(responses) if responses else Path(study_dir) / design.DB_NAME
    if not path.exists():
        if responses:
            raise Db3dError(f"{path} not found; pass the study's responses.sqlite or an /admin/export?format=tsv file")
        log.info("userstudy: %s does not exist: no responses yet", path)
        return []
    if path.suffix in (".tsv", ".txt"):
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        for r in rows:
            r["correct"] = None if r.get("correct", "") == "" else int(r["correct"])
            r["position"] = int(r["position"])
        return rows
    from .server import manifest_sha256

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        con.row_factory = sqlite3.Row
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("manifest_sha256") not in (None, manifest_sha256(study_dir)):
            raise Db3dError(f"{path} was collected under another manifest.json than {study_dir}'s; analyse it with "
                            "the study folder it was served from")
        return [dict(r) for r in con.execute("SELECT * FROM responses ORDER BY rater_id, position")]
    except sqlite3.DatabaseError as e:
        raise Db3dError(f"{path}: not a user-study database ({e})") from None
    finally:
        con.close()


def rater_table(responses: Iterable[dict], min_attention: float = 1.0) -> list[dict]:
    per: dict[str, dict] = {}
    for r in responses:
        d = per.setdefault(r["rater_id"], {"rater_id": r["rater_id"], "n_answers": 0, "n_pair_answers": 0,
                                           "checks_answered": 0, "checks_correct": 0})
        d["n_answers"] += 1
        if r["kind"] == "check":
            d["checks_answered"] += 1
            d["checks_correct"] += int(r["correct"] or 0)
        else:
            d["n_pair_answers"] += 1
    out = []
    for rid in sorted(per):
        d = per[rid]
        if d["checks_answered"] == 0:
            d["kept"], d["reason"] = 0, "no_check_answered"
        elif d["checks_correct"] / d["checks_answered"] + 1e-12 < min_attention:
            d["kept"], d["reason"] = 0, "failed_check"
        else:
            d["kept"], d["reason"] = 1, "ok"
        out.append(d)
    return out


# ----------------------------------------------------------------------------- tables
def analyse_responses(manifest: dict, responses: list[dict], min_attention: float = 1.0):
    """(summary rows, pair rows, rater rows) as lists of dicts."""
    if not 0 <= min_attention <= 1:
        raise Db3dError(f"--min-attention must be in [0, 1] (got {min_attention})")
    raters = rater_table(responses, min_attention)
    kept = {r["rater_id"] for r in raters if r["kept"]}
    pairs = {p["id"]: p for p in manifest["pairs"]}
    method = manifest["method"]
    votes: dict[tuple[str, str], list[int]] = {}   # (question, pair) -> [method, baseline]
    voters: dict[tuple[str, str], set] = {}        # (question, baseline) -> raters
    unknown = 0
    for r in responses:
        if r["kind"] != "pair" or r["rater_id"] not in kept:
            continue
        p = pairs.get(r["item"])
        if p is None or r["chosen"] not in (method, p["baseline"]["variant"]):
            unknown += 1
            continue
        v = votes.setdefault((r["question"], p["id"]), [0, 0])
        v[0 if r["chosen"] == method else 1] += 1
        voters.setdefault((r["question"], p["baseline"]["variant"]), set()).add(r["rater_id"])
    if unknown:
        log.warning("userstudy: %d answer(s) name a pair or variant the manifest does not have; ignored", unknown)

    baselines = [b for b in design.BASELINES if any(p["baseline"]["variant"] == b for p in manifest["pairs"])]
    names = manifest.get("variant_names", design.VARIANT_NAMES)
    pair_rows, summary = [], []
    for q in manifest["questions"]:
        for b in baselines:
            rows = []
            for p in manifest["pairs"]:
                if p["baseline"]["variant"] != b:
                    continue
                vm, vb = votes.get((q["id"], p["id"]), [0, 0])
                rows.append({"question": q["id"], "pair_id": p["id"], "subject": p["subject"],
                             "prompt_id": p["prompt_id"], "baseline": b, "votes_method": vm, "votes_baseline": vb,
                             "n": vm + vb, "majority": majority(vm, vb) if vm + vb else ""})
            pair_rows.extend(rows)
            n = sum(r["n"] for r in rows)
            k = sum(r["votes_method"] for r in rows)
            rated = [r for r in rows if r["n"] > 0]
            pm = sum(r["majority"] == "method" for r in rated)
            pb = sum(r["majority"] == "baseline" for r in rated)
            lo, hi = wilson_interval(k, n)
            plo, phi = wilson_interval(pm, pm + pb)
            kappa_items = [[r["votes_method"], r["votes_baseline"]] for r in rows if r["n"] >= 2]
            summary.append({
                "question": q["id"], "question_text": q["text"], "baseline": b, "baseline_name": names.get(b, b),
                "raters_kept": len(kept), "raters_dropped": len(raters) - len(kept),
                "n_raters": len(voters.get((q["id"], b), ())), "n_responses": n, "n_prefer_method": k,
                "rate": k / n if n else float("nan"), "ci_low": lo, "ci_high": hi, "p_value": binomial_p(k, n),
                "n_pairs": len(rated), "pairs_method": pm, "pairs_baseline": pb, "pairs_tied": len(rated) - pm - pb,
                "pair_rate": pm / (pm + pb) if pm + pb else float("nan"), "pair_ci_low": plo, "pair_ci_high": phi,
                "pair_p_value": binomial_p(pm, pm + pb),
                "fleiss_kappa": fleiss_kappa(kappa_items), "kappa_items": len(kappa_items),
            })
    return summary, pair_rows, raters


def _write_tsv(path: Path, columns: list[str], rows: list[dict]) -> None:
    import csv

    def fmt(v):
        if v is None:
            return ""
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.6g}"
        return v

    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, columns, delimiter="\t", lineterminator="\n")
            w.writeheader()
            w.writerows({c: fmt(r[c]) for c in columns} for r in rows)


def output_paths(out: str | Path) -> dict[str, Path]:
    out = Path(out)
    return {"summary": out, "pairs": out.with_name(f"{out.stem}_pairs.tsv"),
            "raters": out.with_name(f"{out.stem}_raters.tsv")}


def analyse(study_dir: str | Path, out: str | Path, responses: str | Path | None = None,
            min_attention: float = 1.0) -> dict[str, Path]:
    """Write the three tables (see the module docstring); returns their paths."""
    study_dir = Path(study_dir)
    manifest = design.load_manifest(study_dir)
    rows = load_responses(study_dir, responses)
    summary, pairs, raters = analyse_responses(manifest, rows, min_attention)
    paths = output_paths(out)
    _write_tsv(paths["summary"], SUMMARY_COLUMNS, summary)
    _write_tsv(paths["pairs"], PAIR_COLUMNS, pairs)
    _write_tsv(paths["raters"], RATER_COLUMNS, raters)
    kept = sum(r["kept"] for r in raters)
    log.info("userstudy: %d responses, %d/%d raters kept -> %s", len(rows), kept, len(raters), paths["summary"])
    return paths
