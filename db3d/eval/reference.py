"""Reference rows of the ground-truth tables: what no method at all scores (`python -m db3d reference`).

`untrained`: the NeRF every variant starts from - `build_field(nerf)` under `seed_everything(seed)`,
not one step of training - evaluated exactly as the variants are (`ground_truth_metrics`: the same
cameras, renders over white, LPIPS, silhouette, Chamfer, Janus (GT)). A variant that scores like it
learnt nothing about the object; when every variant does, "no clear difference between variants"
means they all fail alike, and the report shows that beside the headline.

`oracle`: the same initial field fit by plain MSE reconstruction to the TRUE renders of the object
from ORACLE_VIEWS cameras all around it (`oracle_field`): no diffusion model, no photo, no
regulariser; as many steps as stage 1 (`stage1.iters`) at SDS's learning rate, renders at
`nerf.render_resolution` over white. What this NeRF, at this size and budget, can score when it is
shown the answer: every variant's metrics lie between the two rows (above the oracle, a variant
would have learnt more from the prior than the truth teaches). Its info.json keeps the fit's
loss curve and wall time.

Rows: `METRIC_COLUMNS`, `variant` = the reference's name, `model` = "ground truth", `prompt_id`
empty (the reference answers no prompt). `results/reference.tsv` collects them (rule
collect_reference); `db3d.report.groundtruth` reads it beside results/metrics.tsv.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from ..errors import DataError
from ..io import atomic_path, write_json
from ..variants import EVAL_FILES, REFERENCE_INFO, REFERENCES
from .groundtruth import GT_MODEL
from .table import METRIC_COLUMNS

log = logging.getLogger(__name__)

UNTRAINED, ORACLE = REFERENCES  # declared with the config keys each reads in db3d.variants
REFERENCE_FILE = "reference.tsv"  # beside metrics.tsv (results/)
# The oracle's training views: ORACLE_VIEWS cameras all around the object (azimuths stratified over
# 360 degrees, the back included; radius, elevation and fov drawn from nerf.camera), ORACLE_BATCH
# of them per Adam step; progress in the log every ORACLE_LOG_EVERY steps.
ORACLE_VIEWS = 24
ORACLE_BATCH = 1
ORACLE_LOG_EVERY = 50
# Weight of MSE(opacity, true mask) beside the colour MSE. It helps (default config, seed 0, mug /
# snowman / house): Chamfer 0.049 / 0.082 / 0.054 without it, 0.046 / 0.032 / 0.043 with it, PSNR
# +0.5 / +0.0 / +0.8 dB; the snowman's white body is invisible over a white background to colour alone.
ORACLE_MASK_WEIGHT = 1.0


def untrained_field(cfg: dict):
    """The field and background a NeRF fit starts from at `cfg["seed"]` (RGB)."""
    from ..io import seed_everything
    from ..nerf import build_field

    seed_everything(int(cfg["seed"]), bool(cfg["deterministic"]))
    return build_field(cfg["nerf"], out_channels=3)


def oracle_cameras(camera_cfg: dict, n: int, generator):
    """`n` training cameras all around the object: azimuth i of n stratified in [-180 + 360 i/n,
    -180 + 360 (i+1)/n) (so the back is always seen), radius, elevation and fov uniform in the
    `nerf.camera` ranges, all drawn from `generator`."""
    import torch

    from ..nerf import cameras_from_spherical
    from ..nerf.cameras import _as_range

    def uniform(key):
        lo, hi = _as_range(camera_cfg[key])
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    az = -180.0 + 360.0 * (torch.arange(n, dtype=torch.float32) + torch.rand(n, generator=generator)) / n
    el, r, fov = uniform("elevation_deg"), uniform("radius"), uniform("fov_deg")
    return cameras_from_spherical(az, el, r, fov)


def oracle_field(cfg: dict, obj, device, *, views: int = ORACLE_VIEWS, batch: int = ORACLE_BATCH,
                 iters: int | None = None, mask_weight: float = ORACLE_MASK_WEIGHT):
    """`untrained_field(cfg)` fit by plain MSE reconstruction to the true renders of `obj`
    (`render_object`, over white, at nerf.render_resolution) from `views` cameras all around it:
    albedo, no normals, nerf.num_samples per ray, composited over WHITE (so the density must
    match the silhouette), Adam at sds.learning_rate, `batch` random views per step, `iters`
    steps (default stage1.iters: the main NeRF stages' length), plus `mask_weight` x MSE(opacity,
    true mask). No diffusion model, no regulariser. Seeded (cameras, view order and ray jitter
    from one generator at cfg seed). Returns (field, background, record)."""
    import torch
    import torch.nn.functional as F

    from ..nerf import render
    from ..synth.world import render_object

    t0 = time.perf_counter()
    field, background = untrained_field(cfg)
    field, background = field.to(device).train(), background.to(device)
    iters = int(cfg["stage1"]["iters"]) if iters is None else int(iters)
    res, num_samples = int(cfg["nerf"]["render_resolution"]), int(cfg["nerf"]["num_samples"])
    ambient = float(cfg["nerf"]["shading"]["ambient"])
    generator = torch.Generator().manual_seed(int(cfg["seed"]))
    cams = oracle_cameras(cfg["nerf"]["camera"], views, generator)
    truth, masks = render_object(obj, cams, res)
    cams, truth, masks = cams.to(device), truth.to(device), masks.to(device)
    white = torch.ones(3, device=device)
    optimizer = torch.optim.Adam(field.parameters(), lr=float(cfg["sds"]["learning_rate"]),
                                 betas=(0.9, 0.99), eps=1e-15)
    t_truth = time.perf_counter() - t0
    losses: dict[str, list[float]] = {"rgb": [], "mask": []}  # per step: MSE of colour, of opacity
    for step in range(iters):
        idx = torch.randperm(views, generator=generator)[:batch]
        out = render(field, background, cams[idx], res, res, shading="albedo", ambient=ambient,
                     num_samples=num_samples, sampler="auto", generator=generator, normals=False,
                     background_color=white)
        rgb = F.mse_loss(out.image, truth[idx])
        mask = F.mse_loss(out.opacity, masks[idx])
        loss = rgb + mask_weight * mask
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses["rgb"].append(float(rgb.detach()))
        losses["mask"].append(float(mask.detach()))
        if (step + 1) % ORACLE_LOG_EVERY == 0 or step + 1 == iters:
            k = len(losses["rgb"][-ORACLE_LOG_EVERY:])
            log.info("oracle fit %d/%d: colour mse %.5f, mask mse %.5f (means of the last %d steps), %.1f s",
                     step + 1, iters, sum(losses["rgb"][-k:]) / k, sum(losses["mask"][-k:]) / k, k,
                     time.perf_counter() - t0)
    field.eval()
    record = {"views": views, "batch": batch, "iters": iters, "resolution": res, "num_samples": num_samples,
              "learning_rate": float(cfg["sds"]["learning_rate"]), "mask_weight": mask_weight,
              "background": "white", "azimuth_deg": [float(a) for a in cams.azimuth_deg.cpu()],
              "losses": losses, "time_s": {"truth": t_truth, "fit": time.perf_counter() - t0 - t_truth}}
    return field, background, record


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
    t0 = time.perf_counter()
    fit = None
    if kind == ORACLE:
        field, background, fit = oracle_field(cfg, obj, device)
    else:
        field, background = untrained_field(cfg)
        field.to(device).eval()
    t1 = time.perf_counter()
    rows, info = ground_truth_metrics(cfg, field, background, {}, obj, device)
    timing = {"fit": t1 - t0, "ground_truth": time.perf_counter() - t1}
    base = dict(subject=subject_dir.name, prompt_id="", variant=kind, setting=setting, seed=int(cfg["seed"]),
                model=GT_MODEL)
    df = pd.DataFrame([{**base, "metric": m, "value": v, "note": n} for m, v, n in rows], columns=METRIC_COLUMNS)
    log.info("reference %s %s %s: %s", kind, subject_dir.name, setting,
             ", ".join(f"{m} {v:.3f}" for m, v, _ in rows))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / REFERENCE_INFO, {"reference": kind, "seed": int(cfg["seed"]), "device": str(device),
                                       "timing_s": timing, **({"fit": fit} if fit else {}), "ground_truth": info})
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
