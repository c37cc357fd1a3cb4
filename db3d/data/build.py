"""Build one subject: its photos as square crops at each resolution, foreground masks, meta.json.

Output (`out_dir`, normally `data/subjects/<subject>/`):
    images_<res>/NN.png   RGB 8-bit, NN = 00, 01, ... in the sorted order of the source files
    masks_<res>/NN.png    L 8-bit, 0 (background) or 255 (foreground)
    meta.json             subject, class, licence, source files + sha256, fix-ups, mask coverage

Why each step:
- EXIF orientation is applied first: phones store portrait shots as rotated landscape pixels, and
  a subject lying on its side would be learnt as such.
- Every photo becomes 8-bit RGB, whatever it came as (fix-ups are recorded per photo in meta.json):
  * alpha (RGBA, LA, PA, palette with transparency): composited on white, the background the
    diffusion model sees for cut-out products, and the alpha is used as the mask instead of
    the estimated one (the photographer already cut the subject out);
  * 16-bit grayscale (I;16*, I): scaled by 1/257 (PIL's own convert clips everything above
    255 to white);
  * grayscale, bilevel, palette, CMYK and other modes: PIL's conversion to RGB;
  * MPO (multi-picture JPEG from phones): the first (main) picture.
- Centre crop to a square, then Lanczos resize: the models are trained on square images and the
  subject is framed in the middle of the DreamBooth photos.
- Size policy: a photo whose shorter side is below the smallest resolution is an error (nothing
  usable at any resolution is left); below a larger resolution it is upscaled with a warning and
  flagged in meta.json (`upscaled_to`). All 158 dataset photos are >= 615 px, so none is upscaled
  at the default resolutions (64, 512).
- Bad input (corrupt or truncated file, too small, too few photos, missing folder, subject not in
  the subject table, no licence) raises a one-line `DataError` naming the file and the fix.
- The build is atomic (`db3d.io.atomic_path` on the folder): everything is written to a temporary
  folder beside `out_dir` and renamed over it at the end, so a failed rebuild leaves the previous
  build as it was.
- `source` may be a git URL (https://, ssh://, git@, file://, or ending in .git): it is cloned once
  with `git clone --depth 1` into `cache/sources/` and its `dataset/` folder used if present.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DataError
from ..io import atomic_path, write_json
from . import masks
from .prompts import subject_row
from .source import DEFAULT_CACHE, is_git_url, resolve_source  # noqa: F401 - part of this module's API

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
BUILDER_VERSION = 1


@dataclass
class Photo:
    """One source photo after decoding and fix-ups (before cropping)."""

    path: Path
    rgb: np.ndarray                 # [H,W,3] uint8
    alpha: np.ndarray | None        # [H,W] float in [0,1] where the photo had transparency
    fixups: list[str] = field(default_factory=list)
    format: str = ""
    mode: str = ""


# ---- the source folder --------------------------------------------------------------------------

def list_photos(folder: Path) -> list[Path]:
    """Image files of a subject folder, sorted by name (hidden files and other files ignored)."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)


# ---- one photo ----------------------------------------------------------------------------------

def read_photo(path: Path) -> Photo:
    """Decode `path` fully, apply EXIF orientation and convert to 8-bit RGB (+ alpha if any)."""
    try:
        with Image.open(path) as im:
            im.load()  # decode now: a truncated file fails here, not later
            fmt = im.format or ""
            src_mode = im.mode
            fixups: list[str] = []
            orientation = im.getexif().get(0x0112, 1)
            if orientation not in (None, 1):
                im = ImageOps.exif_transpose(im)
                fixups.append(f"exif orientation {orientation} applied")
            if fmt == "MPO":
                fixups.append("MPO: first picture used")
            rgb, alpha = _to_rgb(im, fixups)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"{path}: cannot decode image ({' '.join(str(e).split())}); the file is corrupt "
                        "or truncated: re-download it or remove it from the subject folder") from None
    return Photo(path=path, rgb=rgb, alpha=alpha, fixups=fixups, format=fmt, mode=src_mode)


def _to_rgb(im: Image.Image, fixups: list[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """8-bit RGB pixels and, where the image has transparency, its alpha in [0,1]."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        gray = np.asarray(im).astype(np.float64)
        if mode.startswith("I;16") or gray.max() > 255:
            gray = gray / 257.0
            fixups.append(f"16-bit {mode} scaled by 1/257 to 8-bit")
        else:
            fixups.append(f"{mode} with 8-bit values used as is")
        g = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1), None
    if mode == "F":
        fixups.append("float image: values in [0,1] scaled to 8-bit")
        g = np.clip(np.rint(np.asarray(im) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=-1), None
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA")).astype(np.float64)
        alpha = rgba[..., 3] / 255.0
        rgb = rgba[..., :3] * alpha[..., None] + 255.0 * (1.0 - alpha[..., None])
        fixups.append(f"{mode}: alpha composited on white")  # mask_source says if it became the mask
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8), alpha
    if mode != "RGB":
        fixups.append(f"{mode} converted to RGB")
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8).copy(), None


def centre_square(arr: np.ndarray) -> np.ndarray:
    """The largest centred square of an [H,W,...] array."""
    h, w = arr.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return arr[top: top + s, left: left + s]


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    if rgb.shape[0] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.Resampling.LANCZOS))


def photo_mask(rgb_square: np.ndarray, alpha_square: np.ndarray | None) -> tuple[np.ndarray, bool]:
    """Foreground mask of a square crop and whether it is the photo's alpha (else estimated).

    The estimate runs on a Lanczos-downscaled copy (PIL is much faster than filtering the full
    photo) and comes back at that size; callers resize it to each output resolution.
    """
    if alpha_square is not None and float(alpha_square.min()) < 0.5:
        return alpha_square >= 0.5, True
    small = resize_rgb(rgb_square, masks.WORK_SIZE) if rgb_square.shape[0] > masks.WORK_SIZE else rgb_square
    return masks.foreground_mask(small), False


def check_size(photo: Photo, resolutions: tuple[int, ...]) -> list[int]:
    """Apply the size policy; return the resolutions this photo is upscaled to."""
    short = min(photo.rgb.shape[:2])
    smallest = min(resolutions)
    if short < smallest:
        h, w = photo.rgb.shape[:2]
        raise DataError(f"{photo.path}: {w}x{h} px is smaller than the smallest resolution {smallest}; "
                        f"use a photo with a shorter side >= {smallest} px or remove it")
    up = [r for r in resolutions if r > short]
    if up:
        log.warning("%s: shorter side %d px is upscaled to %s", photo.path, short, up)
    return up


# ---- one subject --------------------------------------------------------------------------------

def _subject_info(subjects_table: Path, subject: str) -> dict[str, str]:
    info = subject_row(subjects_table, subject)
    if not str(info.get("licence", "")).strip():
        raise DataError(f"{subjects_table}: subject {subject!r} has no licence line; add its credit/licence "
                        "(from references_and_licenses.txt) before using its photos")
    return info


def _subject_photos(root: Path, subject: str, min_images: int) -> list[Path]:
    folder = root / subject
    if not folder.is_dir():
        known = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        hint = f" (found: {', '.join(known[:8])}{', ...' if len(known) > 8 else ''})" if known else \
            f" ({root} does not exist: set dataset.source / --source to the dataset folder)"
        raise DataError(f"subject folder {folder} not found{hint}")
    photos = list_photos(folder)
    if len(photos) < min_images:
        raise DataError(f"{folder}: {len(photos)} image(s), at least {min_images} needed; add photos of "
                        f"the subject or lower dataset.min_images / --min-images")
    return photos


def _validate_resolutions(resolutions: tuple[int, ...]) -> tuple[int, ...]:
    res = tuple(sorted({int(r) for r in resolutions}))
    if not res or res[0] < 8:
        raise DataError(f"resolutions {list(resolutions)}: give one or more sizes >= 8 px (e.g. --resolutions 64 512)")
    return res


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_png(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr).save(path, format="PNG")


def build_subject(source: str | os.PathLike, subject: str, out_dir: Path, resolutions: tuple[int, ...] = (64, 512),
                  min_images: int = 3, subjects_table: Path = Path("config/subjects.tsv")) -> dict:
    """Build `out_dir` for `subject` from the dataset at `source`; return the meta.json content."""
    resolutions = _validate_resolutions(tuple(resolutions))
    info = _subject_info(Path(subjects_table), subject)
    root = resolve_source(source)
    paths = _subject_photos(root, subject, min_images)
    photos = [read_photo(p) for p in paths]
    upscaled = [check_size(p, resolutions) for p in photos]

    out_dir = Path(out_dir)
    records, coverage = [], {str(r): [] for r in resolutions}
    with atomic_path(out_dir, suffix="") as tmp:
        for r in resolutions:
            (tmp / f"images_{r}").mkdir(parents=True)
            (tmp / f"masks_{r}").mkdir(parents=True)
        for i, (photo, up) in enumerate(zip(photos, upscaled)):
            rgb = centre_square(photo.rgb)
            alpha = centre_square(photo.alpha) if photo.alpha is not None else None
            mask, from_alpha = photo_mask(rgb, alpha)
            for r in resolutions:
                m = masks.resize_mask(mask, (r, r))
                _write_png(tmp / f"images_{r}" / f"{i:02d}.png", resize_rgb(rgb, r))
                _write_png(tmp / f"masks_{r}" / f"{i:02d}.png", m.astype(np.uint8) * 255)
                coverage[str(r)].append(round(float(m.mean()), 4))
            records.append(_photo_record(i, photo, up, from_alpha))
        meta = _meta(info, subject, source, resolutions, records, coverage)
        write_json(tmp / "meta.json", meta)
    log.info("built %s: %d photos at %s px, mean mask coverage %.3f -> %s", subject, len(photos),
             ",".join(map(str, resolutions)), meta["mean_mask_coverage"][str(max(resolutions))], out_dir)
    return meta


def _photo_record(index: int, photo: Photo, upscaled_to: list[int], alpha_mask: bool) -> dict:
    h, w = photo.rgb.shape[:2]
    return {"index": index, "file": photo.path.name, "sha256": sha256(photo.path), "format": photo.format,
            "mode": photo.mode, "size": [w, h], "fixups": photo.fixups, "upscaled_to": upscaled_to,
            "mask_source": "alpha" if alpha_mask else "estimated"}


def _meta(info: dict, subject: str, source, resolutions, records: list[dict], coverage: dict) -> dict:
    return {
        "subject": subject,
        "class_noun": info["class_noun"],
        "kind": info["kind"],
        "token": info["token"],
        "licence": info["licence"],
        "source": str(source),
        "num_images": len(records),
        "resolutions": list(resolutions),
        "files": records,
        "mask_coverage": coverage,
        "mean_mask_coverage": {r: round(float(np.mean(v)), 4) for r, v in coverage.items()},
        "method": {
            "orientation": "EXIF orientation applied (PIL ImageOps.exif_transpose)",
            "colour": "8-bit RGB; alpha composited on white; 16-bit grayscale scaled by 1/257",
            "crop": "centre crop to the largest square",
            "resize": "PIL Lanczos",
            "mask": masks.METHOD_NOTES,
            "files": "images_<res>/NN.png (RGB), masks_<res>/NN.png (L, 0/255); NN in sorted source order",
        },
        "builder_version": BUILDER_VERSION,
    }
