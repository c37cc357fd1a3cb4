"""The report's vocabulary and the small helpers every part of it shares.

All of the report's variant and stage vocabulary comes through here (display order and names, the
stage labels of the wall-time table, the headline's method and baselines, the evaluation's file
names), derived from db3d.variants (the one declaration of the experiment, issue 19). The other
report modules import these names (gather and sections also ask db3d.variants for a variant's
judged stage and the gallery's order); none keeps a copy.

No import of the other report modules (build, groundtruth, sections, ... all import this one), so
there is no import circle.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

from .. import variants as V
from ..config import resolve_key
from .select import base_model
from .stats import fmt_mean_se, mean_se

# Display order and names of the variants (the code names stay visible in the tables): db3d.variants.
VARIANT_ORDER = list(V.VARIANTS)
VARIANT_NAMES = V.labels()
CLIP_ORDER = ["ViT-B-16", "ViT-B-32", "ViT-L-14"]
PAPER_CLIP_LABELS = {"ViT-B-16": "ViT-B/16", "ViT-B-32": "ViT-B/32", "ViT-L-14": "ViT-L/14"}
# Backends whose CLIP/DINO metrics come from the random-weight stand-ins (toy: its prior is trained,
# the evaluation models are not; the ground-truth metrics are its real numbers, db3d.report.groundtruth).
STAND_IN_BACKENDS = ("tiny", "toy")

# Stages with a record file, by their display name, in pipeline order; then the evaluation.
STAGE_LABELS = {s.name: s.label for s in V.STAGE_LIST if s.record}
EVALUATE_LABEL = "evaluate"
STAGE_ORDER = [*STAGE_LABELS.values(), EVALUATE_LABEL]
# The headline (ground truth): the method against each headline baseline (where both have rows).
METHOD = V.METHOD
BASELINES = V.headline_baselines()
BASELINE_WORDS = {v.name: v.word for v in V.VARIANT_LIST}
# File names of an evaluation (db3d.variants declares them).
TURNTABLE_GIF = V.EVAL_FILES["turntable"]
EVAL_INFO = V.EVAL_FILES["info"]
RETRIEVAL_POOL = V.RETRIEVAL_POOL

def report_outputs(out_pdf) -> dict[str, str]:
    """The report's three outputs for a PDF path: the HTML page beside it and summary.md in its
    folder (rules/report.smk declares its outputs with this; build_report writes them)."""
    p = Path(out_pdf)
    return {"pdf": str(out_pdf), "html": str(p.with_suffix(".html")), "summary": str(p.parent / "summary.md")}


variant_sort_key = V.order_key


def model_sort_key(label: str) -> tuple:
    b = base_model(label)
    return (CLIP_ORDER.index(b) if b in CLIP_ORDER else len(CLIP_ORDER), b, label)


def fmt_num(v: Any, digits: int = 3) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "\u2014"
    if math.isnan(f):
        return "\u2014"
    return f"{f:.{digits}f}"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def canonical_hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def config_value(cfg: dict, param: str) -> Any:
    node: Any = cfg
    for part in resolve_key(param).split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node



def columns_table(df, columns: list[tuple[str, str, str]], variants: list[str]) -> dict:
    """Rows = variants, one column per (metric, model, header): mean +- s.e. (n)."""
    rows = []
    for v in variants:
        cells, ns = [], []
        for metric, model, _ in columns:
            vals = df[(df["variant"] == v) & (df["metric"] == metric) & (df["model"] == model)]["value"].tolist()
            mean, se, n = mean_se(vals)
            ns.append(n)
            cells.append(fmt_mean_se(mean, se, n))
        if max(ns, default=0) == 0:
            continue
        n_txt = str(max(ns)) if min(ns) == max(ns) else "/".join(map(str, ns))
        rows.append({"label": VARIANT_NAMES.get(v, v), "code": v, "cells": [n_txt] + cells})
    return {"header": ["Variant", "n"] + [h for _, _, h in columns], "rows": rows}

