"""Image strips for the report: one row of equally tall cells per picture set (PIL, deterministic).

Every picture the report shows is re-encoded here as a PNG strip: the frames of an evaluation
turntable (`eval/<variant>/turntable.gif`, the fixed cameras the metrics use), the subject's input
photos, or an existing PNG (stage turntables, pseudo views) rescaled to the common cell height.
PIL writes no timestamps into PNGs, so the same inputs give the same bytes.
"""
from __future__ import annotations

from pathlib import Path

CELL = 96          # pixel height of one cell in a strip
GAP = 3            # white gap between cells
MAX_PHOTOS = 6


def _rgb(im):
    from PIL import Image

    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, im).convert("RGB")
    return im.convert("RGB")


def _cell(im, height: int = CELL):
    from PIL import Image

    im = _rgb(im)
    w = max(1, round(im.width * height / im.height))
    # small renders are blown up without smoothing (their pixels are the data); photos are downsampled
    resample = Image.NEAREST if im.height < height else Image.LANCZOS
    return im.resize((w, height), resample)


def hstack(images, height: int = CELL, gap: int = GAP):
    """Images side by side at a common height, separated by white gaps."""
    from PIL import Image

    cells = [_cell(im, height) for im in images]
    width = sum(c.width for c in cells) + gap * max(len(cells) - 1, 0)
    out = Image.new("RGB", (max(width, 1), height), (255, 255, 255))
    x = 0
    for c in cells:
        out.paste(c, (x, 0))
        x += c.width + gap
    return out


def gif_frames(path: Path) -> list:
    """All frames of an animated GIF as RGB images."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return [_rgb(f.copy()) for f in ImageSequence.Iterator(im)]


def subject_photos(subject_dir: Path) -> list[Path]:
    """Up to MAX_PHOTOS input photos of a built subject (the largest built resolution <= 512)."""
    subject_dir = Path(subject_dir)
    best = None
    for d in sorted(subject_dir.glob("images_*")):
        try:
            res = int(d.name.split("_", 1)[1])
        except ValueError:
            continue
        if res <= 512 and (best is None or res > best[0]):
            best = (res, d)
    if best is None:
        return []
    return sorted(p for p in best[1].iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[:MAX_PHOTOS]


def strip_from(source: Path | list[Path], out: Path, height: int = CELL) -> tuple[Path, float]:
    """Write a strip PNG from a GIF (its frames), a list of image files, or one image file;
    returns the path and the strip's aspect ratio (width / height)."""
    from PIL import Image

    if isinstance(source, (list, tuple)):
        images = []
        for p in source:
            with Image.open(p) as im:
                images.append(_rgb(im))
    elif Path(source).suffix.lower() == ".gif":
        images = gif_frames(Path(source))
    else:
        with Image.open(source) as im:
            images = [_rgb(im)]
    if len(images) == 1:
        height = min(max(images[0].height, height), 2 * height)  # a grid (pseudo views) keeps its pixels
    out.parent.mkdir(parents=True, exist_ok=True)
    strip = hstack(images, height)
    strip.save(out, format="PNG", optimize=False)
    return out, strip.width / strip.height
