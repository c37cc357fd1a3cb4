"""Fixed-camera turntable renders of a NeRF: the images every metric and figure is computed from.

The cameras are the same for every variant and run (config `eval`: num_views evenly spaced
azimuths starting at 0 deg, one elevation, one radius; field of view the middle of the training
range `nerf.camera.fov_deg`), rendered with albedo shading (no random lighting), so two NeRFs are
compared on identical views.

A latent NeRF (Latent-NeRF baseline: 4 channels in the diffusion model's latent space) is rendered
at the backend's latent resolution and decoded to RGB with `db3d.diffusion.build_backend(cfg).decode`.
"""
from __future__ import annotations

import inspect
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..io import atomic_path, to_uint8
from ..variants import EVAL_FILES

GIF_FRAME_MS = 125


def eval_fov_deg(cfg: dict) -> float:
    lo, hi = cfg["nerf"]["camera"]["fov_deg"]
    return 0.5 * (float(lo) + float(hi))


def nerf_channels(field: Any, meta: dict | None) -> int | None:
    """Channels the NeRF outputs, from its metadata or the field itself (None if unknown)."""
    meta = meta or {}
    for key in ("out_channels", "channels", "num_channels"):
        if isinstance(meta.get(key), int):
            return int(meta[key])
    if meta.get("latent") is True or str(meta.get("space", "")).lower() == "latent":
        return 4
    ch = getattr(field, "out_channels", None)
    return int(ch) if isinstance(ch, int) else None


def render_turntable(cfg: dict, field: Any, background: Any, meta: dict | None = None,
                     device: str | torch.device = "cpu", backend: Any = None) -> tuple[torch.Tensor, list[float]]:
    """Render the fixed evaluation orbit -> (RGB images [N,3,R,R] in [0,1] on CPU, azimuths in deg).

    `backend` (a `DiffusionBackend`) is only needed for a latent NeRF; it is built from `cfg`
    when not given.
    """
    from ..nerf import orbit_cameras, render

    ev = cfg["eval"]
    res = int(ev["resolution"])
    cams = orbit_cameras(int(ev["num_views"]), float(ev["radius"]), float(ev["elevation_deg"]), eval_fov_deg(cfg))
    if hasattr(cams, "to"):
        cams = cams.to(device)
    channels = nerf_channels(field, meta)
    latent = channels is not None and channels != 3
    if latent and backend is None:
        from ..diffusion import build_backend

        backend = build_backend(cfg, device=device)
    size = int(backend.latent_size) if latent else res

    # Deterministic evaluation renders where the renderer offers it: samples at bin centres
    # (train=False) and no normals (albedo needs none). Both are db3d.nerf extras beyond the contract.
    params = inspect.signature(render).parameters
    extra = {k: False for k in ("train", "normals") if k in params}

    def _render(sz: int):
        gen = torch.Generator(device="cpu").manual_seed(int(cfg["seed"]))
        with torch.no_grad():
            return render(field, background, cams, sz, sz, shading="albedo",
                          ambient=float(cfg["nerf"]["shading"]["ambient"]),
                          num_samples=int(cfg["nerf"]["num_samples"]), generator=gen, **extra)

    out = _render(size)
    image = out.image
    if channels is None and image.shape[1] != 3:  # metadata said nothing: trust the render
        latent = True
        if backend is None:
            from ..diffusion import build_backend

            backend = build_backend(cfg, device=device)
        image = _render(int(backend.latent_size)).image
    if latent:
        with torch.no_grad():
            image = backend.decode(image.to(backend.device, getattr(backend, "dtype", torch.float32)))
    image = image.detach().float().cpu().clamp(0, 1)
    if image.shape[-2:] != (res, res):
        image = F.interpolate(image, size=(res, res), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    az = getattr(cams, "azimuth_deg", None)
    if az is None:
        azimuths = [360.0 * i / image.shape[0] for i in range(image.shape[0])]
    else:
        azimuths = [float(a) for a in torch.as_tensor(az).detach().cpu().reshape(-1).tolist()]
    return image, azimuths


def write_gif(path: str | Path, images: torch.Tensor | np.ndarray, frame_ms: int = GIF_FRAME_MS) -> None:
    """A looping GIF of the views [N,3,H,W] in [0,1], written atomically."""
    import imageio.v3 as iio

    frames = np.stack([to_uint8(im) for im in images])
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, frames, extension=".gif", duration=frame_ms, loop=0)


def contact_sheet(images: torch.Tensor | np.ndarray, azimuths: Sequence[float], columns: int | None = None,
                  tile: int | None = None, title: str | None = None):
    """A grid of the views, each labelled with its azimuth (a PIL image)."""
    from PIL import Image, ImageDraw, ImageFont

    n = len(images)
    columns = columns or min(n, 4)
    rows = math.ceil(n / columns)
    h = int(images[0].shape[-2]) if hasattr(images[0], "shape") else 64
    tile = tile or int(min(max(h, 128), 256))
    label_h, pad = 20, 4
    top = 22 if title else 0
    sheet = Image.new("RGB", (columns * (tile + pad) + pad, top + rows * (tile + label_h + pad) + pad), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=13)
    if title:
        draw.text((pad, 4), title, fill="black", font=font)
    for i, (im, az) in enumerate(zip(images, azimuths)):
        r, c = divmod(i, columns)
        arr = to_uint8(im)
        pil = Image.fromarray(arr).convert("RGB")
        pil = pil.resize((tile, tile), Image.NEAREST if pil.width < tile else Image.LANCZOS)
        x = pad + c * (tile + pad)
        y = top + pad + r * (tile + label_h + pad)
        sheet.paste(pil, (x, y))
        draw.text((x + 2, y + tile + 3), f"az {az % 360:.0f}\u00b0", fill="black", font=font)
    return sheet


def write_contact_sheet(path: str | Path, images, azimuths: Sequence[float], title: str | None = None) -> None:
    sheet = contact_sheet(images, azimuths, title=title)
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


def write_turntable(out_dir: str | Path, images, azimuths: Sequence[float], title: str | None = None) -> dict[str, Path]:
    """Write `turntable.gif` and `contact_sheet.png` into `out_dir`; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"gif": out_dir / EVAL_FILES["turntable"], "contact_sheet": out_dir / EVAL_FILES["contact_sheet"]}
    write_gif(paths["gif"], images)
    write_contact_sheet(paths["contact_sheet"], images, azimuths, title=title)
    return paths
