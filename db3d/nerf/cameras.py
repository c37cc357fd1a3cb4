"""Cameras on a sphere around the object, and their rays.

Convention (shared by every module that renders, and by mesh export, since glTF is y-up):
- World space is **y-up**. The object sits at the origin inside [-bound, bound]^3.
- A camera at azimuth `az`, elevation `el` (degrees) and distance `r` sits at
  `r * (cos(el) sin(az), sin(el), cos(el) cos(az))` and looks at the origin:
  azimuth 0 is the **front** (camera on +z), azimuth 90 is on +x, elevation 90 looks straight down.
  Azimuths are stored wrapped to [-180, 180).
- Camera frame is OpenGL's: x right, y up, the camera looks along its -z. `c2w[:, :3, :3]`
  columns are (right, up, back) in world space and `c2w[:, :3, 3]` the position.
- Images are row-major with row 0 at the top; `fov_y_deg` is the vertical field of view.

`view_direction` buckets a camera the way DreamFusion picks its view-dependent prompt suffix.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor


@dataclass
class Cameras:
    """A batch of B look-at-origin cameras. All fields are tensors on one device."""

    c2w: Tensor  # [B,4,4]
    fov_y_deg: Tensor  # [B]
    azimuth_deg: Tensor  # [B]
    elevation_deg: Tensor  # [B]
    radius: Tensor  # [B]

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    def __getitem__(self, idx: Any) -> "Cameras":
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        return Cameras(*(getattr(self, f.name)[idx] for f in fields(self)))

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    @property
    def position(self) -> Tensor:
        """Camera centres [B,3]."""
        return self.c2w[:, :3, 3]

    def to(self, device: Any) -> "Cameras":
        return Cameras(*(getattr(self, f.name).to(device) for f in fields(self)))

    def to_dict(self) -> dict[str, Tensor]:
        """Plain tensors (for `torch.save(..., weights_only=True)`-friendly files)."""
        return {f.name: getattr(self, f.name).detach().cpu() for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Tensor]) -> "Cameras":
        return cls(*(torch.as_tensor(d[f.name]) for f in fields(cls)))

    @classmethod
    def cat(cls, cams: Sequence["Cameras"]) -> "Cameras":
        return cls(*(torch.cat([getattr(c, f.name) for c in cams]) for f in fields(cls)))


def wrap_azimuth(az: Tensor | float) -> Tensor | float:
    """Wrap degrees to [-180, 180)."""
    return (az + 180.0) % 360.0 - 180.0


def cameras_from_spherical(azimuth_deg: Tensor, elevation_deg: Tensor, radius: Tensor,
                           fov_y_deg: Tensor) -> Cameras:
    """Look-at-origin cameras from spherical coordinates (all [B], float)."""
    az = torch.deg2rad(azimuth_deg)
    el = torch.deg2rad(elevation_deg)
    back = torch.stack([torch.cos(el) * torch.sin(az), torch.sin(el), torch.cos(el) * torch.cos(az)], dim=-1)
    pos = radius[:, None] * back
    # right from the azimuth alone: well defined at the poles too
    right = torch.stack([torch.cos(az), torch.zeros_like(az), -torch.sin(az)], dim=-1)
    up = torch.cross(back, right, dim=-1)
    c2w = torch.zeros(az.shape[0], 4, 4, dtype=az.dtype, device=az.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = back
    c2w[:, :3, 3] = pos
    c2w[:, 3, 3] = 1.0
    return Cameras(c2w=c2w, fov_y_deg=fov_y_deg.clone(), azimuth_deg=wrap_azimuth(azimuth_deg),
                   elevation_deg=elevation_deg.clone(), radius=radius.clone())


def _as_range(value: Any) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        return float(value), float(value)
    lo, hi = value
    return float(lo), float(hi)


def _uniform(n: int, lo: float, hi: float, generator: torch.Generator | None) -> Tensor:
    dev = generator.device if generator is not None else torch.device("cpu")
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=dev, dtype=torch.float32).cpu()


def sample_cameras(n: int, camera_cfg: Mapping[str, Any], generator: torch.Generator | None = None,
                   device: Any = None) -> Cameras:
    """Random training cameras as in DreamFusion: azimuth ~ U[-180, 180), and radius, elevation
    and vertical fov uniform in the config ranges (`nerf.camera`: radius, elevation_deg, fov_deg;
    each a [lo, hi] pair or a number)."""
    r_lo, r_hi = _as_range(camera_cfg["radius"])
    e_lo, e_hi = _as_range(camera_cfg["elevation_deg"])
    f_lo, f_hi = _as_range(camera_cfg["fov_deg"])
    az = _uniform(n, -180.0, 180.0, generator)
    el = _uniform(n, e_lo, e_hi, generator)
    r = _uniform(n, r_lo, r_hi, generator)
    fov = _uniform(n, f_lo, f_hi, generator)
    cams = cameras_from_spherical(az, el, r, fov)
    return cams.to(device) if device is not None else cams


def orbit_cameras(n: int, radius: float, elevation_deg: float, fov_deg: float, device: Any = None,
                  start_azimuth_deg: float = 0.0) -> Cameras:
    """`n` cameras at evenly spaced azimuths starting at the front (0), e.g. for turntables."""
    az = start_azimuth_deg + torch.arange(n, dtype=torch.float32) * (360.0 / n)
    full = lambda v: torch.full((n,), float(v), dtype=torch.float32)  # noqa: E731
    cams = cameras_from_spherical(az, full(elevation_deg), full(radius), full(fov_deg))
    return cams.to(device) if device is not None else cams


def view_direction(azimuth_deg: float | Tensor, elevation_deg: float | Tensor) -> str:
    """DreamFusion's bucket: 'overhead' if elevation > 60, else by |azimuth| (wrapped to
    [-180, 180)): 'front' <= 45, 'back' >= 135, 'side' in between."""
    az = float(wrap_azimuth(float(azimuth_deg)))
    if float(elevation_deg) > 60.0:
        return "overhead"
    if abs(az) <= 45.0:
        return "front"
    if abs(az) >= 135.0:
        return "back"
    return "side"


def view_directions(cameras: Cameras) -> list[str]:
    return [view_direction(a, e) for a, e in zip(cameras.azimuth_deg.tolist(), cameras.elevation_deg.tolist())]


def focal_length_px(fov_y_deg: Tensor, height: int) -> Tensor:
    return 0.5 * height / torch.tan(torch.deg2rad(fov_y_deg) * 0.5)


def generate_rays(cameras: Cameras, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Pinhole rays through pixel centres: (origins [B,H,W,3], unit directions [B,H,W,3])."""
    dev, dt = cameras.c2w.device, cameras.c2w.dtype
    j, i = torch.meshgrid(torch.arange(height, device=dev, dtype=dt), torch.arange(width, device=dev, dtype=dt),
                          indexing="ij")
    f = focal_length_px(cameras.fov_y_deg.to(dt), height)[:, None, None]  # [B,1,1]
    d_cam = torch.stack([(i + 0.5 - 0.5 * width)[None] / f, -(j + 0.5 - 0.5 * height)[None] / f,
                         -torch.ones_like(f).expand(-1, height, width)], dim=-1)  # [B,H,W,3]
    rot = cameras.c2w[:, None, None, :3, :3]
    d = (rot @ d_cam[..., None])[..., 0]
    d = d / d.norm(dim=-1, keepdim=True)
    o = cameras.c2w[:, None, None, :3, 3].expand_as(d)
    return o, d


def ray_aabb(rays_o: Tensor, rays_d: Tensor, bound: float, near: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test against [-bound, bound]^3: (t_near [N], t_far [N], hit [N]), t_near >= `near`."""
    d = torch.where(rays_d.abs() < 1e-9, torch.full_like(rays_d, 1e-9), rays_d)
    t1 = (-bound - rays_o) / d
    t2 = (bound - rays_o) / d
    t_near = torch.minimum(t1, t2).amax(dim=-1).clamp_min(near)
    t_far = torch.maximum(t1, t2).amin(dim=-1)
    hit = t_far > t_near
    t_far = torch.where(hit, t_far, t_near)
    return t_near, t_far, hit
