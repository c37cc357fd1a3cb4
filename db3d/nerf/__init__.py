"""The NeRF of DreamBooth3D: field, cameras, renderer, regularisers, checkpoints, mesh export.

Contract (docs/ARCHITECTURE.md, `db3d.nerf`): `RadianceField`, `Background`, `Cameras`,
`sample_cameras`, `orbit_cameras`, `view_direction`, `render -> RenderOutput`, `save_nerf`,
`load_nerf`; plus helpers (`build_field`, `generate_rays`, `make_estimator`, `update_estimator`,
`extract_mesh`, `export_mesh`). Coordinate convention: see `db3d.nerf.cameras`.
"""
from .cameras import (Cameras, cameras_from_spherical, generate_rays, orbit_cameras, sample_cameras,
                      view_direction, view_directions)
from .checkpoint import build_field, load_nerf, save_nerf
from .field import Background, RadianceField
from .losses import distortion_loss, opacity_loss, orientation_loss
from .mesh import export_mesh, extract_mesh
from .render import (RenderOutput, make_estimator, nerfacc_cuda_available, render,
                     update_estimator)

__all__ = [
    "Background", "Cameras", "RadianceField", "RenderOutput", "build_field", "cameras_from_spherical",
    "distortion_loss", "export_mesh", "extract_mesh", "generate_rays", "load_nerf", "make_estimator",
    "nerfacc_cuda_available", "opacity_loss", "orbit_cameras", "orientation_loss", "render",
    "sample_cameras", "save_nerf", "update_estimator", "view_direction", "view_directions",
]
