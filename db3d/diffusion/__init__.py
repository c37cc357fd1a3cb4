"""Text-to-image diffusion backends behind one interface (`DiffusionBackend`, see base.py).

`build_backend(cfg)` picks by `cfg["backend"]`:
- `sd`: Stable Diffusion 2.1-base (latent), from `cfg["models"]["sd"]` (hub id, local folder, or `random`);
- `if`: DeepFloyd IF stage I (pixel 64x64), from `cfg["models"]["if"]` (same choices);
- `tiny`: the same architectures at ~1 M parameters with random weights (offline CPU tests; its
  images are noise), in `cfg["models"]["tiny_space"]` = latent | pixel;
- `toy`: a small pixel model (32x32) TRAINED on synthetic renders (db3d.synth.prior), loaded from
  the checkpoint folder `cfg["models"]["toy"]` (default `models/toy`), checked against
  `cfg["models"]["toy_sha256"]` and `cfg["toy_prior"]` where the config has them.
Device from `cfg["device"]` (`auto`: CUDA when present) unless `device` is given; compute precision
from `cfg["precision"]` on CUDA, always fp32 on CPU.
"""
from __future__ import annotations

import torch

from ..errors import ConfigError
from .base import VIEW_DIRECTIONS, DiffusionBackend
from .loading import resolve_device, resolve_dtype

__all__ = ["DiffusionBackend", "VIEW_DIRECTIONS", "build_backend"]


def build_backend(cfg: dict, device: str | torch.device | None = None) -> DiffusionBackend:
    """The diffusion model the config names, on `device` (default `cfg["device"]`)."""
    name = cfg.get("backend", "tiny")
    dev = resolve_device(device if device is not None else cfg.get("device", "auto"))
    dtype = resolve_dtype(cfg.get("precision", "fp32"), dev)
    models = cfg.get("models", {})
    if name == "tiny":
        from .tiny import build_tiny

        return build_tiny(models.get("tiny_space", "latent"), dev, dtype)
    if name == "toy":
        from .toy import load_toy

        return load_toy(str(models.get("toy", "models/toy")), dev, dtype, expected_sha256=models.get("toy_sha256"),
                        prior_cfg=cfg.get("toy_prior"))
    if name == "sd":
        from .sd import load_sd

        return load_sd(str(models.get("sd", "stabilityai/stable-diffusion-2-1-base")), dev, dtype)
    if name == "if":
        from .deepfloyd import load_if

        return load_if(str(models.get("if", "DeepFloyd/IF-I-XL-v1.0")), dev, dtype)
    raise ConfigError(f"backend {name!r}: expected tiny, toy, sd or if")
