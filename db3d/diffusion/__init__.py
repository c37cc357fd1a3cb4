"""Text-to-image diffusion backends behind one interface (`DiffusionBackend`, see base.py).

Each backend module registers its loader (db3d.diffusion.registry: name, config key, latent or
pixel space); `build_backend(cfg)` finds `cfg["backend"]` there and loads `cfg[<its config key>]`:
- `sd`: Stable Diffusion 2.1-base (latent), from `models.sd` (hub id, local folder, or `random`);
- `if`: DeepFloyd IF stage I (pixel 64x64), from `models.if` (same choices);
- `tiny`: the same architectures at ~1 M parameters with random weights (offline CPU tests; its
  images are noise), in `models.tiny_space` = latent | pixel;
- `toy`: a small pixel model (32x32) TRAINED on synthetic renders (db3d.synth.prior), loaded from
  the checkpoint folder `models.toy`, checked against `models.toy_sha256` and the `toy_prior` recipe.
Device from `cfg["device"]` (`auto`: CUDA when present) unless `device` is given; compute precision
from `cfg["precision"]` on CUDA, always fp32 on CPU.
"""
from __future__ import annotations

import torch

from .base import VIEW_DIRECTIONS, DiffusionBackend
from .loading import resolve_device, resolve_dtype
from .registry import backends, find

__all__ = ["DiffusionBackend", "VIEW_DIRECTIONS", "backends", "build_backend", "find"]


def build_backend(cfg: dict, device: str | torch.device | None = None) -> DiffusionBackend:
    """The diffusion model the config names, on `device` (default `cfg["device"]`)."""
    spec = find(cfg["backend"])
    dev = resolve_device(device if device is not None else cfg["device"])
    return spec.build(cfg, dev, resolve_dtype(cfg["precision"], dev))
