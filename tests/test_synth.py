"""The synthetic world (db3d.synth.world): objects, renders, cameras, the prior's images, subject folders."""
from __future__ import annotations

import json
import re

import pytest
import torch

from db3d.errors import ConfigError, DataError
from db3d.nerf import cameras_from_spherical, orbit_cameras
from db3d.synth.world import (CLASSES, COLOURS, OBJECT_EXTENT, AnalyticField, SynthObject, build_synthetic_subject,
                              janus_object, load_object, photo_cameras, prior_dataset, render_object, sample_object,
                              surface_points)

CAMERA_CFG = {"radius": [1.5, 2.0], "elevation_deg": [-10, 45], "fov_deg": [40, 70]}


def _cams(azimuths, elevation=15.0, radius=1.8, fov=55.0):
    n = len(azimuths)
    return cameras_from_spherical(torch.tensor(azimuths, dtype=torch.float32), torch.full((n,), elevation),
                                  torch.full((n,), radius), torch.full((n,), fov))


def test_sample_object_is_deterministic_and_serialisable():
    a, b = sample_object("mug", "red", 3), sample_object("mug", "red", 3)
    assert a.params == b.params and a == b
    assert sample_object("mug", "red", 4).params != a.params
    # the shape comes from the seed alone, only the marking colours may follow the body colour
    blue = sample_object("mug", "blue", 3)
    shape_keys = [k for k in a.params if not k.endswith("colour")]
    assert {k: blue.params[k] for k in shape_keys} == {k: a.params[k] for k in shape_keys}
    back = SynthObject.from_dict(json.loads(json.dumps(a.to_dict())))
    assert back == a
    x = torch.rand(500, 3) * 1.6 - 0.8
    assert torch.equal(back.sdf(x), a.sdf(x)) and torch.equal(back.albedo(x), a.albedo(x))
    alb = a.albedo(x)
    assert alb.shape == (500, 3) and alb.min() >= 0 and alb.max() <= 1
    for bad, what in ((("cup", "red", 0), "mug"), (("mug", "pink", 0), "purple")):
        with pytest.raises(ConfigError) as err:
            sample_object(*bad)
        assert "\n" not in str(err.value) and what in str(err.value)


@pytest.mark.parametrize("class_noun", CLASSES)
def test_objects_fit_the_box_and_are_visible_at_32px(class_noun):
    for seed in range(3):
        obj = sample_object(class_noun, "green", seed)
        pts = surface_points(obj, 2000, resolution=56)
        assert pts.abs().max() < OBJECT_EXTENT
        assert pts[:, 1].max() - pts[:, 1].min() > 0.8  # not a speck
        sdf = obj.sdf(pts)
        assert sdf.abs().max() < 0.03  # marching-cubes points lie on the surface
    _, masks = render_object(obj, orbit_cameras(4, 2.0, 15, 55), 32)
    assert (masks.mean(dim=(1, 2, 3)) > 0.06).all()


def _fg_diff(a, b, mask):
    """Mean over foreground pixels of the summed channel difference."""
    fg = (mask > 0.5).float()
    return float(((a - b).abs().sum(0) * fg).sum() / fg.sum())


@pytest.mark.parametrize("class_noun", CLASSES)
def test_front_and_back_differ(class_noun):
    """The identity is view-asymmetric: the back is neither the front nor its mirror image."""
    obj = sample_object(class_noun, "blue", 1)
    img, mask = render_object(obj, _cams([0.0, 180.0]), 32)
    front, back = img[0], img[1]
    fg = torch.maximum(mask[0], mask[1])[0]
    assert _fg_diff(front, back, fg) > 0.1 and _fg_diff(front, back.flip(-1), fg) > 0.1
    # the Janus twin shows the front from behind (mirrored), and has a mirror-symmetric SDF
    twin = janus_object(obj)
    x = torch.rand(300, 3) * 1.4 - 0.7
    assert torch.allclose(twin.sdf(x), twin.sdf(x * torch.tensor([1.0, 1.0, -1.0])))
    t_img, _ = render_object(twin, _cams([180.0]), 32)
    assert _fg_diff(t_img[0].flip(-1), front, fg) < 0.25 * _fg_diff(back, front, fg)


def test_photo_cameras_come_from_the_front_half():
    cams = photo_cameras(6, seed=5, camera_cfg=CAMERA_CFG)
    az, el = cams.azimuth_deg, cams.elevation_deg
    assert len(cams) == 6 and az.abs().max() <= 60 and abs(float(az[0])) <= 8
    assert el.min() >= 0 and el.max() <= 30
    assert cams.radius.min() >= 1.5 and cams.radius.max() <= 2.0
    assert cams.fov_y_deg.min() >= 40 and cams.fov_y_deg.max() <= 70
    assert len(set(round(float(a)) for a in az)) == 6
    assert torch.equal(photo_cameras(6, 5, CAMERA_CFG).c2w, cams.c2w)
    with pytest.raises(ConfigError):
        photo_cameras(3, 0, {"radius": [1, 2]})


def test_masks_match_the_sdf():
    """A pixel is covered iff its centre ray meets the surface (brute-force march of the SDF)."""
    from db3d.nerf import generate_rays

    obj = sample_object("house", "red", 2)
    cams = _cams([30.0, -150.0])
    img, mask = render_object(obj, cams, 24, supersample=1)
    o, d = (t.reshape(-1, 3) for t in generate_rays(cams, 24, 24))
    t = torch.linspace(0.5, 3.5, 600)
    pts = o[:, None] + d[:, None] * t[None, :, None]
    inside = (obj.sdf(pts.reshape(-1, 3)).reshape(len(o), -1) < 0).any(dim=1)
    agree = (inside.float() == mask.reshape(-1)).float().mean()
    assert agree > 0.98 and set(mask.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(img.permute(0, 2, 3, 1).reshape(-1, 3)[mask.reshape(-1) == 0] == 1.0)  # white background


def test_analytic_field_renders_through_nerf_render():
    from db3d.nerf import Background, extract_mesh, render

    obj = sample_object("snowman", "purple", 0)
    field = AnalyticField(obj)
    assert field.out_channels == 3 and next(field.parameters()).requires_grad is False
    x = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.79], [0.9, 0.0, 0.0]])
    sigma = field.density(x)
    assert sigma[0] > 50 and sigma[2] == 0  # inside the body; outside the box nothing
    cams = _cams([0.0, 120.0])
    vol, vol_mask = render_object(obj, cams, 32, method="volume", num_samples=96, supersample=1)
    tr, tr_mask = render_object(obj, cams, 32, supersample=1)
    assert (vol - tr).abs().mean() < 0.03 and (vol_mask - tr_mask).abs().mean() < 0.05
    # normals: the SDF gradient, outward (the bottom sphere's side faces +x at its equator)
    y1 = float(surface_points(obj, 4000, resolution=48)[:, 1].min()) + obj.params["r1"]
    n = field.normals(torch.tensor([[obj.params["r1"], y1, 0.0]]))
    assert n[0, 0] > 0.95
    out = render(field, Background(fixed_color=(1, 1, 1)), cams, 16, 16, shading="lambertian", num_samples=32,
                 train=False, light_dir=[0.0, 0.0, 1.0])
    assert out.image.shape == (2, 3, 16, 16) and out.normal.abs().sum() > 0
    mesh = extract_mesh(field, resolution=40)
    assert len(mesh.faces) > 100 and abs(mesh.vertices).max() < OBJECT_EXTENT + 0.05


def test_prior_dataset_is_deterministic_and_captioned():
    images, captions = prior_dataset(60, 16, seed=1, camera_cfg=CAMERA_CFG)
    assert images.shape == (60, 3, 16, 16) and images.min() >= 0 and images.max() <= 1
    again, captions2 = prior_dataset(60, 16, seed=1, camera_cfg=CAMERA_CFG)
    assert torch.equal(images, again) and captions == captions2
    other, _ = prior_dataset(60, 16, seed=2, camera_cfg=CAMERA_CFG)
    assert not torch.equal(images, other)
    pattern = re.compile(rf"^a( ({'|'.join(COLOURS)}))? ({'|'.join(CLASSES)})(, (front|side|back|overhead) view)?$")
    assert all(pattern.match(c) for c in captions), [c for c in captions if not pattern.match(c)]
    assert all(any(cl in c for c in captions) for cl in CLASSES)
    no_colour = [c for c in captions if not any(col in c for col in COLOURS)]
    no_view = [c for c in captions if "view" not in c]
    assert 3 <= len(no_colour) <= 24 and 1 <= len(no_view) <= 15
    front = sum(", front view" in c for c in captions) / sum("view" in c for c in captions)
    assert front > 0.35  # half the views within 45 deg of the front, plus uniform ones that land there
    # a class's images are that class (captions and images stay paired through the shuffle)
    cls_img, cls_cap = prior_dataset(8, 16, seed=3, camera_cfg=CAMERA_CFG, classes=("house",), colours=("red",))
    assert all("house" in c for c in cls_cap) and (cls_img < 0.99).any()
    with pytest.raises(ConfigError):
        prior_dataset(4, 16, 0, CAMERA_CFG, colours=("pink",))


def test_build_synthetic_subject_loads_as_a_subject(tmp_path):
    from db3d.data.subject import load_subject

    out = tmp_path / "data" / "synthetic" / "mug_red"
    build_synthetic_subject("mug_red", "mug", "red", 7, out, resolutions=(16, 32), num_photos=3,
                            camera_cfg=CAMERA_CFG, token="sks")
    s = load_subject(out, 32)
    assert s.images.shape == (3, 3, 32, 32) and s.masks.shape == (3, 1, 32, 32)
    assert s.name == "mug_red" and s.class_noun == "mug" and s.kind == "object" and s.token == "sks"
    assert s.licence == "synthetic (db3d, generated)" and s.class_prompt == "a mug"
    assert 0.05 < float(s.masks.mean()) < 0.8
    # background is white, the subject is not
    assert float(s.images[s.masks.expand_as(s.images) == 0].mean()) > 0.95
    assert float(s.images[s.masks.expand_as(s.images) == 1].mean()) < 0.8
    assert load_subject(out, 16).images.shape == (3, 3, 16, 16)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["synthetic"] is True and meta["num_images"] == 3 and meta["resolutions"] == [16, 32]
    assert [f["file"] for f in meta["files"]] == ["00.png", "01.png", "02.png"]
    assert load_object(out) == sample_object("mug", "red", 7)
    cams = json.loads((out / "object.json").read_text())["photo_cameras"]
    assert torch.equal(torch.tensor(cams["azimuth_deg"]), photo_cameras(3, 7, CAMERA_CFG).azimuth_deg)
    assert load_object(tmp_path) is None
    # rebuilt atomically: the same bytes, nothing left beside it
    first = (out / "images_32" / "01.png").read_bytes()
    build_synthetic_subject("mug_red", "mug", "red", 7, out, resolutions=(16, 32), num_photos=3,
                            camera_cfg=CAMERA_CFG)
    assert (out / "images_32" / "01.png").read_bytes() == first
    assert sorted(p.name for p in out.parent.iterdir()) == ["mug_red"]
    with pytest.raises(DataError):
        build_synthetic_subject("x", "mug", "red", 0, tmp_path / "x", resolutions=(4,), camera_cfg=CAMERA_CFG)
    with pytest.raises(ConfigError):
        build_synthetic_subject("x", "mug", "pink", 0, tmp_path / "x", camera_cfg=CAMERA_CFG)
    assert not (tmp_path / "x").exists()
