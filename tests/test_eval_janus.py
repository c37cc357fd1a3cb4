"""The Janus score: hand-made embeddings, and two-faced vs one-faced objects rendered by db3d.nerf.

The synthetic objects are analytic radiance fields (an opaque ball whose colour is a face pattern
on its front hemisphere, z > 0, and either the same face or plain hair colour on its back), rendered
on the fixed evaluation orbit by the project's own renderer (`render_turntable`). The embedder is a
fixed, controllable one: a soft histogram over the scene's palette (position-invariant, like a
semantic embedder, and blind to everything but colour), so the test knows what it can see.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from db3d.eval.janus import janus_score  # noqa: E402

SKIN, HAIR, DARK, RED, WHITE = (0.9, 0.7, 0.55), (0.35, 0.2, 0.1), (0.05, 0.05, 0.05), (0.75, 0.1, 0.1), (1.0, 1.0, 1.0)
PALETTE = torch.tensor([SKIN, HAIR, DARK, RED, WHITE])


class FaceBall(torch.nn.Module):
    """An opaque ball (radius 0.6) with a face (two eyes, a mouth) facing +z, the azimuth-0 camera.

    back: 'face' (the same face on the back: Janus), 'hair' (a plain hair-coloured back: one face),
    'plain' (no face anywhere). Implements what `db3d.nerf.render` and `extract_mesh` use:
    `bound`, `out_channels`, `parameters()`, `forward(x) -> (sigma, rgb)`, `density(x)`.
    """

    def __init__(self, back: str, radius: float = 0.6):
        super().__init__()
        self.bound, self.out_channels, self.back, self.radius = 1.0, 3, back, radius
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # device for the renderer

    def density(self, x: torch.Tensor) -> torch.Tensor:
        r = x.norm(dim=-1)
        return torch.where(r < self.radius, torch.full_like(r, 200.0), torch.zeros_like(r))

    def forward(self, x: torch.Tensor):
        n = x / x.norm(dim=-1).clamp_min(1e-6)[:, None]
        # the face is symmetric in x, so the back camera (whose right is world -x) sees the same face
        nx, ny = n[:, 0].abs(), n[:, 1]
        col = torch.tensor(SKIN).expand(len(x), 3).clone()
        if self.back != "plain":
            col[((nx - 0.3) ** 2 + (ny - 0.25) ** 2) < 0.15 ** 2] = torch.tensor(DARK)
            col[(nx < 0.35) & (ny > -0.45) & (ny < -0.3)] = torch.tensor(RED)
        if self.back == "hair":
            col[n[:, 2] < 0] = torch.tensor(HAIR)
        return self.density(x), col


def palette_embed(images: torch.Tensor, sigma: float = 0.1) -> torch.Tensor:
    """[B,3,H,W] -> L2-normalised soft histogram over PALETTE [B,5]."""
    px = images.permute(0, 2, 3, 1).reshape(images.shape[0], -1, 1, 3)
    w = torch.softmax(-((px - PALETTE) ** 2).sum(-1) / sigma ** 2, dim=-1)
    return torch.nn.functional.normalize(w.mean(1), dim=-1)


def _render(back: str, num_views: int = 8):
    from db3d.config import DEFAULT_CONFIG_PATH
    from db3d.eval.turntable import render_turntable
    from db3d.nerf import Background

    cfg = yaml.safe_load(Path(DEFAULT_CONFIG_PATH).read_text())
    cfg["seed"] = 0
    cfg["eval"].update(num_views=num_views, resolution=32)
    cfg["nerf"]["num_samples"] = 32
    return render_turntable(cfg, FaceBall(back), Background(fixed_color=list(WHITE)), {"latent": False})


def test_janus_known_answer():
    # 8 views; the front view is e0; back views (135, 180, -135) and sides (90, -90) chosen by hand
    az = [0, 45, 90, 135, 180, -135, -90, -45]
    e0, e1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    c = lambda t: math.cos(math.radians(t)) * e0 + math.sin(math.radians(t)) * e1  # noqa: E731 - cos(c(t), e0) = cos t
    emb = torch.stack([e0, c(10), c(60), c(20), c(0), c(20), c(60), c(10)]) * 3.0  # scale must not matter
    j = janus_score(emb, az)
    back, side = (2 * math.cos(math.radians(20)) + 1) / 3, math.cos(math.radians(60))
    assert j.value == pytest.approx(back - side) and j.back_sim == pytest.approx(back)
    assert j.side_sim == pytest.approx(side) and j.reference_azimuth == 0
    assert sorted(j.back_azimuths) == [-135, 135, 180] and sorted(j.side_azimuths) == [-90, 90]
    # a distinct back (orthogonal to the front) scores lower than a back like the front
    distinct = emb.clone()
    distinct[[3, 4, 5]] = e1
    jd = janus_score(distinct, az).value
    assert jd == pytest.approx(0.0 - side) and jd < j.value
    # wrapped azimuths are the same views
    assert janus_score(emb, [a % 360 for a in az]).value == pytest.approx(j.value)
    # an external reference (e.g. the subject photos' mean) replaces the front render
    assert janus_score(emb, az, reference=torch.stack([e0, e0])).value == pytest.approx(j.value)
    assert janus_score(emb, az, reference=e1).reference_azimuth is None


def test_janus_undefined_without_back_and_side_views():
    j = janus_score(torch.eye(2), [0.0, 180.0])  # no side view
    assert math.isnan(j.value) and "side" in j.reason and j.as_dict()["janus"] is None
    j = janus_score(torch.eye(3), [90.0, 180.0, -90.0])  # no front view
    assert math.isnan(j.value) and "front" in j.reason
    with pytest.raises(ValueError):
        janus_score(torch.eye(3), [0.0, 90.0])


@pytest.mark.parametrize("num_views", [4, 8])
def test_janus_separates_two_faced_from_one_faced(num_views):
    scores, images = {}, {}
    for back in ("face", "hair", "plain"):
        images[back], az = _render(back, num_views)
        scores[back] = janus_score(palette_embed(images[back]), az)
    front = images["face"][0]
    # the renders are what the test claims: same face at azimuth 0, the back shows the face or the hair
    assert torch.allclose(images["face"][0], images["hair"][0], atol=1e-4)
    back_view = num_views // 2
    assert torch.allclose(images["face"][back_view], front, atol=0.05)
    assert not torch.allclose(images["hair"][back_view], front, atol=0.2)
    two, one, plain = scores["face"].value, scores["hair"].value, scores["plain"].value
    assert two > one + 0.05, (two, one)
    assert two > 0 > one
    assert plain == pytest.approx(0.0, abs=1e-3)  # nothing to tell front from back: no signal
    assert scores["face"].back_sim > 0.99 > scores["hair"].back_sim
