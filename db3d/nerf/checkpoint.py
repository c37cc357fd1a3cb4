"""One-file NeRF checkpoints and building the field from the config.

A checkpoint is a single torch file `{format, field: {config, state}, background: {config, state},
meta}` written atomically (`db3d.io.torch_save`), so a killed job never leaves a half-written
`nerf.pt` that Snakemake would take as done, and loading needs no config: the constructor
arguments travel with the weights.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

from torch import nn

from ..io import torch_load, torch_save
from .field import Background, RadianceField

FORMAT = "db3d.nerf/1"


def build_field(nerf_cfg: Mapping[str, Any], out_channels: int = 3) -> tuple[RadianceField, Background]:
    """Field + learned background from the config's `nerf` section (bound, grid_resolution,
    hidden_dim); `out_channels` 3 for colour, 4 for Latent-NeRF."""
    field = RadianceField(bound=float(nerf_cfg["bound"]), grid_resolution=int(nerf_cfg["grid_resolution"]),
                          hidden_dim=int(nerf_cfg["hidden_dim"]), out_channels=int(out_channels))
    return field, Background(out_channels=int(out_channels))


def _cpu_state(module: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items()}


def save_nerf(path: str | os.PathLike, field: RadianceField, background: Background, meta: Mapping[str, Any] | None = None) -> None:
    torch_save({
        "format": FORMAT,
        "field": {"config": dict(field.config), "state": _cpu_state(field)},
        "background": {"config": dict(background.config), "state": _cpu_state(background)},
        "meta": dict(meta or {}),
    }, path)


def load_nerf(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[RadianceField, Background, dict]:
    ckpt = torch_load(path, map_location=map_location)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a db3d NeRF checkpoint (expected format {FORMAT!r})")
    field = RadianceField(**ckpt["field"]["config"])
    field.load_state_dict(ckpt["field"]["state"])
    background = Background(**ckpt["background"]["config"])
    background.load_state_dict(ckpt["background"]["state"])
    if map_location is not None:
        field.to(map_location)
        background.to(map_location)
    return field, background, ckpt["meta"]
