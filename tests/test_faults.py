"""The workflow under faults and bad input, as users hit them.

- Kills: the long-running jobs (a NeRF stage, DreamBooth) run as their rules run them
  (`python -m db3d <command> --config-json ...`, through tests/fault_run.py) at the smallest size
  (tiny backend, a few steps), SIGKILLed at several points - in the middle of writing a resume
  state, in the middle of writing the final checkpoint, between two writes - and each time rerun
  with the same command after deleting the rule's outputs, as Snakemake does before it reruns a
  job. The final outputs must equal an uninterrupted run's, bit for bit. For each stage with a
  resume state, a config change after a kill: the rerun says in one line that it discards the
  state and equals a clean run of the new config.
- Bad input through Snakemake: the hostile photo sets (tests/test_data.py has them through the
  build function) as subjects of a scratch workflow; `data/` and `runs/` are checksummed before
  and after: a bad subject is refused with one line in its log and nothing built is lost, also
  when `dataset.source` is pointed at a broken folder and when a rebuild is forced on one.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from db3d.config import load_config
from db3d.io import read_json, torch_load
from db3d.jobperf import JOB_LINE_TAG

REPO = Path(__file__).resolve().parent.parent
FAULT_RUN = Path(__file__).resolve().parent / "fault_run.py"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
KILLED = -9


def small_config() -> dict:
    cfg = load_config([REPO / "config" / "config.yaml", REPO / "config" / "tiny.yaml"])
    cfg.update(seed=0, device="cpu")
    cfg["dreambooth"].update(partial_steps=2, full_steps=6, num_class_images=2, class_sample_steps=2)
    cfg["nerf"].update(render_resolution=16, num_samples=16, grid_resolution=16)
    cfg["stage1"]["iters"] = 6
    return cfg


def photo(seed: int, size: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), (70, 150, 70), np.float64) + rng.normal(0, 6, (size, size, 3))
    yy, xx = np.mgrid[:size, :size]
    img[(yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= (0.3 * size) ** 2] = (220, 40, 40)
    return np.clip(img, 0, 255).astype(np.uint8)


def db3d(fault: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    return subprocess.run([sys.executable, str(FAULT_RUN), fault, "--", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def same_tensors(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A built subject (dog), its class priors, and a DreamBooth checkpoint for the NeRF."""
    from db3d import stages
    from db3d.data.build import build_subject
    from db3d.diffusion import build_backend

    root = tmp_path_factory.mktemp("faults")
    for i in range(3):
        (root / "source" / "dog").mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo(i)).save(root / "source" / "dog" / f"{i:02d}.jpg")
    cfg = small_config()
    build_subject(root / "source", "dog", root / "data" / "dog", resolutions=(64,), min_images=3,
                  subjects_table=REPO / "config" / "subjects.tsv")
    stages.class_priors(cfg, "dog", root / "priors")
    build_backend(cfg).save_finetuned(root / "db.safetensors")
    return root


# ---- NeRF ---------------------------------------------------------------------------------------

def nerf_args(cfg: dict, root: Path, out: Path) -> list[str]:
    return ["nerf", "--stage", "stage1", "--config-json", json.dumps(cfg), "--dreambooth", str(root / "db.safetensors"),
            "--subject-dir", str(root / "data" / "dog"), "--prompt-id", "plain", "--out-dir", str(out)]


NERF_OUTPUTS = ("nerf.pt", "losses.json")  # rules/method.smk nerf_stage1; the turntable is beside them


def rerun_nerf(fault: str, cfg: dict, root: Path, out: Path) -> subprocess.CompletedProcess:
    for name in NERF_OUTPUTS:  # Snakemake removes a job's outputs before running it again
        (out / name).unlink(missing_ok=True)
    return db3d(fault, *nerf_args(cfg, root, out))


def assert_same_nerf(a: Path, b: Path) -> None:
    na, nb = torch_load(a / "nerf.pt"), torch_load(b / "nerf.pt")
    assert na["field"]["config"] == nb["field"]["config"]
    assert same_tensors(na["field"]["state"], nb["field"]["state"])
    assert same_tensors(na["background"]["state"], nb["background"]["state"])
    la, lb = read_json(a / "losses.json"), read_json(b / "losses.json")
    assert la["steps"] == lb["steps"] and lb["perf"]["iters_per_s"] > 0
    assert (a / "turntable.png").read_bytes() == (b / "turntable.png").read_bytes()
    assert not [p.name for p in b.iterdir() if p.name.startswith(".")]  # no state or temporary file left


def test_nerf_killed_at_every_kind_of_write_resumes_to_the_uninterrupted_result(inputs):
    """6 steps, a resume state every 2: torch.save #1, #2 = the states after steps 2 and 4, the
    next one nerf.pt. Each run below is killed one write further; the last completes."""
    cfg, root = small_config(), inputs
    straight = root / "nerf_straight"
    res = db3d("none", *nerf_args(cfg, root, straight))
    assert res.returncode == 0, res.stderr[-2000:]
    out = root / "nerf_killed"
    chain = [("torch.save:2:mid", "the state after step 4, half written"),
             ("torch.save:2:mid", "resumed from step 2: nerf.pt, half written"),
             ("torch.save:1:after", "resumed from step 4: after nerf.pt, before turntable and losses.json")]
    for fault, where in chain:
        res = rerun_nerf(fault, cfg, root, out)
        assert res.returncode == KILLED, (where, res.stderr[-2000:])
        assert (out / ".resume.pt").exists(), where  # a whole state is always there to resume from
        if "nerf.pt, half" in where:
            assert not (out / "nerf.pt").exists()  # the half-written one was a temporary file
    assert "resuming stage1 from step 4" in res.stderr
    res = rerun_nerf("none", cfg, root, out)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming stage1 from step 4" in res.stderr
    assert_same_nerf(straight, out)


def test_nerf_config_change_after_a_kill_starts_clean(inputs):
    cfg, root = small_config(), inputs
    out = root / "nerf_changed"
    res = db3d("torch.save:2:after", *nerf_args(cfg, root, out))  # killed with a state after step 4
    assert res.returncode == KILLED and (out / ".resume.pt").exists()
    new = copy.deepcopy(cfg)
    new["sds"]["guidance_scale"] = cfg["sds"]["guidance_scale"] / 2
    res = rerun_nerf("none", new, root, out)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if "resume state" in line]
    assert len(lines) == 1 and "sds.guidance_scale" in lines[0] and "discarded" in lines[0], res.stderr[-2000:]
    clean = root / "nerf_changed_clean"
    assert db3d("none", *nerf_args(new, root, clean)).returncode == 0
    assert_same_nerf(clean, out)


# ---- DreamBooth ---------------------------------------------------------------------------------

DB_OUTPUTS = ("partial.safetensors", "full.safetensors", "losses.json")  # rules/method.smk dreambooth


def db_args(cfg: dict, root: Path, out: Path) -> list[str]:
    return ["dreambooth", "--config-json", json.dumps(cfg), "--subject-dir", str(root / "data" / "dog"),
            "--priors", str(root / "priors"), "--out-dir", str(out)]


def rerun_db(fault: str, cfg: dict, root: Path, out: Path) -> subprocess.CompletedProcess:
    for name in DB_OUTPUTS:
        (out / name).unlink(missing_ok=True)
    return db3d(fault, *db_args(cfg, root, out))


def assert_same_db(a: Path, b: Path) -> None:
    from safetensors.torch import load_file

    for name in ("partial.safetensors", "full.safetensors"):
        assert same_tensors(load_file(a / name), load_file(b / name)), name
    assert read_json(a / "losses.json")["steps"] == read_json(b / "losses.json")["steps"]
    assert sorted(p.name for p in b.iterdir()) == sorted(DB_OUTPUTS)  # no state, copy or temp file left


def test_dreambooth_killed_at_every_kind_of_write_resumes_to_the_uninterrupted_result(inputs):
    """6 steps, partial at 2, a resume state every 2: save_file #1 = partial (step 2), torch.save
    #1, #2 = the states after steps 2 and 4, save_file #2 = full (step 6)."""
    cfg, root = small_config(), inputs
    straight = root / "db_straight"
    res = db3d("none", *db_args(cfg, root, straight))
    assert res.returncode == 0, res.stderr[-2000:]
    out = root / "db_killed"
    chain = [("save_file:1:mid", "partial.safetensors half written, no state yet"),
             ("torch.save:2:mid", "from step 0 again: the state after step 4 half written"),
             ("save_file:1:mid", "resumed from step 2 (partial deleted, restored): full half written")]
    for fault, where in chain:
        res = rerun_db(fault, cfg, root, out)
        assert res.returncode == KILLED, (where, res.stderr[-2000:])
        assert not (out / "full.safetensors").exists(), where
    assert "resuming DreamBooth from step 2" in res.stderr
    res = rerun_db("none", cfg, root, out)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming DreamBooth from step 4" in res.stderr
    assert_same_db(straight, out)


def test_dreambooth_config_change_after_a_kill_starts_clean(inputs):
    cfg, root = small_config(), inputs
    out = root / "db_changed"
    res = db3d("torch.save:2:after", *db_args(cfg, root, out))  # killed with a state after step 4
    assert res.returncode == KILLED
    new = copy.deepcopy(cfg)
    new["dreambooth"]["learning_rate"] = cfg["dreambooth"]["learning_rate"] * 2
    res = rerun_db("none", new, root, out)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = [line for line in res.stderr.splitlines() if "resume state" in line]
    assert len(lines) == 1 and "other settings" in lines[0], res.stderr[-2000:]
    clean = root / "db_changed_clean"
    assert db3d("none", *db_args(new, root, clean)).returncode == 0
    assert_same_db(clean, out)


# ---- hostile input through Snakemake --------------------------------------------------------------

def tree_sha(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest()
            for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def hostile_source(src: Path) -> dict[str, str]:
    """Subjects of photos as users bring them -> the photo each refused subject must name ('' for
    subjects fixed up and built)."""
    def good(subject: str, n: int = 2) -> None:
        for i in range(n):
            Image.fromarray(photo(10 + i)).save(src / subject / f"{i:02d}.jpg")

    for subject in ("thing", "fixups", "truncated", "one_pixel", "text_jpg", "two_photos", "unlisted"):
        (src / subject).mkdir(parents=True)
    good("thing", 3)
    rgb = Image.fromarray(photo(20))
    rgb.convert("CMYK").save(src / "fixups" / "00_cmyk.jpg")
    Image.fromarray((np.asarray(rgb.convert("L")).astype(np.uint16) * 257)).save(src / "fixups" / "01_grey16.png")
    rgba = rgb.convert("RGBA")
    rgba.putalpha(Image.fromarray(((np.asarray(rgb)[..., 0] > 150) * 255).astype(np.uint8)))
    rgba.save(src / "fixups" / "02_rgba.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    rgb.save(src / "fixups" / "03_rotated.jpg", exif=exif)
    good("truncated")
    rgb.save(src / "truncated" / "02.jpg")
    data = (src / "truncated" / "02.jpg").read_bytes()
    (src / "truncated" / "02.jpg").write_bytes(data[: len(data) // 2])
    good("one_pixel")
    Image.new("RGB", (1, 1)).save(src / "one_pixel" / "02.png")
    good("text_jpg")
    (src / "text_jpg" / "02.jpg").write_text("not a photo\n")
    good("two_photos")
    good("unlisted", 3)
    return {"thing": "", "fixups": "", "truncated": "02.jpg", "one_pixel": "02.png", "text_jpg": "02.jpg",
            "two_photos": "two_photos", "unlisted": "unlisted"}


def snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", "2", *args, "--configfile", "overlay.yaml"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)


def test_hostile_photo_sets_through_snakemake_lose_nothing(tmp_path):
    work = tmp_path
    for name in ("Snakefile", "rules", "config", "ablations", "profiles"):
        (work / name).symlink_to(REPO / name)
    expect = hostile_source(work / "src")
    (work / "broken").mkdir()
    listed = [s for s in expect if s != "unlisted"]
    (work / "subjects.tsv").write_text("subject\tclass_noun\tkind\ttoken\tlicence\n" + "".join(
        f"{s}\ttoy\tobject\tsks\tCC BY 4.0; photos made by the test\n" for s in listed))
    (work / "prompts.tsv").write_text("subject\tprompt_id\tprompt\tset\torigin\n" + "".join(
        f"{s}\tplain\ta {{token}} {{class_noun}}\teval3d\tdb3d\n" for s in expect))
    overlay = ("dataset:\n  kind: dreambooth\n  source: {source}\n  subjects: [thing]\n"
               "  subjects_table: subjects.tsv\n  prompts_table: prompts.tsv\n")
    (work / "overlay.yaml").write_text(overlay.format(source="src"))
    meta = lambda s: f"data/subjects/{s}/meta.json"  # noqa: E731

    res = snakemake(work, meta("thing"))
    assert res.returncode == 0, res.stderr[-3000:]
    run = work / "runs" / "seed~0" / "thing" / "dreambooth"  # a stand-in for results built earlier
    run.mkdir(parents=True)
    (run / "losses.json").write_text('{"steps": []}\n')
    before = tree_sha(work / "data", work / "runs")

    # every hostile subject at once (--keep-going: each job fails or succeeds on its own)
    res = snakemake(work, "--keep-going", *map(meta, expect))
    assert res.returncode != 0
    for subject, culprit in expect.items():
        if not culprit:
            assert (work / meta(subject)).is_file(), subject
            continue
        errors = [line for line in (work / "logs" / "dataset" / f"{subject}.log").read_text().splitlines()
                  if ("rror" in line or "Traceback" in line) and JOB_LINE_TAG not in line]
        assert len(errors) == 1 and errors[0].startswith("db3d: error: ") and culprit in errors[0], (subject, errors)
        assert not (work / "data" / "subjects" / subject).exists(), subject
    fixups = read_json(work / meta("fixups"))["files"]
    assert all(f["fixups"] for f in fixups), fixups
    after = tree_sha(work / "data", work / "runs")
    assert {k: v for k, v in after.items() if "/fixups/" not in k} == before  # nothing built changed
    assert not [p for p in (work / "data" / "subjects").iterdir() if p.name.startswith(".")]  # no temp left

    # dataset.source pointed at a broken folder: nothing to rebuild, nothing lost
    (work / "overlay.yaml").write_text(overlay.format(source="broken"))
    res = snakemake(work, meta("thing"))
    assert res.returncode == 0 and "Nothing to be done" in res.stdout + res.stderr, res.stderr[-3000:]
    # ... and a forced rebuild from it fails in one line and keeps the built subject
    res = snakemake(work, "--forcerun", "dataset", meta("thing"))
    assert res.returncode != 0
    assert "Restored previous version of data/subjects/thing/meta.json" in res.stdout + res.stderr
    log = (work / "logs" / "dataset" / "thing.log").read_text().strip().splitlines()
    assert log[-1].startswith("db3d: error: subject folder broken/thing not found"), log
    final = tree_sha(work / "data", work / "runs")
    assert {k: final.get(k) for k in after} == after  # every file built before is there, byte for byte
