"""The paper's published numbers beside ours: config/paper_results.yaml, read here and nowhere else.

The YAML holds values copied from ../shared/paper/SOURCE.md with their citation (Table 1's CLIP
R-Precision, the user-study figure's bars); nothing here is typed from memory. A variant the
paper's table has no row for is "not reported"; a model missing from a row it has is "n/a".
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from ..config import REPO_ROOT
from ..errors import Db3dError
from .common import PAPER_CLIP_LABELS, VARIANT_NAMES
from .select import USERSTUDY_QUESTIONS, base_model

PAPER_RESULTS_PATH = REPO_ROOT / "config" / "paper_results.yaml"
NOT_REPORTED = "not reported"


@lru_cache(maxsize=4)
def load(path: Path = PAPER_RESULTS_PATH) -> dict:
    import yaml

    try:
        obj = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise Db3dError(f"cannot read the paper's results {path}: {e}") from None
    for key in ("citation", "r_precision", "user_study"):
        if not isinstance(obj, dict) or key not in obj:
            raise Db3dError(f"{path}: missing key {key!r} (see the file's header)")
    return obj


def r_precision(variant: str, model: str, paper: dict | None = None) -> float | str | None:
    """The paper's Table 1 value for (variant, CLIP model label), `NOT_REPORTED`, or None (n/a)."""
    values = (paper or load())["r_precision"].get("values") or {}
    if variant not in values:  # Table 1 has rows for the variants in the file only (Latent-NeRF has none)
        return NOT_REPORTED
    v = values[variant].get(base_model(model))
    return None if v is None else float(v)


def fmt_paper(v: float | str | None) -> str:
    if isinstance(v, str):
        return v
    return "n/a" if v is None else f"{v:.3f}"


def source_line(paper: dict | None = None, what: str = "table") -> str:
    p = paper or load()
    part = p["r_precision"].get("table", "Table 1") if what == "table" else p["user_study"].get("figure", "")
    return f"{p['citation']}, {part}; values from {p['source']}."


def pool_statement(pool: dict | None, n_subjects: int, paper: dict | None = None) -> str:
    """The retrieval pools side by side: the paper's is not published, ours is stated (size, make-up)."""
    p = paper or load()
    theirs = p["r_precision"].get("pool")
    theirs_txt = (f"The paper's retrieval pool: {theirs}." if theirs else
                  "The paper does not publish its retrieval pool (its distractor prompts are not given), so "
                  "its R-Precision and ours rank the same views against different candidates.")
    if pool is None:
        return theirs_txt + " Ours: no retrieval_pool.json was found beside the evaluations."
    size = len(pool.get("pool") or [])
    return (f"{theirs_txt} Ours is published with every evaluation (eval/<variant>/retrieval_pool.json): "
            f"{size} prompts: every eval3d prompt of the study's subjects ({n_subjects} in this table) with the "
            "class noun in place of the rare token, identical prompts merged, and the evaluated prompt added when "
            "it is not among them (db3d.eval.rprecision.retrieval_pool).")


def userstudy_rows(paper: dict | None = None) -> list[dict]:
    """The paper's bars as shares (0-1): {question, baseline, label, method, tied, baseline_preferred}.
    `tied` is the remainder (the figure leaves the grey bar unlabelled)."""
    out = []
    for b in (paper or load())["user_study"]["bars"]:
        m, o = float(b["method"]) / 100, float(b["baseline_preferred"]) / 100
        q = USERSTUDY_QUESTIONS.get(b["question"], b["question"])
        out.append({"question": b["question"], "baseline": b["baseline"],
                    "label": f"{q} vs {VARIANT_NAMES.get(b['baseline'], b['baseline'])}",
                    "method": m, "tied": max(0.0, round(1 - m - o, 4)), "baseline_preferred": o})
    return out


def model_header(model: str) -> str:
    b = base_model(model)
    return PAPER_CLIP_LABELS.get(b, b)
