"""Foreground masks for the subject photos, offline on CPU (numpy, scipy, scikit-image only).

Why this method: the masks are auxiliary (loss weighting, crops, coverage statistics), so a
model-free method that runs anywhere beats a better one that needs downloaded weights. DreamBooth photos are
centred shots of one subject on natural, often cluttered, backgrounds; a plain "colour of the
border" model fails on them (grass, bricks and sky all touch the border). We use boundary
connectivity saliency (Zhu, Liang, Wei, Sun: "Saliency Optimization from Robust Background
Detection", CVPR 2014), which asks how much of a region's *colour-connected* area touches the
image border, so background made of several colours and a subject that touches one edge both work:

1. SLIC superpixels (~250) on the photo downscaled to `WORK_SIZE`, mean CIELAB colour each.
2. Graph of adjacent superpixels (all border superpixels also linked to each other), edge weight
   = Lab distance; geodesic distance = shortest path. Soft area and soft border length of each
   superpixel's colour-connected region give the boundary connectivity and a background prior.
3. Background-weighted colour contrast gives a foreground prior; a small least-squares problem
   (background prior, foreground prior, smoothness between similar neighbours) gives saliency.
4. Times a Gaussian centre prior (the photos are framed on their subject; this damps background
   regions that touch the subject and reach the top of the frame: trees, bricks, sky).
5. Otsu threshold of the saliency map, morphological opening, connected components (the largest,
   plus any at least `KEEP_FRACTION` of it), hole filling, closing.

When a photo carries an alpha channel the build passes it as `hint` and the mask is the alpha
(the photographer already cut the subject out). Quality on the 30 subjects: see docs/data.md.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import shortest_path
from skimage.color import rgb2lab
from skimage.filters import threshold_otsu
from skimage.segmentation import slic
from skimage.transform import resize

WORK_SIZE = 256          # pixels (square) the mask is computed at; upsampled for larger outputs
N_SEGMENTS = 250         # SLIC superpixels
SIGMA_CLR = 10.0         # Lab distance scale of the geodesic area (paper: 10)
SIGMA_BNDCON = 1.0       # boundary connectivity scale of the background prior (paper: 1)
SIGMA_SPA = 0.25         # spatial scale of the contrast, in image widths (paper: 0.25)
SMOOTH_MU = 0.1          # constant added to the smoothness weights (paper: 0.1)
SIGMA_CENTRE = 0.35      # centre prior, in image widths
KEEP_FRACTION = 0.2      # other components kept if at least this fraction of the largest
OPEN_RADIUS = 2          # morphology radius in work pixels

METHOD_NOTES = (
    f"boundary-connectivity saliency (Zhu et al. CVPR 2014) on {N_SEGMENTS} SLIC superpixels at "
    f"{WORK_SIZE}px x centre prior (sigma {SIGMA_CENTRE}), Otsu threshold, opening r={OPEN_RADIUS}, "
    f"components >= {KEEP_FRACTION} of the largest, hole filling; the alpha channel instead when the "
    "photo has one"
)


def foreground_mask(image: np.ndarray, hint: np.ndarray | None = None) -> np.ndarray:
    """Boolean [H,W] foreground mask of an RGB image ([H,W,3] uint8 or float in [0,1]).

    `hint`: optional [H,W] alpha in [0,1]; when given and not fully opaque, it is the mask.
    """
    h, w = image.shape[:2]
    if hint is not None and float(hint.min()) < 0.5:
        return hint >= 0.5
    small = resize(_as_float(image), (WORK_SIZE, WORK_SIZE), order=1, anti_aliasing=True)
    saliency = saliency_map(small) * centre_prior(WORK_SIZE)
    mask = cleanup(saliency >= _otsu(saliency))
    return resize_mask(mask, (h, w))


def saliency_map(image: np.ndarray) -> np.ndarray:
    """Per-pixel saliency in [0,1] of a float RGB image (boundary connectivity + optimisation)."""
    labels = slic(image, n_segments=N_SEGMENTS, compactness=10, start_label=0, channel_axis=-1)
    lab = rgb2lab(image)
    n = labels.max() + 1
    colour = _region_means(lab.reshape(-1, 3), labels.ravel(), n)
    centre = _region_centres(labels, n)
    pairs = _adjacent_pairs(labels)
    border = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    d_app = np.linalg.norm(colour[:, None] - colour[None], axis=-1)
    w_bg = _background_prior(d_app, pairs, border, n)
    w_fg = _foreground_prior(d_app, centre, w_bg)
    s = _optimise(w_bg, w_fg, d_app, pairs, n)
    return s[labels]


def centre_prior(size: int) -> np.ndarray:
    """Gaussian weight around the image centre: the photos are framed on their subject."""
    yy, xx = np.mgrid[:size, :size] / (size - 1) - 0.5
    return np.exp(-(xx ** 2 + yy ** 2) / (2 * SIGMA_CENTRE ** 2))


def _as_float(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image)
    return img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)


def _region_means(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    counts = np.bincount(labels, minlength=n).astype(np.float64)
    sums = np.stack([np.bincount(labels, weights=values[:, c], minlength=n) for c in range(values.shape[1])], 1)
    return sums / np.maximum(counts, 1)[:, None]


def _region_centres(labels: np.ndarray, n: int) -> np.ndarray:
    ys, xs = np.mgrid[: labels.shape[0], : labels.shape[1]]
    coords = np.stack([ys.ravel() / labels.shape[0], xs.ravel() / labels.shape[1]], 1)
    return _region_means(coords, labels.ravel(), n)


def _adjacent_pairs(labels: np.ndarray) -> np.ndarray:
    """Unique (i, j), i < j, of superpixels sharing a horizontal or vertical pixel edge."""
    a = np.concatenate([labels[:, :-1].ravel(), labels[:-1].ravel()])
    b = np.concatenate([labels[:, 1:].ravel(), labels[1:].ravel()])
    keep = a != b
    pairs = np.stack([np.minimum(a[keep], b[keep]), np.maximum(a[keep], b[keep])], 1)
    return np.unique(pairs, axis=0)


def _background_prior(d_app: np.ndarray, pairs: np.ndarray, border: np.ndarray, n: int) -> np.ndarray:
    """1 - exp(-BndCon^2 / 2 sigma^2): near 1 for regions whose colour-connected area hugs the border."""
    bi, bj = np.meshgrid(border, border)
    bpairs = np.stack([bi.ravel(), bj.ravel()], 1)
    bpairs = bpairs[bpairs[:, 0] < bpairs[:, 1]]
    edges = np.concatenate([pairs, bpairs])
    # tiny floor so a zero colour distance stays an edge in the sparse graph
    weights = np.maximum(d_app[edges[:, 0], edges[:, 1]], 1e-6)
    graph = coo_matrix((weights, (edges[:, 0], edges[:, 1])), shape=(n, n)).tocsr()
    geo = shortest_path(graph, directed=False)
    sim = np.exp(-(geo ** 2) / (2 * SIGMA_CLR ** 2))
    area = sim.sum(1)
    length = sim[:, border].sum(1)
    bndcon = length / np.sqrt(area)
    return 1.0 - np.exp(-(bndcon ** 2) / (2 * SIGMA_BNDCON ** 2))


def _foreground_prior(d_app: np.ndarray, centre: np.ndarray, w_bg: np.ndarray) -> np.ndarray:
    """Background-weighted contrast: colour distance to nearby regions that look like background."""
    d_spa = np.linalg.norm(centre[:, None] - centre[None], axis=-1)
    w_spa = np.exp(-(d_spa ** 2) / (2 * SIGMA_SPA ** 2))
    ctr = (d_app * w_spa * w_bg[None]).sum(1)
    return ctr / max(ctr.max(), 1e-12)


def _optimise(w_bg: np.ndarray, w_fg: np.ndarray, d_app: np.ndarray, pairs: np.ndarray, n: int) -> np.ndarray:
    """argmin_s sum w_bg s^2 + sum w_fg (1-s)^2 + sum_adjacent w_ij (s_i - s_j)^2, clipped to [0,1]."""
    w = np.exp(-(d_app[pairs[:, 0], pairs[:, 1]] ** 2) / (2 * SIGMA_CLR ** 2)) + SMOOTH_MU
    lap = np.zeros((n, n))
    np.add.at(lap, (pairs[:, 0], pairs[:, 1]), -w)
    np.add.at(lap, (pairs[:, 1], pairs[:, 0]), -w)
    lap[np.diag_indices(n)] = -lap.sum(1)
    s = np.linalg.solve(np.diag(w_bg + w_fg) + lap, w_fg)
    s = np.clip(s, 0.0, 1.0)
    return (s - s.min()) / max(s.max() - s.min(), 1e-12)


def _otsu(values: np.ndarray) -> float:
    return float(threshold_otsu(values)) if np.ptp(values) > 0 else float(values.max()) + 1.0


def cleanup(mask: np.ndarray) -> np.ndarray:
    """Open, keep the dominant connected component(s), fill holes, close."""
    disk = _disk(OPEN_RADIUS)
    mask = ndimage.binary_opening(mask, structure=disk)
    labels, count = ndimage.label(mask)
    if count == 0:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    keep = np.flatnonzero(sizes >= KEEP_FRACTION * sizes.max()) + 1
    mask = np.isin(labels, keep)
    mask = ndimage.binary_closing(np.pad(mask, OPEN_RADIUS + 1), structure=disk)[
        OPEN_RADIUS + 1: -(OPEN_RADIUS + 1), OPEN_RADIUS + 1: -(OPEN_RADIUS + 1)]
    return ndimage.binary_fill_holes(mask)


def _disk(radius: int) -> np.ndarray:
    y, x = np.mgrid[-radius: radius + 1, -radius: radius + 1]
    return x * x + y * y <= radius * radius


def resize_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize a boolean mask (area/bilinear average of the 0/1 values, then >= 0.5)."""
    if mask.shape == tuple(shape):
        return mask.astype(bool)
    soft = resize(mask.astype(np.float64), shape, order=1, anti_aliasing=shape[0] < mask.shape[0])
    return soft >= 0.5
