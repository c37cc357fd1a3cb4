"""db3d.nerf: field, normals, cameras, samplers, regularisers, checkpoints, mesh (CPU, fast).

An analytic sphere field (density a sigmoid of |x|, colour from the direction) gives ground truth
for normals, renders and the mesh radius. The `gpu` test compares the plain-PyTorch sampler with
nerfacc's occupancy-grid sampler on CUDA.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

# the repo root on sys.path when db3d is not installed (no conftest/pythonpath setting yet)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from db3d.nerf import (Background, Cameras, RadianceField, build_field, cameras_from_spherical,
                       extract_mesh, export_mesh, generate_rays, load_nerf, make_estimator,
                       orbit_cameras, render, sample_cameras, save_nerf, update_estimator,
                       view_direction)  # noqa: E402
from db3d.nerf.cameras import ray_aabb  # noqa: E402
from db3d.nerf.losses import distortion_loss, distortion_loss_bruteforce, orientation_loss  # noqa: E402

NERF_CFG = {"bound": 1.0, "grid_resolution": 32, "hidden_dim": 32, "num_samples": 48,
            "camera": {"radius": [1.5, 2.0], "elevation_deg": [-10, 45], "fov_deg": [40, 70]}}


class SphereField(RadianceField):
    """sigma = peak * sigmoid(k (radius - |x|)); colour = 0.5 + 0.5 x/|x| (a coloured ball)."""

    def __init__(self, radius: float = 0.5, sharpness: float = 30.0, peak: float = 40.0, out_channels: int = 3):
        super().__init__(bound=1.0, grid_resolution=4, hidden_dim=4, out_channels=out_channels)
        self.radius, self.k, self.peak = radius, sharpness, peak

    def forward(self, x):
        r = x.norm(dim=-1)
        sigma = self.peak * torch.sigmoid(self.k * (self.radius - r))
        color = 0.5 + 0.5 * x / r.clamp_min(1e-6)[:, None]
        if self.out_channels != 3:
            color = torch.cat([color, r[:, None]], dim=-1)
        return sigma, color


def white_bg(c: int = 3) -> Background:
    return Background(c, fixed_color=[1.0] * c)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(-10 * torch.log10(((a - b) ** 2).mean()))


# --- field -------------------------------------------------------------------------------------

def test_sphere_normals_match_radial_direction():
    field = SphereField()
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(256, 3, generator=g), dim=-1)
    x = dirs * field.radius
    n = field.normals(x)
    assert (torch.nn.functional.cosine_similarity(n, dirs, dim=-1) > 0.99).all()
    fd = SphereField()
    fd.normal_method, fd.fd_eps = "finite_difference", 1e-3
    assert (torch.nn.functional.cosine_similarity(fd.normals(x), dirs, dim=-1) > 0.99).all()


def test_grid_encoding_is_trilinear_interpolation_of_each_level():
    """DenseGridEncoding against torch's own trilinear lookup (grid_sample, align_corners) per level,
    values and gradients with respect to the points (the density gradient the normals use)."""
    import torch.nn.functional as F

    from db3d.nerf.field import DenseGridEncoding

    torch.manual_seed(0)
    enc = DenseGridEncoding(1.0, [4, 8, 16], features=3)
    with torch.no_grad():
        enc.table.normal_()
    x = (torch.rand(500, 3) * 2 - 1).requires_grad_(True)
    got = enc(x).reshape(500, 3, 3)
    grid = x.flip(-1).view(1, 500, 1, 1, 3)  # grid_sample reads (W, H, D) = (z, y, x)
    for level, r in enumerate(enc.resolutions.tolist()):
        rows = enc.table[int(enc.offsets[level]):int(enc.offsets[level]) + r**3]
        volume = rows.view(r, r, r, 3).permute(3, 0, 1, 2)[None]  # [1, F, x, y, z]
        want = F.grid_sample(volume, grid, mode="bilinear", align_corners=True).view(3, 500).T
        torch.testing.assert_close(got[:, level], want, rtol=1e-5, atol=1e-5)
        w = torch.randn(500, 3)
        g_got, = torch.autograd.grad((got[:, level] * w).sum(), x, retain_graph=True)
        g_want, = torch.autograd.grad((want * w).sum(), x, retain_graph=True)
        torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-4)


def test_field_shapes_blob_and_outside():
    field, bg = build_field(NERF_CFG, out_channels=3)
    x = torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.0, 0.0], [1.5, 0.0, 0.0]])
    sigma, feat = field(x)
    assert sigma.shape == (3,) and feat.shape == (3, 3)
    assert sigma[0] > 5.0 and sigma[0] > 10 * sigma[1] and sigma[2] == 0  # blob start, empty outside
    assert ((feat >= 0) & (feat <= 1)).all()
    latent, lbg = build_field(NERF_CFG, out_channels=4)
    assert latent(x)[1].shape == (3, 4) and lbg(torch.eye(3)).shape == (3, 4)


def test_orientation_loss_trains_geometry():
    """create_graph normals: the orientation loss alone has a gradient on the density grid."""
    torch.manual_seed(0)
    field, bg = build_field(NERF_CFG)
    cams = orbit_cameras(1, 1.8, 15, 50)
    out = render(field, bg, cams, 16, 16, num_samples=24, generator=torch.Generator().manual_seed(0), train=True)
    assert out.losses["orientation"].requires_grad
    (out.losses["orientation"] * 1e3).backward()
    assert field.encoding.table.grad.abs().sum() > 0


# --- cameras -------------------------------------------------------------------------------------

@pytest.mark.parametrize("az,el,expected", [
    (0, 0, "front"), (45, 10, "front"), (-45, 0, "front"), (46, 0, "side"), (-90, 0, "side"),
    (134, 0, "side"), (135, 0, "back"), (180, 0, "back"), (-180, 0, "back"), (-135, 0, "back"),
    (270, 0, "side"), (360, 0, "front"), (0, 60, "front"), (0, 61, "overhead"), (180, 89, "overhead"),
])
def test_view_direction_buckets(az, el, expected):
    assert view_direction(az, el) == expected
    assert view_direction(torch.tensor(float(az)), torch.tensor(float(el))) == expected


def test_cameras_look_at_origin_and_convention():
    g = torch.Generator().manual_seed(1)
    cams = Cameras.cat([orbit_cameras(4, 1.8, 15, 50), sample_cameras(6, NERF_CFG["camera"], g),
                        cameras_from_spherical(torch.tensor([30.0]), torch.tensor([90.0]), torch.tensor([2.0]),
                                               torch.tensor([60.0]))])
    R = cams.c2w[:, :3, :3]
    assert torch.allclose(R.transpose(1, 2) @ R, torch.eye(3).expand_as(R), atol=1e-5)
    assert torch.allclose(torch.det(R), torch.ones(len(cams)), atol=1e-5)
    assert torch.allclose(cams.position.norm(dim=-1), cams.radius, atol=1e-5)
    o, d = generate_rays(cams, 33, 33)
    oc, dc = o[:, 16, 16], d[:, 16, 16]  # centre pixel
    assert torch.allclose(dc, -torch.nn.functional.normalize(oc, dim=-1), atol=1e-5)
    # the centre ray passes through (0,0,0): distance of the origin to the ray line
    assert (torch.cross(-oc, dc, dim=-1).norm(dim=-1) < 1e-4).all()
    # y-up, azimuth 0 = +z (front), azimuth 90 = +x; image row 0 is the top
    front = orbit_cameras(4, 2.0, 0, 50)
    assert torch.allclose(front.position[0], torch.tensor([0.0, 0.0, 2.0]), atol=1e-5)
    assert torch.allclose(front.position[1], torch.tensor([2.0, 0.0, 0.0]), atol=1e-5)
    assert front.azimuth_deg.tolist() == [0.0, 90.0, -180.0, -90.0]
    _, d0 = generate_rays(front[0], 8, 8)
    assert d0[0, 0, 4, 1] > 0 > d0[0, -1, 4, 1] and d0[0, 4, -1, 0] > 0 > d0[0, 4, 0, 0]
    sc = sample_cameras(256, NERF_CFG["camera"], torch.Generator().manual_seed(2))
    assert sc.radius.min() >= 1.5 and sc.radius.max() <= 2.0
    assert sc.elevation_deg.min() >= -10 and sc.elevation_deg.max() <= 45
    assert sc.fov_y_deg.min() >= 40 and sc.fov_y_deg.max() <= 70
    assert sc.azimuth_deg.min() >= -180 and sc.azimuth_deg.max() < 180
    assert torch.equal(sample_cameras(3, NERF_CFG["camera"], torch.Generator().manual_seed(5)).c2w,
                       sample_cameras(3, NERF_CFG["camera"], torch.Generator().manual_seed(5)).c2w)


# --- samplers ------------------------------------------------------------------------------------

def bruteforce_render(field, cams, H, W, n=4096):
    """Independent dense quadrature: alpha compositing with cumprod, no nerfacc."""
    o, d = generate_rays(cams, H, W)
    o, d = o.reshape(-1, 3), d.reshape(-1, 3)
    tn, tf, _ = ray_aabb(o, d, field.bound, 0.05)
    t = tn[:, None] + (tf - tn)[:, None] * (torch.arange(n) + 0.5)[None] / n
    dt = ((tf - tn) / n)[:, None]
    with torch.no_grad():
        sigma, col = field((o[:, None] + d[:, None] * t[..., None]).reshape(-1, 3))
    alpha = 1 - torch.exp(-sigma.reshape(-1, n) * dt)
    trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], 1), 1)
    w = alpha * trans
    acc = w.sum(1, keepdim=True)
    rgb = (w[..., None] * col.reshape(-1, n, col.shape[-1])).sum(1) + (1 - acc)
    return rgb.reshape(len(cams), H, W, -1).permute(0, 3, 1, 2), acc.reshape(len(cams), 1, H, W)


def test_torch_sampler_matches_bruteforce_quadrature():
    field = SphereField()
    cams = orbit_cameras(2, 1.8, 20, 50)
    ref_img, ref_acc = bruteforce_render(field, cams, 20, 20)
    errs = []
    for S in (32, 128):
        with torch.no_grad():
            out = render(field, white_bg(), cams, 20, 20, num_samples=S, sampler="torch", train=False)
        errs.append(float((out.image - ref_img).abs().mean()))
        assert out.info["sampler"] == "torch"
    assert errs[1] < 5e-3 and errs[1] < errs[0]
    with torch.no_grad():
        out = render(field, white_bg(), cams, 20, 20, num_samples=128, sampler="torch", train=False)
    assert float((out.opacity - ref_acc).abs().max()) < 0.05
    # stratified: deterministic with a generator, unbiased on average
    outs = [render(field, white_bg(), cams, 20, 20, num_samples=32, sampler="torch", train=True, normals=False,
                   generator=torch.Generator().manual_seed(s)).image.detach() for s in range(8)]
    assert not torch.equal(outs[0], outs[1])
    again = render(field, white_bg(), cams, 20, 20, num_samples=32, sampler="torch", train=True, normals=False,
                   generator=torch.Generator().manual_seed(0)).image.detach()
    assert torch.equal(outs[0], again)
    assert float((torch.stack(outs).mean(0) - ref_img).abs().mean()) < 0.01


def test_render_outputs_and_shading():
    field = SphereField()
    cams = orbit_cameras(2, 1.8, 15, 50)
    kw = dict(num_samples=64, sampler="torch", train=False)
    with torch.no_grad():
        alb = render(field, white_bg(), cams, 17, 17, shading="albedo", **kw)
        lam = render(field, white_bg(), cams, 17, 17, shading="lambertian", light_dir=[0.0, 0.0, 1.0], **kw)
        tex = render(field, white_bg(), cams, 17, 17, shading="textureless", generator=torch.Generator().manual_seed(0), **kw)
    assert alb.image.shape == (2, 3, 17, 17) and alb.opacity.shape == alb.depth.shape == (2, 1, 17, 17)
    assert alb.normal.shape == (2, 3, 17, 17) and set(alb.losses) == {"orientation", "opacity", "distortion"}
    assert all(v.dim() == 0 for v in alb.losses.values())
    c = (slice(None), slice(None), 8, 8)
    assert alb.opacity[c].min() > 0.99 and alb.opacity[:, :, 0, 0].max() < 1e-3
    assert abs(float(alb.depth[0, 0, 8, 8]) - 1.3) < 0.03  # front surface at 1.8 - 0.5
    assert torch.allclose(alb.normal[0, :, 8, 8], torch.tensor([0.0, 0.26, 0.97]), atol=0.05)  # toward camera 0
    assert float(alb.losses["orientation"]) < 1e-2  # analytic normals face the camera (up to grazing rays)
    # Lambertian under a directional light from +z: albedo * (ambient + (1 - ambient) n.l) at the
    # centre of camera 0, whose surface normal there is (0, sin 15, cos 15)
    expect = alb.image[0, :, 8, 8] * (0.1 + 0.9 * math.cos(math.radians(15)))
    assert torch.allclose(lam.image[0, :, 8, 8], expect, atol=0.02)
    assert lam.image[1, :, 8, 8].sum() < 0.5 * alb.image[1, :, 8, 8].sum()  # camera 1 (on +x) sees the terminator
    # textureless = white albedo shaded: grey, between ambient and 1; random light near the camera
    assert torch.allclose(tex.image[:, 0], tex.image[:, 1]) and torch.allclose(tex.image[:, 1], tex.image[:, 2])
    assert tex.image.min() >= 0.1 - 1e-4 and tex.image.max() <= 1 + 1e-4
    with torch.no_grad():
        head = render(field, white_bg(), cams, 17, 17, shading="textureless", light_dir=cams.position, **kw)
    assert head.image[:, :, 8, 8].min() > 0.97  # headlight: the centre faces the light
    # latent features (C=4) are never shaded
    lat = SphereField(out_channels=4)
    with torch.no_grad():
        a = render(lat, white_bg(4), cams, 8, 8, shading="albedo", **kw)
        b = render(lat, white_bg(4), cams, 8, 8, shading="lambertian", **kw)
    assert a.image.shape == (2, 4, 8, 8) and torch.equal(a.image, b.image)
    with pytest.raises(ValueError):
        render(field, white_bg(), cams, 8, 8, shading="lambertian", normals=False, **kw)


def test_reconstruction_fits_posed_views():
    """Reconstruction loss alone fits the field to posed views of the coloured sphere."""
    torch.manual_seed(0)
    H = W = 24
    target = SphereField()
    cams = Cameras.cat([orbit_cameras(4, 1.8, 20, 50), orbit_cameras(4, 1.8, -15, 50, start_azimuth_deg=45)])
    with torch.no_grad():
        gt = render(target, white_bg(), cams, H, W, num_samples=96, sampler="torch", train=False).image
    field = RadianceField(bound=1.0, grid_resolution=24, hidden_dim=32)
    bg = white_bg()
    opt = torch.optim.Adam(field.parameters(), lr=2e-2)
    g = torch.Generator().manual_seed(0)
    for step in range(100):
        idx = torch.randint(len(cams), (2,), generator=g)
        out = render(field, bg, cams[idx], H, W, num_samples=32, sampler="torch", train=True, normals=False, generator=g)
        loss = ((out.image - gt[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = render(field, bg, cams, H, W, num_samples=32, sampler="torch", train=False, normals=False).image
    print(f"reconstruction PSNR {psnr(pred, gt):.2f} dB")
    assert psnr(pred, gt) > 25.0


# --- regularisers --------------------------------------------------------------------------------

def test_distortion_loss_matches_bruteforce():
    g = torch.Generator().manual_seed(0)
    R, S = 5, 17
    edges = torch.sort(torch.rand(R, S + 1, generator=g) * 3, dim=-1).values
    t0, t1 = edges[:, :-1], edges[:, 1:]
    w = torch.rand(R, S, generator=g) / S
    ref = distortion_loss_bruteforce(w, t0, t1)
    assert torch.allclose(distortion_loss(w, t0, t1), ref, rtol=1e-5)
    # packed layout: a different number of samples per ray
    counts = [3, 17, 1, 9, 12]
    ri = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    pick = torch.cat([torch.arange(c) for c in counts])
    packed = distortion_loss(w[ri, pick], t0[ri, pick], t1[ri, pick], ray_indices=ri, n_rays=R)
    per_ray = [distortion_loss_bruteforce(w[i:i + 1, :c], t0[i:i + 1, :c], t1[i:i + 1, :c]) for i, c in enumerate(counts)]
    assert torch.allclose(packed, torch.stack(per_ray).mean(), rtol=1e-5)
    # gradient flows and the loss prefers concentrated weights
    spread = torch.full((1, S), 1.0 / S)
    peaked = torch.zeros(1, S)
    peaked[0, S // 2] = 1.0
    tt = torch.linspace(0, 1, S + 1)[None]
    assert distortion_loss(peaked, tt[:, :-1], tt[:, 1:]) < distortion_loss(spread, tt[:, :-1], tt[:, 1:])


def test_orientation_loss_sign():
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(6, 3, generator=g), dim=-1)
    w = torch.rand(6, 5, generator=g)
    toward = -d[:, None].expand(6, 5, 3)
    assert float(orientation_loss(w, toward, d)) == 0.0
    assert float(orientation_loss(w, -toward, d)) > 0.0
    assert torch.allclose(orientation_loss(w, -toward, d), w.sum(1).mean())
    ri = torch.arange(6).repeat_interleave(5)
    assert torch.allclose(orientation_loss(w.reshape(-1), -toward.reshape(-1, 3), d[ri], ray_indices=ri, n_rays=6),
                          w.sum(1).mean())


# --- checkpoint and mesh -------------------------------------------------------------------------

def test_save_load_roundtrip_renders_identically(tmp_path):
    torch.manual_seed(0)
    field, bg = build_field(NERF_CFG, out_channels=3)
    with torch.no_grad():
        field.encoding.table.normal_(0, 0.3)  # something other than the init
        for p in bg.parameters():
            p.add_(0.1)
    path = tmp_path / "nerf.pt"
    save_nerf(path, field, bg, {"stage": "stage1", "step": 7})
    field2, bg2, meta = load_nerf(path)
    assert meta == {"stage": "stage1", "step": 7} and field2.config == field.config
    cams = orbit_cameras(2, 1.8, 15, 50)
    kw = dict(shading="lambertian", light_dir=[0.3, 1.0, 0.5], num_samples=24, sampler="torch", train=False)
    with torch.no_grad():
        a = render(field, bg, cams, 12, 12, **kw)
        b = render(field2, bg2, cams, 12, 12, **kw)
    assert torch.equal(a.image, b.image) and torch.equal(a.depth, b.depth)
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left nothing behind
    with pytest.raises(ValueError):
        torch.save({"x": 1}, tmp_path / "bad.pt")
        load_nerf(tmp_path / "bad.pt")


def test_mesh_of_sphere_has_right_radius(tmp_path):
    field = SphereField(radius=0.5)
    mesh = extract_mesh(field, resolution=48, threshold=field.peak / 2)
    radii = torch.as_tensor(mesh.vertices).norm(dim=-1)
    assert abs(float(radii.mean()) - 0.5) < 0.025
    assert mesh.is_watertight and mesh.volume > 0
    assert abs(mesh.volume - 4 / 3 * math.pi * 0.5**3) / (4 / 3 * math.pi * 0.5**3) < 0.05
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    for ext in ("glb", "obj"):
        export_mesh(mesh, tmp_path / f"sphere.{ext}")
        assert (tmp_path / f"sphere.{ext}").stat().st_size > 1000


# --- GPU: plain-PyTorch sampler vs nerfacc's occupancy grid -------------------------------------

@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_occgrid_sampler_matches_torch_sampler():
    from db3d.nerf import nerfacc_cuda_available

    assert nerfacc_cuda_available(), "nerfacc CUDA ops failed to load"
    dev = torch.device("cuda")
    cams = orbit_cameras(3, 1.8, 20, 50, device=dev)
    bg = white_bg().to(dev)

    def both(field, est):
        with torch.no_grad():
            ref = render(field, bg, cams, 32, 32, num_samples=256, sampler="torch", train=False)
            occ = render(field, bg, cams, 32, 32, num_samples=256, sampler="auto", estimator=est, train=False)
        assert occ.info["sampler"] == "nerfacc" and ref.info["sampler"] == "torch"
        return occ, ref

    # all-occupied grid: same quadrature (marching vs stratified), same nerfacc compositing
    field = SphereField().to(dev)
    occ, ref = both(field, make_estimator(field.bound, resolution=64, device=dev))
    assert float((occ.image - ref.image).abs().max()) < 2e-3
    assert float((occ.opacity - ref.opacity).abs().max()) < 2e-3 and float((occ.depth - ref.depth)[ref.opacity > 0.5].abs().max()) < 0.01
    for k in ("orientation", "distortion", "opacity"):
        assert abs(float(occ.losses[k]) - float(ref.losses[k])) < 0.01 * abs(float(ref.losses[k])) + 1e-5, k
    with torch.no_grad():  # 'auto' without an estimator: nerfacc marching over an all-occupied grid
        auto = render(field, bg, cams, 32, 32, num_samples=256, train=False)
    assert auto.info["sampler"] == "nerfacc" and torch.allclose(auto.image, occ.image, atol=1e-5)
    # trained occupancy grid: skips cells with density * step < 1e-2, which drops faint haloes, so
    # compare on a sharp-edged sphere; several updates (one random point per cell each, EMA-max)
    # so that cells straddling the surface are marked, as in training
    field = SphereField(sharpness=100.0).to(dev)
    est = make_estimator(field.bound, resolution=64, device=dev)
    for step in range(0, 16 * 10, 16):
        update_estimator(est, field, step=step, num_samples=256)
    occ, ref = both(field, est)
    assert occ.info["samples"] < 0.5 * ref.info["samples"]
    assert float((occ.image - ref.image).abs().mean()) < 5e-3
    assert float((occ.opacity - ref.opacity).abs().mean()) < 5e-3
    # training path: stratified marching, create_graph normals, latent channels, backward
    torch.manual_seed(0)
    for C in (3, 4):
        f, bg = build_field(NERF_CFG, out_channels=C)
        f, bg = f.to(dev), bg.to(dev)
        est = make_estimator(f.bound, device=dev)
        for step in range(2):
            update_estimator(est, f, step=step, num_samples=48)
            out = render(f, bg, sample_cameras(2, NERF_CFG["camera"], device=dev), 32, 32, shading="lambertian",
                         num_samples=48, estimator=est, train=True)
            loss = out.image.mean() + sum(out.losses.values())
            loss.backward()
        assert out.info["sampler"] == "nerfacc" and out.image.shape == (2, C, 32, 32)
        assert f.encoding.table.grad.abs().sum() > 0
