"""Atomic writes, JSON/TSV/image helpers and seeding shared by every stage.

Every file a rule promises is written through `atomic_path`: a crash or a kill leaves either the
old file or no file, never a half-written one that Snakemake would take as done (a killed write's
temporary file is removed by the next successful write of the same file).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    Works for files and directories (whatever the body creates at the temporary path).
    The temporary name keeps the final suffix so libraries that dispatch on it still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = path.suffix if suffix is None else suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    started = os.stat(tmp).st_mtime
    os.unlink(tmp)  # the body creates it (file or directory)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if path.is_dir() and not path.is_symlink():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp_path.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp_path, path)
        _remove_stale_temporaries(path, suffix, started)
    finally:
        if tmp_path.is_dir():
            shutil.rmtree(tmp_path, ignore_errors=True)
        elif tmp_path.exists():
            tmp_path.unlink()


def _remove_stale_temporaries(path: Path, suffix: str, before: float) -> None:
    """Temporary files of `path` begun before this write: left by a killed writer (a SIGKILL runs
    no `finally`), half written; a resume state's can be gigabytes."""
    import glob

    for stale in path.parent.glob(f".{glob.escape(path.stem)}.*.tmp{glob.escape(suffix)}"):
        try:
            if stale.lstat().st_mtime >= before:
                continue
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink()
        except FileNotFoundError:
            pass


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def torch_save(obj: Any, path: str | os.PathLike) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def torch_load(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    import torch

    return torch.load(path, map_location=map_location, weights_only=False)


def file_sha256(path: str | os.PathLike | None) -> str | None:
    """Content hash of a file (None for None): a resume state's inputs are named by content."""
    if path is None:
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k in sorted(obj, key=str):
            out.update(_flat(obj[k], f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def resume_settings(**settings: Any) -> dict[str, Any]:
    """The settings a resume state was written under, flattened to dotted keys (JSON values), so
    that a mismatch can name the keys that changed."""
    return _flat(json.loads(json.dumps(settings, sort_keys=True, default=_json_default)))


def load_resume_state(path: str | os.PathLike, settings: dict[str, Any]) -> dict | None:
    """The resume state at `path` if it was written under `settings` (`resume_settings`), else None.

    A state from other settings (a changed config, other inputs), from an older format without
    settings, or that does not load is deleted with one warning naming why: the run then starts
    clean. Resuming it would continue another run's optimisation (or fail on mismatched shapes).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch_load(path)
        saved = state.get("settings") if isinstance(state, dict) else None
    except Exception as e:  # noqa: BLE001 - any unreadable state is discarded, never resumed
        saved, state, why = None, None, f"unreadable ({type(e).__name__})"
    else:
        why = "written by an older version (no settings recorded)"
    if saved is not None:
        if saved == settings:
            return state
        changed = sorted(k for k in set(saved) | set(settings) if saved.get(k) != settings.get(k))
        why = "for other settings: " + ", ".join(
            f"{k} {saved.get(k)!r} -> {settings.get(k)!r}" for k in changed[:3]) + (" ..." if len(changed) > 3 else "")
    log.warning("resume state %s %s; discarded, starting over", path, why)
    path.unlink(missing_ok=True)
    return None


def save_image(path: str | os.PathLike, image: Any) -> None:
    """Save an image given as a [3,H,W] or [H,W,3] float array in [0,1] (torch or numpy) or uint8."""
    from PIL import Image

    arr = to_uint8(image)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp)


def to_uint8(image: Any) -> np.ndarray:
    if hasattr(image, "detach"):
        image = image.detach().float().cpu().numpy()
    arr = np.asarray(image)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)
    if arr.dtype != np.uint8:
        arr = (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    return arr


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) so a stage re-run reproduces its output.

    `deterministic` also selects torch's deterministic kernels: without it the NeRF grid's
    scatter-add backward sums in thread order and two runs of one seed drift apart (~1e-5 after a
    few steps), which breaks bit-exact resumption. Ops with no deterministic kernel only warn.
    """
    import torch

    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
