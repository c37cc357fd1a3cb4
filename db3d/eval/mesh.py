"""The mesh of one evaluated run: `mesh.glb` and `mesh.obj` beside its metrics.

Marching cubes on the NeRF's density (`db3d.nerf.extract_mesh`: a `MESH_RESOLUTION`^3 lattice over
[-bound, bound]^3, world coordinates, y-up like glTF) at the density threshold
`db3d.nerf.mesh.DEFAULT_THRESHOLD` (10, stable-dreamfusion's); vertex colours are the albedo at
the vertices (RGBA, alpha 255). When that threshold lies outside the field's density range (an
untrained or collapsed field: the blob prior peaks near 10) the midpoint of the range is used
instead (found on a lattice of half the resolution), so there is always a surface to look at;
the returned info says which.

Latent NeRFs (Latent-NeRF baseline, 4 latent channels) have no colours: their features live in
the diffusion model's latent space and decode only as whole images, not per point. Their mesh is
geometry only (no vertex colours) and `mesh_info["colours"]` says so.
"""
from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MESH_RESOLUTION = 64
MESH_FILES = ("mesh.glb", "mesh.obj")
NO_COLOURS = "none: latent NeRF (its features are diffusion latents, not colours); geometry only"


def run_mesh(field: Any, latent: bool, resolution: int | None = None,
             threshold: float | None = None) -> tuple[Any, dict]:
    """(trimesh.Trimesh, info) of `field`; colours from the albedo, none for a latent field.

    `resolution` defaults to `MESH_RESOLUTION` (read at call time), `threshold` to extract_mesh's.
    """
    import trimesh

    from ..nerf import extract_mesh

    resolution = int(resolution or MESH_RESOLUTION)

    if threshold is None:  # extract_mesh's own default (db3d.nerf.mesh.DEFAULT_THRESHOLD)
        threshold = inspect.signature(extract_mesh).parameters["threshold"].default
    source = "default"
    try:
        mesh = extract_mesh(field, resolution=resolution, threshold=threshold)
    except ValueError as e:  # threshold outside the density range
        from ..nerf.mesh import density_grid

        grid = density_grid(field, max(16, resolution // 2))  # the range only: a coarser lattice will do
        lo, hi = float(grid.min()), float(grid.max())
        if not hi > lo:
            raise ValueError(f"mesh: the field's density is constant ({lo:.3g}); nothing to extract") from e
        threshold = 0.5 * (lo + hi)
        source = f"fallback: midpoint of the density range [{lo:.3g}, {hi:.3g}] (default outside it)"
        log.warning("mesh: %s; using threshold %.3g", e, threshold)
        mesh = extract_mesh(field, resolution=resolution, threshold=threshold)
    if latent:
        mesh = trimesh.Trimesh(vertices=mesh.vertices, faces=mesh.faces, process=False)
    info = {"resolution": int(resolution), "threshold": float(threshold), "threshold_source": source,
            "vertices": int(len(mesh.vertices)), "faces": int(len(mesh.faces)),
            "colours": NO_COLOURS if latent else "albedo at the vertices (RGBA uint8)",
            "watertight": bool(mesh.is_watertight), "files": list(MESH_FILES)}
    return mesh, info


def write_run_mesh(field: Any, latent: bool, out_dir: str | Path, resolution: int | None = None,
                   threshold: float | None = None) -> dict:
    """Write `mesh.glb` and `mesh.obj` into `out_dir` (atomically); return the mesh info."""
    from ..nerf import export_mesh

    mesh, info = run_mesh(field, latent, resolution, threshold)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in MESH_FILES:
        export_mesh(mesh, out_dir / name)
    return info
