"""Mean +- standard error as every report table writes it (its own module so the section modules
can use it without importing db3d.report.build)."""
from __future__ import annotations

import math


def mean_se(values) -> tuple[float, float | None, int]:
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    n = len(vals)
    if n == 0:
        return float("nan"), None, 0
    mean = sum(vals) / n
    if n < 2:
        return mean, None, n
    var = sum((v - mean) ** 2 for v in vals) / (n - 1)
    return mean, math.sqrt(var / n), n


def fmt_mean_se(mean: float, se: float | None, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "\u2014"
    return f"{mean:.3f} \u00b1 {se:.3f}" if se is not None else f"{mean:.3f}"
