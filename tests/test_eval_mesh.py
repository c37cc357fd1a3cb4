"""Mesh export of an evaluated run: mesh.glb / mesh.obj round trip through trimesh."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_eval_janus import DARK, HAIR, RED, SKIN, FaceBall  # noqa: E402

from db3d.eval.mesh import MESH_FILES, NO_COLOURS, run_mesh, write_run_mesh  # noqa: E402


def _load(path: Path):
    import trimesh

    return trimesh.load(path, force="mesh")


def _rgb(colour) -> np.ndarray:
    return (np.asarray(colour) * 255 + 0.5).astype(np.uint8)


def test_mesh_round_trip_with_albedo_colours(tmp_path):
    field = FaceBall("hair")
    info = write_run_mesh(field, latent=False, out_dir=tmp_path, resolution=40)
    assert info["threshold_source"] == "default" and info["threshold"] == 10.0
    assert info["vertices"] > 500 and info["faces"] > 1000 and info["colours"].startswith("albedo")
    for name in MESH_FILES:
        mesh = _load(tmp_path / name)
        assert len(mesh.vertices) == info["vertices"] and len(mesh.faces) == info["faces"], name
        # the surface of the radius-0.6 ball, in world coordinates (y-up)
        r = np.linalg.norm(mesh.vertices, axis=1)
        assert np.allclose(r, 0.6, atol=0.06), name
        assert mesh.visual.kind == "vertex", name
        rgba = np.asarray(mesh.visual.vertex_colors)
        assert rgba.shape == (len(mesh.vertices), 4) and (rgba[:, 3] == 255).all(), name
        front, back = mesh.vertices[:, 2] > 0.05, mesh.vertices[:, 2] < -0.05
        # every colour is one of the field's; the face is on the front only, hair on the back only
        palette = np.stack([_rgb(c) for c in (SKIN, HAIR, DARK, RED)]).astype(int)
        dist = np.abs(rgba[:, None, :3].astype(int) - palette[None]).max(-1).min(-1)
        assert (dist <= 2).all(), name
        is_col = lambda c: (np.abs(rgba[:, :3].astype(int) - _rgb(c)).max(-1) <= 2)  # noqa: E731
        assert is_col(DARK)[front].sum() > 5 and is_col(RED)[front].sum() > 5, name
        assert is_col(HAIR)[back].all() and not is_col(HAIR)[front].any(), name


def test_latent_mesh_is_geometry_only_and_untrained_field_falls_back(tmp_path):
    import db3d.nerf as dn

    torch.manual_seed(0)
    field = dn.RadianceField(1.0, 16, 16, out_channels=4)  # untrained: blob density peaks just under 10
    info = write_run_mesh(field, latent=True, out_dir=tmp_path, resolution=32)
    assert info["colours"] == NO_COLOURS and info["threshold"] < 10.0
    assert info["threshold_source"].startswith("fallback")
    assert json.dumps(info)  # JSON-ready for eval_info.json
    for name in MESH_FILES:
        mesh = _load(tmp_path / name)
        assert len(mesh.vertices) == info["vertices"] > 0 and len(mesh.faces) == info["faces"] > 0, name
        assert mesh.visual.kind != "vertex", name  # no colours written
    # the same field as colour would get colours; a latent one through run_mesh gets none
    mesh, _ = run_mesh(field, latent=True, resolution=24)
    assert mesh.visual.kind is None


def test_constant_density_is_an_error():
    class Empty(FaceBall):
        def density(self, x):
            return torch.zeros(len(x))

    with pytest.raises(ValueError, match="constant"):
        run_mesh(Empty("plain"), latent=False, resolution=16)
