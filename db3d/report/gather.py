"""What the report reads: the metrics table and, for its rows, the run folders (renders, pools, notes).

`Runs` maps db3d.workflow's `runs/...` paths into the runs folder; `Assets` writes the images the
report shows into its build folder under deterministic names (and keeps each animated turntable
for the HTML report). Nothing here formats a section: db3d.report.sections does.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from .. import workflow as wf
from ..errors import Db3dError
from .. import variants as V
from .common import (EVAL_INFO, RETRIEVAL_POOL, STAND_IN_BACKENDS, TURNTABLE_GIF, VARIANT_NAMES, VARIANT_ORDER,
                     model_sort_key, variant_sort_key)
from .images import strip_from
from .select import METRIC_LABEL, metric_model

log = logging.getLogger(__name__)

STRIP_ROW_CM = 1.45             # height of one image row in the galleries
STRIP_MAX_CM = 13.4             # widest image in a gallery row (A4 text width minus the label column)
COLLAPSED_LABEL = "collapsed: empty NeRF"


class Runs:
    """Paths inside the runs folder from the `runs/...` paths of db3d.workflow."""

    def __init__(self, runs_dir: Path):
        self.dir = Path(runs_dir)

    def path(self, rel: str) -> Path:
        return self.dir / rel.removeprefix("runs/")

    def eval_dir(self, setting: str, subject: str, prompt_id: str, variant: str) -> Path:
        return self.dir / setting / subject / prompt_id / "eval" / variant

    def stage_dir(self, setting: str, stage: str, subject: str, prompt_id: str) -> Path:
        return self.path(wf.stage_dir(setting, stage, subject, prompt_id))


class Assets:
    """Images written into the build folder under deterministic names (img/0001.png, ...)."""

    def __init__(self, build_dir: Path):
        self.build_dir = build_dir
        self.n = 0
        (build_dir / "img").mkdir(parents=True, exist_ok=True)

    def _next(self) -> Path:
        self.n += 1
        return self.build_dir / "img" / f"{self.n:04d}.png"

    def strip(self, source, units: int = 1) -> dict | None:
        """An image row: {"path", "width_cm", "height_cm"} (None when the source is missing)."""
        if source is None or (isinstance(source, list) and not source):
            return None
        try:
            path, aspect = strip_from(source, self._next())
        except (OSError, ValueError) as e:
            log.warning("report: cannot read %s: %s", source, e)
            return None
        h = STRIP_ROW_CM * units
        w = aspect * h
        if w > STRIP_MAX_CM:
            w, h = STRIP_MAX_CM, STRIP_MAX_CM / aspect
        out = {"path": path.relative_to(self.build_dir).as_posix(), "width_cm": round(w, 3), "height_cm": round(h, 3)}
        if isinstance(source, Path) and source.suffix.lower() == ".gif":
            # the animated turntable itself, for the HTML report (the PDF shows its frames side by side)
            anim = self.build_dir / "anim" / f"{self.n:04d}.gif"
            anim.parent.mkdir(exist_ok=True)
            shutil.copyfile(source, anim)
            out["anim"] = anim.relative_to(self.build_dir).as_posix()
        return out



def load_metrics(metrics_path: Path):
    import pandas as pd

    from ..eval.table import METRIC_COLUMNS, read_metrics

    if not Path(metrics_path).is_file():
        raise Db3dError(f"metrics table {metrics_path} does not exist; run `python -m db3d collect-metrics` first")
    if Path(metrics_path).stat().st_size == 0:
        return pd.DataFrame(columns=METRIC_COLUMNS)
    return read_metrics(metrics_path)


def table_models(df, cfg: dict, metric: str = "clip_r_precision") -> list[str]:
    sub = df[df["metric"] == metric] if len(df) else df
    labels = sorted(set(sub["model"]) - {""}, key=model_sort_key) if len(sub) else []
    if labels:
        return labels
    tiny = cfg.get("backend") in STAND_IN_BACKENDS
    return [f"tiny-random({m})" if tiny else m for m in cfg["models"]["clip"]]


def table_variants(df, cfg: dict) -> list[str]:
    """The config's variants (all four when it names none) and every variant of the table."""
    return sorted(set(cfg.get("variants") or VARIANT_ORDER) | set(df["variant"]), key=variant_sort_key)


def variant_render(runs: Runs, setting: str, subject: str, prompt_id: str, variant: str) -> Path | None:
    """The fixed-camera turntable of a variant (eval GIF), else the stage's training turntable PNG."""
    gif = runs.eval_dir(setting, subject, prompt_id, variant) / TURNTABLE_GIF
    if gif.is_file():
        return gif
    if variant not in V.VARIANTS:
        return None
    stage = V.STAGES[V.VARIANTS[variant].judged]
    png = runs.stage_dir(setting, stage.name, subject, prompt_id) / stage.dir / V.TURNTABLE
    return png if png.is_file() else None


def metric_note(df, setting: str, subject: str, prompt_id: str, variant: str) -> str:
    sub = df[(df["setting"] == setting) & (df["subject"] == subject) & (df["prompt_id"] == prompt_id)
             & (df["variant"] == variant)]
    parts = []
    for metric in ("clip_r_precision", "dino_i", "janus"):
        model = metric_model(df[df["model"] != "ground truth"], metric)
        vals = sub[(sub["metric"] == metric) & (sub["model"] == model)]["value"].tolist()
        if vals and vals[0] == vals[0]:
            parts.append(f"{METRIC_LABEL[metric]} {vals[0]:.3f}")
    for metric, label in (("psnr", "PSNR"), ("chamfer", "Chamfer")):  # synthetic track: ground truth
        vals = sub[(sub["metric"] == metric) & (sub["model"] == "ground truth")]["value"].tolist()
        if vals and vals[0] == vals[0]:
            parts.append(f"{label} {vals[0]:.3f}")
    return " \u00b7 ".join(parts)


def prompt_text(runs: Runs, setting: str, subject: str, prompt_id: str) -> str | None:
    for variant in sorted(VARIANT_NAMES, key=variant_sort_key):
        pool = runs.eval_dir(setting, subject, prompt_id, variant) / RETRIEVAL_POOL
        if pool.is_file():
            try:
                return str(json.loads(pool.read_text()).get("prompt") or "") or None
            except (OSError, ValueError):
                return None
    return None


def azimuth_text(runs: Runs, df, cfg: dict) -> str:
    for _, r in df[["setting", "subject", "prompt_id", "variant"]].drop_duplicates().iterrows():
        info = runs.eval_dir(r["setting"], r["subject"], r["prompt_id"], r["variant"]) / EVAL_INFO
        if info.is_file():
            try:
                az = json.loads(info.read_text()).get("azimuth_deg")
            except (OSError, ValueError):
                az = None
            if az:
                return ", ".join(f"{float(a):g}\u00b0" for a in az)
    n = int(cfg.get("eval", {}).get("num_views", 8))
    return ", ".join(f"{360 * i / n:g}\u00b0" for i in range(n))


def collapsed(df, setting: str, subject: str, prompt_id: str, variant: str) -> bool:
    """Whether the run's NeRF collapsed (the `collapsed` metric of db3d.eval.coverage is 1)."""
    if not len(df):
        return False
    sub = df[(df["metric"] == "collapsed") & (df["setting"] == setting) & (df["subject"] == subject)
             & (df["prompt_id"] == prompt_id) & (df["variant"] == variant)]
    return bool(len(sub)) and float(sub["value"].iloc[0]) >= 0.5


def run_label(df, label: str, setting: str, subject: str, prompt_id: str, variant: str) -> str:
    """An image row's label, with the collapse said wherever the run's images appear."""
    return f"{label} ({COLLAPSED_LABEL})" if collapsed(df, setting, subject, prompt_id, variant) else label


def first_pool(runs: "Runs", df) -> dict | None:
    """One evaluation's retrieval_pool.json (every evaluation of a table uses the same pool)."""
    for _, r in df[["setting", "subject", "prompt_id", "variant"]].drop_duplicates().sort_values(
            ["setting", "subject", "prompt_id", "variant"]).iterrows():
        p = runs.eval_dir(r["setting"], r["subject"], r["prompt_id"], r["variant"]) / RETRIEVAL_POOL
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except (OSError, ValueError):
                continue
    return None
