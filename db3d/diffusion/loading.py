"""Device/precision resolution and pretrained-component loading with one-line errors.

Why a module of its own: every real backend (`sd`, `if`) loads four or five components from a hub
id or a local folder, and a missing model must surface as ONE line (`ModelNotFoundError`) that says
what was tried and how to provide it, not as a 60-frame traceback from huggingface_hub. Offline
mode is read from the environment at call time (`HF_HUB_OFFLINE=1` -> `local_files_only=True`),
so a test or a rule can switch it on after the libraries were imported and fail in milliseconds
instead of waiting on network time-outs.
"""
from __future__ import annotations

import contextlib
import os
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ..errors import ConfigError, ModelNotFoundError

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`auto`/None -> cuda if available else cpu; anything else is passed to torch.device."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine; set device: cpu or auto")
    return dev


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """Compute dtype of the diffusion model: fp16/bf16 only on CUDA, fp32 on CPU always
    (half-precision convolutions on CPU are slow or missing, and the CPU path is for tests)."""
    if precision not in _DTYPES:
        raise ConfigError(f"precision {precision!r}: expected one of {', '.join(_DTYPES)}")
    return _DTYPES[precision] if device.type == "cuda" else torch.float32


def hub_offline() -> bool:
    """True when HF_HUB_OFFLINE is set to a true value (read now, not at import time)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def model_not_found(label: str, config_key: str, model_id: str, reason: str = "") -> ModelNotFoundError:
    """The one-line error for a model that cannot be loaded (names model, location, remedies)."""
    local = Path(model_id).expanduser()
    is_path = _looks_like_path(model_id)
    where = f"local folder {local}" if is_path else f"hub id {model_id!r}"
    mode = " with HF_HUB_OFFLINE=1 (cache only)" if hub_offline() and not is_path else ""
    reason = " ".join(str(reason).split())[:200]
    why = f" ({reason})" if reason else ""
    licence = (" (accept the licence on its model page and `hf auth login` first)"
               if config_key == "if" else "")
    return ModelNotFoundError(
        f"{label} model not found: tried {where}{mode}{why}; provide it with "
        f"`hf download {'<hub id> --local-dir ' + model_id if is_path else model_id}`{licence} "
        f"and run with HF_HUB_OFFLINE=1, or set models.{config_key} in the config to a local folder in "
        f"diffusers layout, or models.{config_key}: random for random weights (benchmarks only)")


def _looks_like_path(model_id: str) -> bool:
    """A folder (absolute, relative, existing, below an existing folder such as `models/sd21`, or
    anything that is not `org/name`) vs a hub id: an `org/name` whose `org` is a local folder is a
    missing folder, not a download."""
    path = Path(model_id).expanduser()
    return (model_id.startswith(("/", ".", "~")) or path.exists() or path.parent.is_dir() and str(path.parent) != "."
            or not _HUB_ID.match(model_id))


def check_source(label: str, config_key: str, model_id: str) -> None:
    """Fail fast on a local path that does not exist (no hub look-up for something that is a path)."""
    if _looks_like_path(model_id) and not Path(model_id).expanduser().is_dir():
        raise model_not_found(label, config_key, model_id, "no such folder")


def load_component(label: str, config_key: str, model_id: str, loader: Callable[..., Any],
                   subfolder: str, **kwargs: Any) -> Any:
    """`loader(model_id, subfolder=..., local_files_only=..., **kwargs)`, any load failure -> one line.

    `variant="fp16"` is tried first when passed and silently dropped if the repo has no such files.
    """
    source = str(Path(model_id).expanduser()) if _looks_like_path(model_id) else model_id
    kw = dict(subfolder=subfolder, local_files_only=hub_offline(), **kwargs)
    try:
        with warnings.catch_warnings():  # library deprecation chatter, not the user's business
            warnings.simplefilter("ignore", category=UserWarning)
            warnings.simplefilter("ignore", category=FutureWarning)
            try:
                return loader(source, **kw)
            except Exception:
                if "variant" not in kw:
                    raise
                kw.pop("variant")
                return loader(source, **kw)
    except Exception as exc:  # hub/HTTP/file errors come in many classes; all mean "cannot load it"
        text = str(exc).strip()
        first = f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
        raise model_not_found(label, config_key, model_id, f"{subfolder}: {first}") from None


def cast(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """`module.to(dtype)` only when it changes something (diffusers warns on every dtype `.to`)."""
    if any(p.dtype != dtype for p in module.parameters()):
        import logging as _logging

        quiet = _logging.getLogger("diffusers")  # "modules that should be kept in float32: []"
        level = quiet.level
        quiet.setLevel(_logging.ERROR)
        try:
            module.to(dtype)
        finally:
            quiet.setLevel(level)
    return module


@contextlib.contextmanager
def seeded_init(seed: int, device: torch.device | str) -> Iterator[None]:
    """Build modules on `device` with the global RNG seeded to `seed`, restoring the RNG after.

    Why: random-weight models (tiny, `random`) must be identical in every stage of a run (and every
    process), whatever the experiment seed is, without disturbing the caller's RNG stream.
    """
    device = torch.device(device)
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        with torch.device(device):
            yield
