"""Volume rendering of a `RadianceField` from `Cameras`, through `nerfacc.volrend`.

Two samplers feed the same nerfacc compositing functions (`render_weight_from_density`,
`accumulate_along_rays`):
- 'torch': plain-PyTorch stratified sampling, `num_samples` contiguous equal intervals per ray
  over its chord through [-bound, bound]^3 (one random offset per ray while training, bin centres
  otherwise). Produces dense [n_rays, n_samples] tensors, which nerfacc composites with torch
  ops only, so this path runs on CPU (where nerfacc's CUDA extension is absent).
- 'nerfacc': `nerfacc.OccGridEstimator.sampling` (ray marching with empty-space skipping and early
  termination, CUDA only), packed samples + `ray_indices`, as in nerfacc's examples. Keep an
  estimator across steps (`make_estimator`) and refresh it with `update_estimator` every step.
- 'auto': 'nerfacc' when the field is on a CUDA device and nerfacc's CUDA ops load, else 'torch'.
  On a CUDA device without them (their JIT build needs nvcc, ninja and a host C++ compiler) that
  is a several-fold slower run, so it logs one warning naming the cause and the fix; every render
  reports its sampler in `info` and to db3d.jobperf (the job's log line).
  Without an `estimator` the nerfacc path makes an all-occupied one (marching without skipping).

Outputs follow nerfacc's `rendering`: colour composited over the background, opacity = sum of
weights, depth = expected depth / opacity, plus the weight-averaged (unnormalised) world-space
normal, and the regularisers (orientation, opacity, distortion) as scalars.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field as dc_field
from typing import Any

import nerfacc
import torch
from torch import Tensor

from .cameras import Cameras, generate_rays, ray_aabb
from .field import Background, RadianceField
from .losses import distortion_loss, opacity_loss, orientation_loss
from .. import jobperf
from .shading import SHADINGS, light_directional, sample_light_positions, shade

log = logging.getLogger(__name__)
SAMPLERS = ("auto", "torch", "nerfacc")
NEAR_PLANE = 0.05  # cameras may sit inside the bounding cube; never sample behind/at the lens
# Rays x samples per ray evaluated per chunk: bounds the peak memory of large renders (evaluation at
# 256 px, turntables). Large enough that a training render at the paper's 64 px x 96 samples is one
# chunk: every chunk repeats the whole launch sequence of sampling, field and shading (and their
# backward), and at that size the step is bound by the host issuing kernels, not by the GPU.
CHUNK_POINTS = 1 << 19


@dataclass
class RenderOutput:
    image: Tensor  # [B,C,H,W] composited over the background
    opacity: Tensor  # [B,1,H,W]
    depth: Tensor  # [B,1,H,W] expected ray distance / opacity
    normal: Tensor  # [B,3,H,W] weight-accumulated world-space normal (zero where empty)
    losses: dict[str, Tensor]  # 'orientation', 'opacity', 'distortion' scalars
    info: dict[str, Any] = dc_field(default_factory=dict)  # sampler used, samples evaluated


@functools.lru_cache(maxsize=None)
def nerfacc_cuda_problem() -> str | None:
    """Why nerfacc's CUDA ops are not usable here (None: they load). Loading may JIT-compile
    them on the first call, which takes minutes once."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    try:
        from nerfacc.cuda._backend import _C  # noqa: PLC0415
    except Exception as exc:  # noqa: BLE001 - any build/import failure means "not available"
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        return f"their build failed ({type(exc).__name__}: {first})"
    if _C is None:
        return "nerfacc found no CUDA toolkit (nvcc not on PATH) and did not build them"
    return None


def nerfacc_cuda_available() -> bool:
    """True when a CUDA device is visible and nerfacc's CUDA extension loads."""
    return nerfacc_cuda_problem() is None


@functools.lru_cache(maxsize=None)
def _warn_torch_fallback(problem: str) -> None:
    """Once per process: 'auto' on a CUDA device falls back to the dense torch sampler."""
    log.warning("sampler auto: nerfacc's CUDA ops are not usable (%s), so this CUDA run renders with the "
                "dense torch sampler, several times slower; fix: put nvcc, ninja and a host C++ compiler on "
                "PATH (the conda env envs/gpu.yaml has cuda-nvcc, ninja and gxx) and rerun", problem)


def default_step_size(bound: float, num_samples: int) -> float:
    """Marching step giving the occupancy-grid sampler the torch sampler's spacing on a ray
    through the centre along an axis (chord 2*bound)."""
    return 2.0 * bound / num_samples


def make_estimator(bound: float, resolution: int = 64, device: Any = None) -> nerfacc.OccGridEstimator:
    """An occupancy grid over [-bound, bound]^3 that starts all-occupied, so it can be sampled
    before its first `update_estimator` (nerfacc's starts empty)."""
    b = float(bound)
    est = nerfacc.OccGridEstimator(roi_aabb=[-b, -b, -b, b, b, b], resolution=resolution, levels=1)
    est.binaries.fill_(True)
    return est.to(device) if device is not None else est


@functools.lru_cache(maxsize=8)
def _all_occupied_estimator(bound: float, device: str) -> nerfacc.OccGridEstimator:
    """Shared, never-updated estimator for nerfacc renders given no estimator (marching with
    early termination, no skipping)."""
    return make_estimator(bound, device=device)


def update_estimator(estimator: nerfacc.OccGridEstimator, field: RadianceField, step: int, *,
                     num_samples: int, occ_thre: float = 1e-2, ema_decay: float = 0.95,
                     warmup_steps: int = 256, n: int = 16) -> None:
    """nerfacc's `update_every_n_steps` with occupancy = density * step size (as its examples do).
    Call once per training step, before rendering."""
    step_size = default_step_size(field.bound, num_samples)

    def occ_eval_fn(x: Tensor) -> Tensor:
        return field.density(x)[:, None] * step_size

    estimator.train()
    estimator.update_every_n_steps(step=step, occ_eval_fn=occ_eval_fn, occ_thre=occ_thre,
                                   ema_decay=ema_decay, warmup_steps=warmup_steps, n=n)


def _choose_sampler(sampler: str, device: torch.device) -> str:
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    if sampler == "auto":
        if device.type != "cuda":
            return "torch"
        problem = nerfacc_cuda_problem()
        if problem is not None:
            _warn_torch_fallback(problem)
            return "torch"
        return "nerfacc"
    if sampler == "nerfacc" and not (device.type == "cuda" and nerfacc_cuda_available()):
        raise RuntimeError("sampler='nerfacc' needs the field on a CUDA device and nerfacc's CUDA ops; "
                           "use sampler='torch' or 'auto'")
    return sampler


def render(
    field: RadianceField,
    background: Background,
    cameras: Cameras,
    height: int,
    width: int,
    *,
    shading: str = "albedo",
    light_dir: Any = None,
    ambient: float = 0.1,
    num_samples: int = 48,
    sampler: str = "auto",
    estimator: nerfacc.OccGridEstimator | None = None,
    generator: torch.Generator | None = None,
    train: bool = True,
    normals: bool = True,
    background_color: Tensor | None = None,
) -> RenderOutput:
    """Render B cameras at height x width.

    shading: 'albedo' | 'lambertian' | 'textureless' (ignored for latent fields, C != 3).
    light_dir: None -> a random point light near each camera (`generator`); else a direction
      ([3] or [B,3], scene -> light) of a directional light.
    train: stratified jitter of samples, and normals keep their graph (`create_graph`) so the
      orientation loss trains the density. `normals=False` skips normals (faster; only with
      albedo shading; normal image and orientation loss are then zero).
    background_color: [C] or [B,C] solid colour composited instead of `background` (training's
      random-colour background augmentation: the object must be explained by the density).
    """
    if shading not in SHADINGS:
        raise ValueError(f"shading must be one of {SHADINGS}, got {shading!r}")
    C = field.out_channels
    shaded = shading != "albedo" and C == 3
    if shaded and not normals:
        raise ValueError(f"shading={shading!r} needs normals=True")
    device = next(field.parameters()).device
    mode = _choose_sampler(sampler, device)
    jobperf.note_sampler(mode, device.type)
    cameras = cameras.to(device)
    B = len(cameras)
    rays_o, rays_d = generate_rays(cameras, height, width)
    rays_o, rays_d = rays_o.reshape(-1, 3), rays_d.reshape(-1, 3)
    n_rays = rays_o.shape[0]
    cam_idx = torch.arange(B, device=device).repeat_interleave(height * width)

    # light: per ray, either a point position or a direction
    light_pos = light_vec = None
    if shaded:
        if light_dir is None:
            light_pos = sample_light_positions(cameras, generator)[cam_idx]
        else:
            light_vec = light_directional(light_dir, B, rays_o)[cam_idx]

    ctx = _RayCtx(field=field, shading=shading, ambient=ambient, train=train, normals=normals,
                  create_graph=train and normals and torch.is_grad_enabled())
    if mode == "torch":
        S = int(num_samples)
        if train:
            gdev = generator.device if generator is not None else torch.device("cpu")
            offsets = torch.rand(n_rays, 1, generator=generator, device=gdev).to(rays_o)
        else:
            offsets = torch.full((n_rays, 1), 0.5, dtype=rays_o.dtype, device=device)
        chunk = max(1, CHUNK_POINTS // S)
        parts = [
            _render_dense(ctx, rays_o[i:i + chunk], rays_d[i:i + chunk], offsets[i:i + chunk], S,
                          None if light_pos is None else light_pos[i:i + chunk],
                          None if light_vec is None else light_vec[i:i + chunk])
            for i in range(0, n_rays, chunk)
        ]
    else:
        est = estimator.to(device) if estimator is not None else _all_occupied_estimator(field.bound, str(device))
        step = default_step_size(field.bound, int(num_samples))
        chunk = max(1, CHUNK_POINTS // int(num_samples))
        parts = [
            _render_packed(ctx, est, step, rays_o[i:i + chunk], rays_d[i:i + chunk],
                           None if light_pos is None else light_pos[i:i + chunk],
                           None if light_vec is None else light_vec[i:i + chunk])
            for i in range(0, n_rays, chunk)
        ]

    comp, opacity, depth, normal = (torch.cat([p[k] for p in parts]) for k in range(4))
    orient = sum(p[4] for p in parts) / n_rays
    dist = sum(p[5] for p in parts) / n_rays
    n_samples = sum(int(p[6]) for p in parts)

    if background_color is None:
        bg = background(rays_d)
    else:
        bg = background_color.to(comp).reshape(-1, C).expand(B, C)[cam_idx]
    image = comp + (1.0 - opacity) * bg

    def to_img(t: Tensor) -> Tensor:
        return t.reshape(B, height, width, -1).permute(0, 3, 1, 2).contiguous()

    opacity_img = to_img(opacity)
    return RenderOutput(
        image=to_img(image), opacity=opacity_img, depth=to_img(depth), normal=to_img(normal),
        losses={"orientation": orient, "opacity": opacity_loss(opacity_img), "distortion": dist},
        info={"sampler": mode, "samples": n_samples},
    )


@dataclass
class _RayCtx:
    field: RadianceField
    shading: str
    ambient: float
    train: bool
    normals: bool
    create_graph: bool

    def query(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        if self.normals:
            return self.field.forward_with_normals(x, create_graph=self.create_graph)
        sigma, feat = self.field(x)
        return sigma, feat, None


def _to_light(x: Tensor, light_pos: Tensor | None, light_vec: Tensor | None) -> Tensor | None:
    """Unit vectors from sample points x [...,3] to the light; light_* are per-ray [...,3]
    already broadcastable to x."""
    if light_pos is not None:
        return torch.nn.functional.normalize(light_pos - x, dim=-1)
    return light_vec


def _render_dense(ctx: _RayCtx, o: Tensor, d: Tensor, offsets: Tensor, S: int,
                  light_pos: Tensor | None, light_vec: Tensor | None) -> tuple:
    field = ctx.field
    R = o.shape[0]
    t_near, t_far, _ = ray_aabb(o, d, field.bound, NEAR_PLANE)
    delta = ((t_far - t_near) / S)[:, None]  # [R,1]; 0 for rays missing the box
    k = torch.arange(S, dtype=o.dtype, device=o.device)[None]
    t_mid = t_near[:, None] + (k + offsets) * delta  # [R,S]
    t_starts, t_ends = t_mid - 0.5 * delta, t_mid + 0.5 * delta
    x = o[:, None, :] + d[:, None, :] * t_mid[..., None]  # [R,S,3]
    sigma, feat, nrm = ctx.query(x.reshape(-1, 3))
    sigma = sigma.reshape(R, S)
    feat = feat.reshape(R, S, -1)
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigma)
    if nrm is not None:
        nrm = nrm.reshape(R, S, 3)
    to_light = _to_light(x, None if light_pos is None else light_pos[:, None], None if light_vec is None else light_vec[:, None])
    if to_light is not None:
        to_light = to_light.expand(R, S, 3)
    color = shade(feat, nrm, to_light, ctx.shading, ctx.ambient)
    comp = nerfacc.accumulate_along_rays(weights, color)
    opacity = nerfacc.accumulate_along_rays(weights, None)
    depth = nerfacc.accumulate_along_rays(weights, t_mid[..., None]) / opacity.clamp_min(torch.finfo(o.dtype).eps)
    if nrm is not None:
        normal = nerfacc.accumulate_along_rays(weights, nrm)
        orient = orientation_loss(weights, nrm, d) * R
    else:
        normal = torch.zeros(R, 3, dtype=o.dtype, device=o.device)
        orient = torch.zeros((), dtype=o.dtype, device=o.device)
    dist = distortion_loss(weights, t_starts, t_ends) * R
    return comp, opacity, depth, normal, orient, dist, R * S


def _render_packed(ctx: _RayCtx, est: nerfacc.OccGridEstimator, step: float, o: Tensor, d: Tensor,
                   light_pos: Tensor | None, light_vec: Tensor | None) -> tuple:
    """nerfacc's occupancy-grid path (CUDA): packed samples with ray indices."""
    field = ctx.field
    R = o.shape[0]
    o, d = o.contiguous(), d.contiguous()

    def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        x = o[ray_indices] + d[ray_indices] * ((t_starts + t_ends) * 0.5)[:, None]
        return field.density(x)

    ray_indices, t_starts, t_ends = est.sampling(
        o, d, sigma_fn=sigma_fn, near_plane=NEAR_PLANE, render_step_size=step,
        stratified=ctx.train, early_stop_eps=1e-4, alpha_thre=0.0)
    zeros = lambda n: torch.zeros(R, n, dtype=o.dtype, device=o.device)  # noqa: E731
    if t_starts.numel() == 0:
        z = torch.zeros((), dtype=o.dtype, device=o.device)
        return zeros(field.out_channels), zeros(1), zeros(1), zeros(3), z, z, 0
    ray_indices = ray_indices.long()
    t_mid = (t_starts + t_ends) * 0.5
    x = o[ray_indices] + d[ray_indices] * t_mid[:, None]
    sigma, feat, nrm = ctx.query(x)
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigma, ray_indices=ray_indices, n_rays=R)
    to_light = _to_light(x, None if light_pos is None else light_pos[ray_indices],
                         None if light_vec is None else light_vec[ray_indices])
    color = shade(feat, nrm, to_light, ctx.shading, ctx.ambient)
    acc = functools.partial(nerfacc.accumulate_along_rays, ray_indices=ray_indices, n_rays=R)
    comp = acc(weights, color)
    opacity = acc(weights, None)
    depth = acc(weights, t_mid[:, None]) / opacity.clamp_min(torch.finfo(o.dtype).eps)
    if nrm is not None:
        normal = acc(weights, nrm)
        orient = orientation_loss(weights, nrm, d[ray_indices], ray_indices=ray_indices, n_rays=R) * R
    else:
        normal = zeros(3)
        orient = torch.zeros((), dtype=o.dtype, device=o.device)
    dist = distortion_loss(weights, t_starts, t_ends, ray_indices=ray_indices, n_rays=R) * R
    return comp, opacity, depth, normal, orient, dist, int(t_starts.numel())
