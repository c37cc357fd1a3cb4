"""The diffusion backends, each registered by its own module (threestudio's `register` / `find`).

A backend module decorates its loader with `@register(name, config_key=..., space=...)`:
- `config_key`: the config key naming the model it loads (`models.sd`, ...); `also_keys`: other keys
  of `models` it reads (toy: `models.toy_sha256`). Every rule passes the keys of all backends
  (db3d.workflow.COMMON_KEYS is built from them), so a new backend's key cannot be left out of the
  jobs' configs; `selected_keys`: keys the rules pass only when this backend is the chosen one
  (toy: the prior's recipe, `toy_prior`: another recipe means another prior downstream);
- `space`: `latent` or `pixel`, or a function of the config (tiny: `models.tiny_space`); a variant
  whose NeRF needs the latent space (db3d.variants) is refused at planning on a pixel backend;
- `options`: a function of the config giving the loader's further keyword arguments.
The loader is called as `load(cfg[config_key], device, dtype, **options(cfg))`.

db3d.diffusion imports every backend module through `backends()` / `find()`, so both see them all.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..errors import ConfigError

SPACES = ("latent", "pixel")


@dataclass(frozen=True)
class BackendSpec:
    name: str
    label: str
    config_key: str
    space: str | Callable[[dict], str]
    load: Callable
    also_keys: tuple[str, ...] = ()
    selected_keys: tuple[str, ...] = ()
    options: Callable[[dict], dict] | None = None

    def space_of(self, cfg: dict) -> str:
        return self.space(cfg) if callable(self.space) else self.space

    def model_of(self, cfg: dict):
        node = cfg
        for part in self.config_key.split("."):
            node = node[part]
        return node

    def build(self, cfg: dict, device, dtype):
        return self.load(self.model_of(cfg), device, dtype, **(self.options(cfg) if self.options else {}))


_REGISTRY: dict[str, BackendSpec] = {}


def register(name: str, *, label: str, config_key: str, space: str | Callable[[dict], str],
             also_keys: tuple[str, ...] = (), selected_keys: tuple[str, ...] = (),
             options: Callable[[dict], dict] | None = None):
    """Decorator of a backend's loader `load(model, device, dtype, **options) -> DiffusionBackend`."""
    if not callable(space) and space not in SPACES:
        raise ValueError(f"backend {name}: space must be one of {SPACES} or a function of the config")

    def wrap(load: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].load is not load:
            raise ValueError(f"backend {name!r} is registered twice")
        _REGISTRY[name] = BackendSpec(name, label, config_key, space, load, tuple(also_keys),
                                      tuple(selected_keys), options)
        return load

    return wrap


def backends() -> dict[str, BackendSpec]:
    _load_all()
    return dict(_REGISTRY)


def find(name: str) -> BackendSpec:
    _load_all()
    if name not in _REGISTRY:
        raise ConfigError(f"backend {name!r} is not registered (known: {', '.join(sorted(_REGISTRY))}); "
                          "fix `backend` in the config")
    return _REGISTRY[name]


def _load_all() -> None:
    from . import deepfloyd, sd, tiny, toy  # noqa: F401 - each registers its backend
