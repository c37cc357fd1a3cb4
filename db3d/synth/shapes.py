"""Signed-distance primitives and the coloured scenes the synthetic classes are built from.

Every distance here is exact or a lower bound of the true distance (1-Lipschitz): unions are
`min`, cut-outs and convex solids are `max` of such functions. That is what lets
`db3d.synth.world` sphere-trace the scenes with full steps and no missed surfaces.

A `Scene` is a list of solid `Part`s, each with one colour, and of `Decal`s: paint regions that
change the albedo of the parts they name, never the geometry. Decals are prisms that run deep
into the solid (e.g. "x, y inside a disc and z > 0"), so the colour just below the surface is the
marking too: a volume renderer whose samples land a little inside the surface sees the same
colour as one that stops on it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

Vec3 = tuple[float, float, float]
DistFn = Callable[[Tensor], Tensor]
MaskFn = Callable[[Tensor], Tensor]


# ---- primitives: p [N,3] in the primitive's own frame -> distance [N] ------------------------------

def _vec(v: Sequence[float], like: Tensor) -> Tensor:
    return torch.as_tensor(v, dtype=like.dtype, device=like.device)


def sphere(p: Tensor, r: float) -> Tensor:
    return p.norm(dim=-1) - r


def box(p: Tensor, half: Vec3, rounding: float = 0.0) -> Tensor:
    q = p.abs() - _vec(half, p) + rounding
    return q.clamp_min(0).norm(dim=-1) + q.amax(dim=-1).clamp_max(0) - rounding


def cylinder_y(p: Tensor, r: float, half_height: float) -> Tensor:
    """Capped cylinder around the y axis."""
    d = torch.stack([torch.hypot(p[:, 0], p[:, 2]) - r, p[:, 1].abs() - half_height], dim=-1)
    return d.clamp_min(0).norm(dim=-1) + d.amax(dim=-1).clamp_max(0)


def torus_z(p: Tensor, major: float, minor: float) -> Tensor:
    """Ring in the xy plane (its axis is z): a mug handle seen from the front."""
    q = torch.stack([torch.hypot(p[:, 0], p[:, 1]) - major, p[:, 2]], dim=-1)
    return q.norm(dim=-1) - minor


def capsule(p: Tensor, a: Vec3, b: Vec3, r: float) -> Tensor:
    a_, b_ = _vec(a, p), _vec(b, p)
    pa, ba = p - a_, b_ - a_
    h = ((pa @ ba) / (ba @ ba)).clamp(0, 1)
    return (pa - h[:, None] * ba).norm(dim=-1) - r


def roof_prism(p: Tensor, half_length: float, half_depth: float, height: float) -> Tensor:
    """Triangular prism, ridge along x: base [-half_depth, half_depth] in z at y=0, apex at y=height.
    Max of the face planes: exact inside, a lower bound outside (enough for sphere tracing)."""
    n = (half_depth ** 2 + height ** 2) ** 0.5
    slope = (half_depth * p[:, 1] + height * p[:, 2].abs() - height * half_depth) / n
    return torch.stack([p[:, 0].abs() - half_length, -p[:, 1], slope], dim=-1).amax(dim=-1)


# ---- decal regions: p [N,3] world -> bool [N] -----------------------------------------------------

def disc_z(cx: float, cy: float, r: float, front: bool) -> MaskFn:
    """Disc in x, y, through the front half (z > 0) or the back half (z < 0)."""
    def inside(p: Tensor) -> Tensor:
        side = p[:, 2] > 0 if front else p[:, 2] < 0
        return ((p[:, 0] - cx) ** 2 + (p[:, 1] - cy) ** 2 < r * r) & side
    return inside


def rect_z(x0: float, x1: float, y0: float, y1: float, front: bool) -> MaskFn:
    def inside(p: Tensor) -> Tensor:
        side = p[:, 2] > 0 if front else p[:, 2] < 0
        return (p[:, 0] > x0) & (p[:, 0] < x1) & (p[:, 1] > y0) & (p[:, 1] < y1) & side
    return inside


# ---- scenes ---------------------------------------------------------------------------------------

@dataclass
class Part:
    name: str
    colour: Vec3
    dist: DistFn  # world p [N,3] -> [N]


@dataclass
class Decal:
    name: str
    colour: Vec3
    inside: MaskFn
    on: tuple[str, ...]  # parts it paints (a logo disc must not paint the handle behind it)


@dataclass
class Scene:
    parts: list[Part]
    decals: list[Decal] = field(default_factory=list)
    mirror_front: bool = False  # evaluate at (x, y, |z|): the front half replaces the back (a Janus object)

    def evaluate(self, x: Tensor, with_albedo: bool = True) -> tuple[Tensor, Tensor | None]:
        """(sdf [N], albedo [N,3] or None): the albedo is the colour of the nearest part, then
        painted by the decals in order (later ones on top)."""
        if self.mirror_front:
            x = torch.cat([x[:, :2], x[:, 2:].abs()], dim=-1)
        d = torch.stack([part.dist(x) for part in self.parts])  # [P,N]
        if not with_albedo:
            return d.amin(dim=0), None
        sdf, idx = d.min(dim=0)
        colours = torch.tensor([part.colour for part in self.parts], dtype=x.dtype, device=x.device)
        albedo = colours[idx]
        names = [part.name for part in self.parts]
        for decal in self.decals:
            on = torch.tensor([names.index(n) for n in decal.on], device=x.device)
            m = decal.inside(x) & torch.isin(idx, on)
            albedo = torch.where(m[:, None], _vec(decal.colour, albedo), albedo)
        return sdf, albedo


def translate(fn: Callable[..., Tensor], centre: Vec3, *args, **kwargs) -> DistFn:
    """A primitive placed at `centre`."""
    def dist(p: Tensor) -> Tensor:
        return fn(p - _vec(centre, p), *args, **kwargs)
    return dist


# ---- the three classes ------------------------------------------------------------------------
# Conventions of db3d.nerf.cameras: y up, the FRONT faces +z (azimuth 0), objects at the origin
# inside [-0.75, 0.75]^3. Each class marks its front and its back differently (face / logo / door
# at the front; backpack / stripe / chimney and round window at the back) so a render tells
# which side it shows: that is what the ground-truth Janus metric measures. Shape parameters
# come from the instance seed alone, marking colours also from the body colour (they must
# contrast with it), so "a red mug" and "a blue mug" of one seed have the same shape.

COLOURS: dict[str, Vec3] = {
    "red": (0.85, 0.15, 0.13), "green": (0.2, 0.62, 0.24), "blue": (0.18, 0.33, 0.85),
    "yellow": (0.95, 0.83, 0.15), "purple": (0.55, 0.24, 0.7), "orange": (0.96, 0.52, 0.1),
}
FIXED: dict[str, Vec3] = {
    "white": (0.96, 0.96, 0.96), "black": (0.08, 0.08, 0.08), "coffee": (0.3, 0.17, 0.08),
    "door": (0.38, 0.23, 0.1), "glass": (0.62, 0.84, 0.97), "brick": (0.62, 0.27, 0.2),
    "slate": (0.3, 0.32, 0.38), "brown": (0.42, 0.27, 0.16), "dark red": (0.45, 0.12, 0.1),
}


def colour_rgb(name: str) -> Vec3:
    return COLOURS[name] if name in COLOURS else FIXED[name]


def _others(rng, body: str, *exclude: str) -> str:
    return rng.choice([c for c in COLOURS if c != body and c not in exclude])


def _outside_radius(mask: MaskFn, r: float) -> MaskFn:
    """Only beyond radius r from the y axis: keeps a mug's outer paint off its inner wall, which
    shows through the opening from the opposite side."""
    return lambda p: mask(p) & (torch.hypot(p[:, 0], p[:, 2]) > r)


def _u(rng, lo: float, hi: float) -> float:
    return round(rng.uniform(lo, hi), 4)


def mug_params(rng, mark_rng, colour: str) -> dict:
    R, H, minor = _u(rng, 0.36, 0.46), _u(rng, 0.36, 0.52), _u(rng, 0.045, 0.06)
    hy = _u(rng, -0.1, 0.1) * H
    major = _u(rng, 0.14, min(0.22, 0.71 - R - minor, H - 0.03 - minor - abs(hy)))
    lr = _u(rng, 0.13, 0.18)
    ly = round(_u(rng, -0.6, 0.4) * (H - 0.05 - lr), 4)
    dot = _others(mark_rng, colour)
    return dict(radius=R, half_height=H, wall=0.06, bottom=0.08, fill_depth=_u(rng, 0.08, 0.18),
                handle_major=major, handle_minor=minor, handle_y=round(hy, 4),
                logo_r=lr, logo_x=_u(rng, -0.06, 0.06), logo_y=ly, logo_dot=_u(rng, 0.4, 0.55),
                stripe_x=_u(rng, -0.12, 0.12), stripe_w=_u(rng, 0.05, 0.08),
                logo_colour=mark_rng.choice(["white", "black"]), dot_colour=dot,
                stripe_colour=_others(mark_rng, colour, dot))


def mug_scene(q: dict, body: Vec3) -> Scene:
    R, H, wall = q["radius"], q["half_height"], q["wall"]
    bot, top = -H + q["bottom"], H + 0.1
    inner = translate(cylinder_y, (0.0, 0.5 * (bot + top), 0.0), R - wall, 0.5 * (top - bot))
    outer = translate(cylinder_y, (0.0, 0.0, 0.0), R, H)
    fill = H - q["fill_depth"]
    ring = translate(torus_z, (R, q["handle_y"], 0.0), q["handle_major"], q["handle_minor"])
    parts = [
        Part("body", body, lambda p: torch.maximum(outer(p), -inner(p))),
        Part("coffee", FIXED["coffee"], translate(cylinder_y, (0.0, 0.5 * (fill + bot), 0.0),
                                                 R - wall + 0.01, 0.5 * (fill - bot))),
        # the ring's inner half would poke into the cavity: keep x beyond the wall's middle
        Part("handle", body, lambda p: torch.maximum(ring(p), (R - 0.5 * wall) - p[:, 0])),
    ]
    lx, ly, lr = q["logo_x"], q["logo_y"], q["logo_r"]
    sx, sw = q["stripe_x"], q["stripe_w"]
    rim = R - 0.5 * wall
    decals = [
        Decal("logo", colour_rgb(q["logo_colour"]), _outside_radius(disc_z(lx, ly, lr, True), rim), ("body",)),
        Decal("logo dot", colour_rgb(q["dot_colour"]), _outside_radius(disc_z(lx, ly, lr * q["logo_dot"], True), rim),
              ("body",)),
        Decal("stripe", colour_rgb(q["stripe_colour"]), _outside_radius(rect_z(sx - sw, sx + sw, -2, 2, False), rim),
              ("body",)),
    ]
    return Scene(parts, decals)


def snowman_params(rng, mark_rng, colour: str) -> dict:
    r1 = _u(rng, 0.24, 0.29)
    r2 = round(r1 * _u(rng, 0.7, 0.8), 4)
    r3 = round(r2 * _u(rng, 0.72, 0.82), 4)
    return dict(r1=r1, r2=r2, r3=r3, overlap=_u(rng, 0.18, 0.26), hat_height=_u(rng, 0.1, 0.16),
                nose_length=_u(rng, 0.1, 0.16), eye_sep=_u(rng, 0.3, 0.4), eye_y=_u(rng, 0.12, 0.28),
                eye_r=_u(rng, 0.22, 0.28), buttons=rng.choice([2, 3]), button_r=_u(rng, 0.045, 0.06),
                pack_w=_u(rng, 0.6, 0.72), pack_h=_u(rng, 0.7, 0.85), pack_y=_u(rng, -0.15, 0.1),
                nose_colour="red" if colour == "orange" else "orange",
                pack_colour=_others(mark_rng, colour, "orange"))


def snowman_scene(q: dict, body: Vec3) -> Scene:
    r1, r2, r3, ov = q["r1"], q["r2"], q["r3"], q["overlap"]
    y1 = r1
    y2 = y1 + (r1 + r2) * (1 - ov)
    y3 = y2 + (r2 + r3) * (1 - ov)
    brim_y = y3 + 0.78 * r3
    top = brim_y + 0.02 + q["hat_height"]
    dy = -0.5 * top  # centre the whole stack on y = 0
    y1, y2, y3, brim_y = y1 + dy, y2 + dy, y3 + dy, brim_y + dy
    hat_top = top + dy
    hh = 0.5 * (hat_top - brim_y)
    pw, ph = q["pack_w"] * r2, q["pack_h"] * r2
    parts = [
        Part("bottom", body, translate(sphere, (0.0, y1, 0.0), r1)),
        Part("middle", body, translate(sphere, (0.0, y2, 0.0), r2)),
        Part("head", body, translate(sphere, (0.0, y3, 0.0), r3)),
        Part("brim", FIXED["black"], translate(cylinder_y, (0.0, brim_y, 0.0), 1.1 * r3, 0.025)),
        Part("hat", FIXED["black"], translate(cylinder_y, (0.0, brim_y + hh, 0.0), 0.68 * r3, hh)),
        Part("nose", colour_rgb(q["nose_colour"]),
             lambda p: capsule(p, (0.0, y3 - 0.1 * r3, 0.6 * r3), (0.0, y3 - 0.18 * r3, r3 + q["nose_length"]), 0.035)),
        Part("backpack", colour_rgb(q["pack_colour"]),
             translate(box, (0.0, y2 + q["pack_y"] * r2, -0.8 * r2), (pw, ph, 0.1), 0.03)),
    ]
    ex, ey, er = q["eye_sep"] * r3, y3 + q["eye_y"] * r3, q["eye_r"] * r3
    decals = [Decal(f"eye {s}", FIXED["black"], disc_z(s * ex, ey, er, True), ("head",)) for s in (-1, 1)]
    for k in range(int(q["buttons"])):
        button = disc_z(0.0, y2 + r2 * (0.45 - 0.35 * k), q["button_r"], True)
        decals.append(Decal(f"button {k}", FIXED["black"], button, ("middle", "bottom")))
    return Scene(parts, decals)


def house_params(rng, mark_rng, colour: str) -> dict:
    hx = _u(rng, 0.42, 0.55)
    return dict(half_width=hx, half_depth=_u(rng, 0.3, 0.42), wall_height=_u(rng, 0.48, 0.66),
                roof_height=_u(rng, 0.3, 0.42), door_x=_u(rng, -0.35, 0.35), door_hw=_u(rng, 0.08, 0.11),
                door_h=_u(rng, 0.42, 0.5), window_x=_u(rng, 0.55, 0.68), window_hs=_u(rng, 0.075, 0.095),
                chimney_x=_u(rng, -0.6, 0.6), chimney_hw=_u(rng, 0.06, 0.09), round_x=_u(rng, -0.3, 0.3),
                round_y=_u(rng, 0.42, 0.58), round_r=_u(rng, 0.1, 0.14),
                roof_colour=rng.choice(["slate", "brown", "dark red"]), round_colour=_others(mark_rng, colour))


def house_scene(q: dict, body: Vec3) -> Scene:
    hx, hz, hb, hr = q["half_width"], q["half_depth"], q["wall_height"], q["roof_height"]
    base = -0.5 * (hb + hr)
    cw = q["chimney_hw"]
    parts = [
        Part("walls", body, translate(box, (0.0, base + 0.5 * hb, 0.0), (hx, 0.5 * hb, hz))),
        Part("roof", colour_rgb(q["roof_colour"]),
             translate(roof_prism, (0.0, base + hb - 0.01, 0.0), hx + 0.05, hz + 0.07, hr + 0.01)),
        Part("chimney", FIXED["brick"],
             translate(box, (q["chimney_x"] * hx, base + hb + 0.75 * hr, -0.45 * hz), (cw, 0.45 * hr, cw))),
    ]
    dx, dw = q["door_x"] * hx, q["door_hw"]
    wx, ws, wy = q["window_x"] * hx, q["window_hs"], base + 0.76 * hb
    decals = [
        Decal("door", FIXED["door"], rect_z(dx - dw, dx + dw, base - 1.0, base + q["door_h"] * hb, True), ("walls",)),
        *(Decal(f"window {s}", FIXED["glass"], rect_z(s * wx - ws, s * wx + ws, wy - ws, wy + ws, True), ("walls",))
          for s in (-1, 1)),
        Decal("round window", colour_rgb(q["round_colour"]),
              disc_z(q["round_x"] * hx, base + q["round_y"] * hb, q["round_r"], False), ("walls",)),
    ]
    return Scene(parts, decals)


CLASS_BUILDERS = {
    "mug": (mug_params, mug_scene),
    "snowman": (snowman_params, snowman_scene),
    "house": (house_params, house_scene),
}
