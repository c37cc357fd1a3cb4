"""DreamFusion shading: albedo, Lambertian under a point light near the camera, textureless.

DreamFusion renders, at random, (1) the unshaded albedo, (2) albedo * (ambient + diffuse), and
(3) white albedo shaded ("textureless"), so the diffusion prior must be satisfied by the
geometry alone in (3) — this is what stops it from painting a flat card. Colour:
`c = albedo * (ambient + (1 - ambient) * max(0, n . l))`, l the unit vector to the light.
Latent-NeRF features (C=4) are not colours and are never shaded.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import Cameras

SHADINGS = ("albedo", "lambertian", "textureless")


def sample_light_positions(cameras: Cameras, generator: torch.Generator | None = None,
                           perturb: float = 1.0, distance_scale: tuple[float, float] = (0.8, 1.5)) -> Tensor:
    """A random point light per camera, near it (threestudio's recipe): direction = the camera's
    direction from the origin + N(0, perturb^2) noise, distance = camera radius * U(distance_scale).
    Returns positions [B,3] on the cameras' device."""
    B = len(cameras)
    dev = generator.device if generator is not None else torch.device("cpu")
    noise = torch.randn(B, 3, generator=generator, device=dev).to(cameras.c2w)
    u = torch.rand(B, generator=generator, device=dev).to(cameras.c2w)
    cam = cameras.position
    direction = F.normalize(F.normalize(cam, dim=-1) + perturb * noise, dim=-1)
    dist = cameras.radius.to(cam) * (distance_scale[0] + (distance_scale[1] - distance_scale[0]) * u)
    return direction * dist[:, None]


def light_directional(light_dir: Any, batch: int, like: Tensor) -> Tensor:
    """`light_dir` ([3] or [B,3], from the scene towards the light) -> unit vectors [B,3]."""
    ld = torch.as_tensor(light_dir, dtype=like.dtype, device=like.device)
    if ld.dim() == 1:
        ld = ld[None].expand(batch, 3)
    return F.normalize(ld, dim=-1)


def shade(feat: Tensor, normals: Tensor | None, to_light: Tensor | None, shading: str, ambient: float) -> Tensor:
    """Per-sample colour. feat [...,C]; normals and to_light [...,3] unit vectors."""
    if shading not in SHADINGS:
        raise ValueError(f"shading must be one of {SHADINGS}, got {shading!r}")
    if shading == "albedo" or feat.shape[-1] != 3:
        return feat
    diffuse = (normals * to_light).sum(dim=-1, keepdim=True).clamp_min(0.0)
    lum = ambient + (1.0 - ambient) * diffuse
    albedo = torch.ones_like(feat) if shading == "textureless" else feat
    return albedo * lum
