"""DVC round trip: what `data.dvc` promises (a fresh clone gets the exact data back) on a tiny copy.

A throwaway git+DVC repository in a temporary folder: generated data/ -> `dvc add` -> commit ->
`dvc push` to a local remote given, as in the project's .dvc/config, by a path relative to the
config -> `git clone` -> `dvc pull` -> every file byte-identical. Offline, about 10 s (DVC's start-up
dominates). The project repository and the user's DVC/git configuration are never touched.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "site-cache"),   # DVC's per-machine index/locks
        "DVC_GLOBAL_CONFIG_DIR": str(tmp_path / "dvc-global"),
        "DVC_SYSTEM_CONFIG_DIR": str(tmp_path / "dvc-system"),
        "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
    })
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"


def _dvc(*args: str) -> list[str]:
    return [sys.executable, "-m", "dvc", *args]


def _make_data(root: Path) -> None:
    """A small stand-in for data/subjects/: PNGs in nested folders and a JSON file."""
    rng = np.random.default_rng(0)
    for subject in ("dog", "teapot"):
        for kind in ("images_64", "masks_64"):
            d = root / "subjects" / subject / kind
            d.mkdir(parents=True)
            for i in range(2):
                arr = rng.integers(0, 256, (64, 64, 3) if kind.startswith("images") else (64, 64), dtype=np.uint8)
                Image.fromarray(arr).save(d / f"{i:02d}.png")
        (root / "subjects" / subject / "meta.json").write_text(f'{{"subject": "{subject}"}}\n')


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dvc_push_clone_pull_round_trip(tmp_path: Path):
    env = _env(tmp_path)
    repo, clone = tmp_path / "repo", tmp_path / "clone"
    repo.mkdir()
    _run(["git", "init", "-q"], repo, env)
    _run(_dvc("init", "-q"), repo, env)
    # given relative to the repo, stored relative to .dvc/ (../../storage): <tmp>/storage, the same
    # folder from the repo and from its clone
    _run(_dvc("remote", "add", "-d", "local", "../storage"), repo, env)
    assert "url = ../../storage" in (repo / ".dvc" / "config").read_text()
    _make_data(repo / "data")
    _run(_dvc("add", "-q", "data"), repo, env)
    assert (repo / "data.dvc").is_file()
    _run(["git", "add", "-A"], repo, env)
    _run(["git", "commit", "-q", "-m", "data"], repo, env)
    _run(_dvc("push", "-q"), repo, env)
    assert any((tmp_path / "storage").rglob("*")), "nothing pushed"

    _run(["git", "clone", "-q", str(repo), str(clone)], tmp_path, env)
    assert not (clone / "data").exists()
    _run(_dvc("pull", "-q"), clone, env)
    original = _files(repo / "data")
    assert len(original) == 10
    assert _files(clone / "data") == original
