"""A built subject folder as tensors: what DreamBooth training and the evaluation read.

Reads only `data/subjects/<subject>/` (meta.json + images_<res>/ + masks_<res>/), never the raw
dataset, so training sees exactly the crops, masks and metadata the dataset rule produced.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from ..io import read_json


@dataclass
class Subject:
    name: str
    class_noun: str
    kind: str                 # live | object
    token: str
    images: torch.Tensor      # [N,3,R,R] float32 in [0,1]
    masks: torch.Tensor       # [N,1,R,R] float32 in {0,1}
    files: list[Path]         # the built images_<res>/NN.png, in index order
    sources: list[str] = field(default_factory=list)  # source photo names (meta.json), same order
    licence: str = ""

    @property
    def class_prompt(self) -> str:
        return f"a {self.class_noun}"

    @property
    def resolution(self) -> int:
        return int(self.images.shape[-1])


def load_subject(subject_dir: Path, resolution: int) -> Subject:
    """Load the photos and masks of a built subject at `resolution` (one that was built)."""
    subject_dir = Path(subject_dir)
    meta_path = subject_dir / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path} not found; build the subject first (snakemake {meta_path} or "
                        f"python -m db3d dataset --subject {subject_dir.name} --out {subject_dir} --source <dataset>)")
    meta = read_json(meta_path)
    built = [int(r) for r in meta.get("resolutions", [])]
    if resolution not in built or not (subject_dir / f"images_{resolution}").is_dir():
        wanted = " ".join(str(r) for r in sorted(set(built) | {resolution}))
        raise DataError(f"{subject_dir}: resolution {resolution} was not built (built: {built or 'none'}); "
                        f"rebuild with --resolutions {wanted}")
    n = int(meta["num_images"])
    files = [subject_dir / f"images_{resolution}" / f"{i:02d}.png" for i in range(n)]
    mask_files = [subject_dir / f"masks_{resolution}" / f"{i:02d}.png" for i in range(n)]
    images = torch.stack([_read(f, "RGB", resolution) for f in files]).permute(0, 3, 1, 2) / 255.0
    masks = (torch.stack([_read(f, "L", resolution) for f in mask_files]) >= 128).float()[:, None]
    return Subject(name=meta["subject"], class_noun=meta["class_noun"], kind=meta["kind"], token=meta["token"],
                   images=images.float().contiguous(), masks=masks.contiguous(), files=files,
                   sources=[r["file"] for r in meta.get("files", [])], licence=meta.get("licence", ""))


def _read(path: Path, mode: str, resolution: int) -> torch.Tensor:
    if not path.is_file():
        raise DataError(f"{path} is missing; the subject folder is incomplete: rebuild it "
                        "(python -m db3d dataset ... or snakemake --forcerun dataset)")
    with Image.open(path) as im:
        if im.size != (resolution, resolution):
            raise DataError(f"{path} is {im.size[0]}x{im.size[1]}, expected {resolution}x{resolution}; rebuild the subject")
        return torch.from_numpy(np.asarray(im.convert(mode), dtype=np.uint8).copy()).float()
