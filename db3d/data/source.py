"""Where the DreamBooth dataset comes from: a local folder, or a git URL cloned once into a cache.

Its own module so that both readers of the dataset (db3d.data.build: the photos; db3d.data.prompts:
the text files) import it without importing each other.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import DataError

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path("cache/sources")


def is_git_url(source: str | os.PathLike) -> bool:
    """A string that names a remote (or file://) git repository rather than a local folder."""
    s = str(source)
    if re.match(r"^(https?|ssh|git|file)://", s) or re.match(r"^[\w.-]+@[\w.-]+:", s):
        return True
    return s.endswith(".git") and not Path(s).is_dir()


def resolve_source(source: str | os.PathLike, cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The local dataset folder for `source`: the folder itself, or a cached shallow clone of a URL."""
    if not is_git_url(source):
        return Path(source)
    url = str(source)
    dest = Path(cache_dir) / re.sub(r"[^A-Za-z0-9_.-]+", "_", url.split("://")[-1]).strip("_")
    if not dest.is_dir():
        _clone(url, dest)
    nested = dest / "dataset"
    return nested if (nested / "prompts_and_classes.txt").is_file() else dest


def _clone(url: str, dest: Path) -> None:
    """Shallow clone into a temporary folder, then rename: parallel jobs never see half a clone."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    log.info("cloning %s into %s", url, dest)
    try:
        proc = subprocess.run(["git", "clone", "--depth", "1", "--quiet", url, str(tmp / "repo")],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            detail = " ".join(proc.stderr.split())[:200]
            raise DataError(f"git clone {url} failed ({detail}); clone it yourself and pass the "
                            "local dataset folder as --source / dataset.source")
        try:
            (tmp / "repo").rename(dest)
        except OSError:
            if not dest.is_dir():  # else another job cloned it first: use theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
