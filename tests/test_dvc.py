"""DVC round trip: what `data.dvc` promises (a fresh clone gets the exact data back) on a tiny copy.

A throwaway git+DVC repository in a temporary folder: generated data/ -> `dvc add` -> commit ->
`dvc push` to a local remote given, as in the project's .dvc/config, by a path relative to the
config -> `git clone` -> `dvc pull` -> every file byte-identical. Offline, about 10 s (DVC's start-up
dominates). The project repository and the user's DVC/git configuration are never touched.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
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


# ----------------------------------------------------------------------------- the committed remote
ROOT = Path(__file__).resolve().parents[1]


def _project_clone(tmp_path: Path, env: dict[str, str], name: str) -> Path:
    """A `git clone` of this repository's checked-out commit (its committed .dvc/config and
    models/dvc-remote, not uncommitted edits)."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip(f"{ROOT} is not a git checkout")
    dst = tmp_path / name
    _run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(dst)], tmp_path, env)
    _run(["git", "checkout", "-q", head.stdout.strip()], dst, env)
    return dst


def test_a_fresh_clone_pulls_from_the_committed_remote(tmp_path: Path):
    """models/toy.dvc's remote travels with git: a file pushed to `repo` (models/dvc-remote) in one clone
    and committed is pulled by a fresh clone of that one with no set-up, even when the first
    clone's folders are gone; nothing of it lands in the git-ignored `local` remote."""
    env = _env(tmp_path)
    src = _project_clone(tmp_path, env, "src")
    assert (src / "models" / "dvc-remote" / "README.md").is_file()  # the remote folder is in git
    weights = np.random.default_rng(0).integers(0, 256, 20000, dtype=np.uint8).tobytes()
    (src / "models" / "dummy").mkdir()
    (src / "models" / "dummy" / "weights.bin").write_bytes(weights)
    _run(_dvc("add", "-q", "models/dummy"), src, env)
    dvc_file = src / "models" / "dummy.dvc"
    dvc_file.write_text(dvc_file.read_text() + "  remote: repo\n")  # as models/toy.dvc has it
    _run(_dvc("push", "-q", "models/dummy.dvc"), src, env)
    md5 = yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]
    obj = Path("models") / "dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]
    assert (src / obj).is_file(), "not pushed into the repository's own models/dvc-remote"
    assert not (src / "dvc-storage").exists()
    _run(["git", "add", "models"], src, env)
    _run(["git", "commit", "-q", "-m", "dummy model"], src, env)

    fresh = tmp_path / "fresh"
    _run(["git", "clone", "-q", str(src), str(fresh)], tmp_path, env)
    shutil.rmtree(src)  # the fresh clone must need nothing outside itself
    assert not (fresh / "models" / "dummy").exists() and (fresh / obj).is_file()  # the object came with git
    _run(_dvc("pull", "-q", "models/dummy.dvc"), fresh, env)
    assert (fresh / "models" / "dummy" / "weights.bin").read_bytes() == weights


def test_a_fresh_clone_pulls_the_toy_prior(tmp_path: Path):
    """`dvc pull models/toy.dvc` on a fresh clone gives the prior its train_log.json describes."""
    import json

    out = yaml.safe_load((ROOT / "models" / "toy.dvc").read_text())["outs"]
    md5 = out[0]["md5"]
    assert out[0].get("remote") == "repo", "models/toy.dvc must send its output to the committed remote"
    if not (ROOT / "models" / "dvc-remote" / "files" / "md5" / md5[:2] / md5[2:]).is_file():
        pytest.skip(f"models/dvc-remote has no objects for models/toy.dvc ({md5}) yet: publish the prior with "
                    "`dvc push models/toy.dvc` and commit models/dvc-remote (models/dvc-remote/README.md)")
    env = _env(tmp_path)
    fresh = _project_clone(tmp_path, env, "fresh")
    _run(_dvc("pull", "-q", "models/toy.dvc"), fresh, env)
    toy = fresh / "models" / "toy"
    from db3d.diffusion.toy import file_sha256

    assert file_sha256(toy / "model.safetensors") == json.loads((toy / "train_log.json").read_text())["sha256"]
