"""`python -m db3d collect-metrics`: the per-run metric tables -> one tidy `results/metrics.tsv`."""
from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from ..io import atomic_path
# Columns of every metrics table (per run and collected).
METRIC_COLUMNS = ["subject", "prompt_id", "variant", "setting", "seed", "metric", "model", "value", "note"]
SORT_KEYS = ["setting", "subject", "prompt_id", "variant", "seed", "metric", "model"]


def read_metrics(path: str | Path):
    """One metrics TSV as a DataFrame with exactly `METRIC_COLUMNS` (strings kept as strings)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise DataError(f"metrics table {path} does not exist; run `python -m db3d evaluate` for it first")
    df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    if "model" not in df.columns:
        df["model"] = ""
    if "note" not in df.columns:
        df["note"] = ""
    missing = [c for c in METRIC_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(METRIC_COLUMNS)}")
    df = df[METRIC_COLUMNS].copy()
    df["seed"] = pd.to_numeric(df["seed"], errors="raise").astype("int64") if len(df) else df["seed"]
    df["value"] = pd.to_numeric(df["value"], errors="coerce").astype("float64")
    return df


def collect_metrics(inputs: list[Path], out: Path) -> Path:
    """Concatenate the per-run TSVs, sort stably by `SORT_KEYS`, write `out` atomically."""
    import pandas as pd

    if not inputs:
        raise DataError("collect-metrics: no input tables given")
    frames = [read_metrics(p) for p in inputs]
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values(SORT_KEYS, kind="mergesort").reset_index(drop=True)
    out = Path(out)
    with atomic_path(out) as tmp:
        df.to_csv(tmp, sep="\t", index=False, float_format="%.6f")
    return out
