"""How much of its views a NeRF covers, and whether it collapsed to an empty scene.

`coverage`: the mean fraction of the evaluation orbit's pixels (eval.num_views cameras, at
COVERAGE_RES px) where the NeRF's opacity exceeds 0.5. A NeRF whose coverage is below
`eval.collapse_coverage` counts as *collapsed* (SDS emptied it: the background explains the
image). Computed for every evaluated run, with or without ground truth, for any channel count.
"""
from __future__ import annotations

from typing import Any

import torch

COVERAGE_RES = 32  # enough to tell an object from an empty box; cheap on CPU
OPACITY_THRESHOLD = 0.5


@torch.no_grad()
def nerf_coverage(cfg: dict, field: Any, background: Any, meta: dict | None, device: Any) -> float:
    from ..nerf import orbit_cameras, render
    from .turntable import eval_fov_deg

    ev = cfg["eval"]
    cams = orbit_cameras(int(ev["num_views"]), float(ev["radius"]), float(ev["elevation_deg"]), eval_fov_deg(cfg))
    if hasattr(cams, "to"):
        cams = cams.to(device)
    out = render(field, background, cams, COVERAGE_RES, COVERAGE_RES, shading="albedo", ambient=1.0,
                 num_samples=cfg["nerf"]["num_samples"], train=False, normals=False)
    return float((out.opacity > OPACITY_THRESHOLD).float().mean())


def collapse_rows(cfg: dict, coverage: float) -> list[tuple[str, float, str]]:
    """(metric, value, note) rows: `coverage` and `collapsed` (1 or 0) at eval.collapse_coverage."""
    thr = float(cfg["eval"]["collapse_coverage"])
    note = f"opacity > {OPACITY_THRESHOLD:g} on the eval orbit at {COVERAGE_RES} px; collapsed below {thr:g}"
    return [("coverage", coverage, note), ("collapsed", float(coverage < thr), note)]
