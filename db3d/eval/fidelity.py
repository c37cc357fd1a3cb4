"""Subject fidelity as in DreamBooth (Ruiz et al. 2023): DINO and CLIP-I.

For one run: every fixed-camera view (the turntable) is compared with every photo of the subject
(`db3d.data.subject.load_subject`, the built crops with their backgrounds, as DreamBooth compares
with the real images); the metric is the mean cosine similarity over all view x photo pairs:

    fidelity = 1/(N M) * sum_i sum_j cos(e(view_i), e(photo_j))

with `e` the DINO ViT-S/16 CLS embedding (`dino_i`) or a CLIP image embedding (`clip_i`, one row
per CLIP model). Identical image sets do not give exactly 1 unless every image is the same
(it is a mean over all pairs); a set compared with itself scores higher than with other images.

The photos are read at the smallest built resolution >= `PHOTO_MIN_RESOLUTION` (224, the real
embedders' input size; the dataset builds 64 and 512), else the largest built one; the embedders
resize them to their own input size.
"""
from __future__ import annotations

from pathlib import Path

import torch

PHOTO_MIN_RESOLUTION = 224


def pairwise_cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N,D] x [M,D] -> [N,M] cosine similarities (float64; inputs need not be normalised)."""
    a = torch.nn.functional.normalize(torch.as_tensor(a, dtype=torch.float64), dim=-1)
    b = torch.nn.functional.normalize(torch.as_tensor(b, dtype=torch.float64), dim=-1)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"pairwise_cosine: expected [N,D] and [M,D], got {tuple(a.shape)} and {tuple(b.shape)}")
    return a @ b.T


def fidelity(view_emb: torch.Tensor, photo_emb: torch.Tensor) -> float:
    """Mean cosine similarity over all (view, photo) pairs."""
    sims = pairwise_cosine(view_emb, photo_emb)
    if sims.numel() == 0:
        raise ValueError("fidelity: no views or no photos")
    return float(sims.mean())


def photo_resolution(subject_dir: str | Path, min_resolution: int = PHOTO_MIN_RESOLUTION) -> int:
    """The built resolution the photos are read at (see the module docstring)."""
    from ..data.subject import load_subject
    from ..io import read_json

    meta_path = Path(subject_dir) / "meta.json"
    if not meta_path.is_file():
        load_subject(Path(subject_dir), min_resolution)  # raises the DataError saying how to build it
    built = sorted(int(r) for r in read_json(meta_path).get("resolutions", []))
    if not built:
        return min_resolution  # load_subject then says the folder has no resolution built
    return next((r for r in built if r >= min_resolution), built[-1])


def load_subject_photos(subject_dir: str | Path, min_resolution: int = PHOTO_MIN_RESOLUTION):
    """The subject's photos (`db3d.data.subject.Subject`, images [M,3,R,R] in [0,1])."""
    from ..data.subject import load_subject

    return load_subject(Path(subject_dir), photo_resolution(subject_dir, min_resolution))
