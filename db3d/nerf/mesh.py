"""Mesh export: marching cubes on the density grid, vertex colours from the albedo.

For inspection and figures (a NeRF is what is optimised and evaluated). Density is sampled on a
`resolution`^3 lattice over [-bound, bound]^3 and the `threshold` isosurface extracted with
scikit-image; vertices are in world coordinates (y-up, like glTF). Latent fields (C=4) get grey
vertices: their features are not colours.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
import torch

from ..io import atomic_path
from .field import RadianceField

DEFAULT_THRESHOLD = 10.0  # stable-dreamfusion's density_thresh: well above the empty-space density


@torch.no_grad()
def density_grid(field: RadianceField, resolution: int = 64, chunk: int = 1 << 16) -> np.ndarray:
    """Density at the lattice vertices, array [res,res,res] indexed (x, y, z)."""
    dev = next(field.parameters()).device
    lin = torch.linspace(-field.bound, field.bound, resolution, device=dev)
    pts = torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)
    sig = torch.cat([field.density(pts[i:i + chunk]) for i in range(0, pts.shape[0], chunk)])
    return sig.reshape(resolution, resolution, resolution).float().cpu().numpy()


def extract_mesh(field: RadianceField, resolution: int = 64, threshold: float = DEFAULT_THRESHOLD) -> Any:
    """Marching cubes at `threshold` -> trimesh.Trimesh with outward faces and vertex colours."""
    import trimesh
    from skimage import measure

    vol = density_grid(field, resolution)
    if not (vol.min() < threshold < vol.max()):
        raise ValueError(f"density threshold {threshold} outside the field's range "
                         f"[{vol.min():.3g}, {vol.max():.3g}]: nothing to extract")
    spacing = (2 * field.bound / (resolution - 1),) * 3
    verts, faces, _, _ = measure.marching_cubes(vol, level=threshold, spacing=spacing)
    verts = verts - field.bound
    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=False)
    if mesh.is_watertight and mesh.volume < 0:
        mesh.invert()
    dev = next(field.parameters()).device
    with torch.no_grad():
        _, feat = field(torch.as_tensor(mesh.vertices, dtype=torch.float32, device=dev))
    if field.out_channels == 3:
        rgb = (feat.clamp(0, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
    else:
        rgb = np.full((len(mesh.vertices), 3), 160, dtype=np.uint8)
    mesh.visual.vertex_colors = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)
    return mesh


def export_mesh(mesh: Any, path: str | os.PathLike) -> None:
    """Write .glb / .obj / .ply (format from the suffix), atomically."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in ("glb", "obj", "ply"):
        raise ValueError(f"mesh format from {path!r}: expected .glb, .obj or .ply")
    with atomic_path(path) as tmp:
        mesh.export(tmp, file_type=ext)
