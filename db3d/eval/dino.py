"""DINO ViT-S/16 image embeddings (DreamBooth's DINO subject-fidelity metric), or a tiny stand-in.

`load_dino("facebook/dino-vits16", offline_tiny=False)` loads the self-supervised DINO ViT-S/16
(Caron et al. 2021) through transformers' `ViTModel`; the embedding of an image is the final
(layer-normed) CLS token, `last_hidden_state[:, 0]`, L2-normalised, as in DreamBooth (Ruiz et al.
2023, "DINO": mean pairwise cosine between generated and real images). Preprocessing: bicubic
resize of the (square) image to the model's input size (224) and ImageNet normalisation, DINO's
own. `models.dino` is a hub id or a local folder holding `config.json` + weights (what
`hf download facebook/dino-vits16 --local-dir DIR` writes). If the model cannot be had
it raises `ModelNotFoundError` with one line naming it and how to provide it (as `db3d.eval.clip`).

`load_dino(..., offline_tiny=True)` (used with the offline backends, `cfg["backend"]` toy or tiny:
db3d.eval.run) builds a ViT from a
`transformers.ViTConfig` written here (width 64, 2 layers, 2 heads, patch 8, 64 px) with *random
weights*, seeded from the name so it is the same network on every run. Its label is
`tiny-random(dino-vits16)`; its numbers say nothing about the method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelNotFoundError
from .clip import HUB_HINT, ImageEncoder, name_seed, one_line, tiny_label

# ImageNet statistics: DINO's (and facebook/dino-vits16's preprocessor config) normalisation.
DINO_MEAN = (0.485, 0.456, 0.406)
DINO_STD = (0.229, 0.224, 0.225)
DEFAULT_DINO = "facebook/dino-vits16"

# The random-init stand-in: ViT-S/16's architecture at toy width.
TINY_DINO = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 image_size=64, patch_size=8)


@dataclass
class DinoModel(ImageEncoder):
    """A DINO image encoder. `label` is what tables print (`facebook/dino-vits16` or
    `tiny-random(dino-vits16)`); `random_weights` is True for the stand-in."""

    name: str
    label: str
    model: Any
    image_size: int
    random_weights: bool
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    mean: tuple = DINO_MEAN
    std: tuple = DINO_STD

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        """[B,3,H,W] in [0,1] -> L2-normalised CLS embeddings [B,D] (float32, on CPU)."""
        return self._embed(images, batch_size, lambda x: self.model(pixel_values=x).last_hidden_state[:, 0])


def short_name(name: str) -> str:
    """`facebook/dino-vits16` -> `dino-vits16`; `/models/dino-vits16/` -> `dino-vits16`."""
    return Path(str(name).rstrip("/\\")).name or str(name)


def build_tiny_dino(name: str = DEFAULT_DINO) -> DinoModel:
    """The random-weight stand-in for `name`; no file or network access."""
    from transformers import ViTConfig, ViTModel

    short = short_name(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(name_seed(short, "dino"))
        model = ViTModel(ViTConfig(**TINY_DINO), add_pooling_layer=False)
    model.eval()
    return DinoModel(name=name, label=tiny_label(short), model=model, image_size=TINY_DINO["image_size"],
                     random_weights=True)


def _fail(name: str, why: str) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"DINO model {name} (transformers ViTModel, hub id e.g. {DEFAULT_DINO}) is not available "
        f"({one_line(why)}); provide it by {HUB_HINT}, or set models.dino to a local folder "
        f"(hf download {DEFAULT_DINO} --local-dir DIR), or use backend: toy or tiny for random stand-ins")


def _looks_like_path(entry: str) -> bool:
    """A local folder (absolute, relative with ./ ../ ~, or any existing folder), not a hub id."""
    return entry.startswith(("/", "./", "../", "~", ".\\")) or Path(entry).expanduser().is_dir()


def load_real_dino(entry: str = DEFAULT_DINO) -> DinoModel:
    entry = str(entry).strip()
    local = _looks_like_path(entry)
    if local and not Path(entry).expanduser().is_dir():
        raise _fail(entry, f"local folder {Path(entry).expanduser()} does not exist")
    source = str(Path(entry).expanduser()) if local else entry
    try:
        from transformers import ViTModel

        model = ViTModel.from_pretrained(source, add_pooling_layer=False)
    except Exception as e:  # hub/network/cache/format errors come in many types
        first = str(e).splitlines()[0] if str(e) else ""
        raise _fail(entry, f"{type(e).__name__}: {first}") from None
    model.eval()
    size = model.config.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    return DinoModel(name=entry, label=short_name(entry) if local else entry, model=model, image_size=size,
                     random_weights=False)


def load_dino(name: str = DEFAULT_DINO, offline_tiny: bool = True,
              device: str | torch.device | None = None) -> DinoModel:
    """A DINO for evaluation: the tiny random stand-in (`offline_tiny=True`) or the real one."""
    dino = build_tiny_dino(name) if offline_tiny else load_real_dino(name)
    if device is not None:
        dino.to(device)
    return dino
