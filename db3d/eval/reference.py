"""Reference rows of the ground-truth tables: what no method at all scores (`python -m db3d reference`).

`untrained`: the NeRF every variant starts from - `build_field(nerf)` under `seed_everything(seed)`,
not one step of training - evaluated exactly as the variants are (`ground_truth_metrics`: the same
cameras, renders over white, LPIPS, silhouette, Chamfer, Janus (GT)). A variant that scores like it
learnt nothing about the object; when every variant does, "no clear difference between variants"
means they all fail alike, and the report shows that beside the headline.

Rows: `METRIC_COLUMNS`, `variant` = the reference's name, `model` = "ground truth", `prompt_id`
empty (the reference answers no prompt). `results/reference.tsv` collects them (rule
collect_reference); `db3d.report.groundtruth` reads it beside results/metrics.tsv.
"""
from __future__ import annotations

import logging
from pathlib import Path

from ..errors import DataError
from ..io import atomic_path, write_json
from ..variants import EVAL_FILES
from .groundtruth import GT_MODEL
from .table import METRIC_COLUMNS

log = logging.getLogger(__name__)

UNTRAINED = "untrained"
REFERENCES = (UNTRAINED,)
REFERENCE_FILE = "reference.tsv"  # beside metrics.tsv (results/)


def untrained_field(cfg: dict):
    """The field and background a NeRF fit starts from at `cfg["seed"]` (RGB)."""
    from ..io import seed_everything
    from ..nerf import build_field

    seed_everything(int(cfg["seed"]), bool(cfg["deterministic"]))
    return build_field(cfg["nerf"], out_channels=3)


def write_reference(cfg: dict, kind: str, subject_dir: Path, setting: str, out_dir: Path) -> Path:
    """Evaluate reference `kind` against the synthetic subject in `subject_dir`; writes
    `out_dir/metrics.tsv` (last) and `out_dir/info.json`. Returns the metrics path."""
    import pandas as pd

    from ..synth.world import load_object
    from .groundtruth import ground_truth_metrics
    from .run import resolve_device

    if kind not in REFERENCES:
        raise DataError(f"reference {kind!r}: expected one of {', '.join(REFERENCES)}")
    subject_dir, out_dir = Path(subject_dir), Path(out_dir)
    obj = load_object(subject_dir)
    if obj is None:
        raise DataError(f"{subject_dir} has no object.json: reference rows need a synthetic subject "
                        "(dataset.kind: synthetic)")
    device = resolve_device(cfg)
    field, background = untrained_field(cfg)
    field.to(device).eval()
    rows, info = ground_truth_metrics(cfg, field, background, {}, obj, device)
    base = dict(subject=subject_dir.name, prompt_id="", variant=kind, setting=setting, seed=int(cfg["seed"]),
                model=GT_MODEL)
    df = pd.DataFrame([{**base, "metric": m, "value": v, "note": n} for m, v, n in rows], columns=METRIC_COLUMNS)
    log.info("reference %s %s %s: %s", kind, subject_dir.name, setting,
             ", ".join(f"{m} {v:.3f}" for m, v, _ in rows))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "info.json", {"reference": kind, "seed": int(cfg["seed"]), "ground_truth": info})
    out = out_dir / EVAL_FILES["metrics"]
    with atomic_path(out) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format="%.6f")
    return out


def load_reference(results_dir: str | Path):
    """results/reference.tsv as a metrics DataFrame (empty when it does not exist)."""
    import pandas as pd

    from .table import read_metrics

    path = Path(results_dir) / REFERENCE_FILE
    return read_metrics(path) if path.is_file() else pd.DataFrame(columns=METRIC_COLUMNS)
