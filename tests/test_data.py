"""Dataset: prompt tables, the per-subject build (fix-ups, bad input, atomicity), masks, loader.

Photos are generated small (a coloured disk on a textured background) so the whole file runs in
seconds; the real dataset is only read where a test says so, and skipped when it is absent.
"""
from __future__ import annotations

import csv
import hashlib
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from db3d.data import build as build_mod
from db3d.data import masks
from db3d.data.build import build_subject, is_git_url, read_photo, resolve_source
from db3d.data.prompts import (EVAL3D, get_prompt, load_prompts, load_subjects, parse_classes_and_prompts,
                               prompt_slug, subject_prompt_ids, write_tables)
from db3d.data.subject import load_subject
from db3d.errors import DataError
from db3d.io import read_json

REPO = Path(__file__).resolve().parent.parent
SUBJECTS_TSV = REPO / "config" / "subjects.tsv"
PROMPTS_TSV = REPO / "config" / "prompts.tsv"
DATASET = (REPO / ".." / "shared" / "datasets" / "dreambooth").resolve()
needs_dataset = pytest.mark.skipif(not (DATASET / "prompts_and_classes.txt").is_file(),
                                   reason="google/dreambooth dataset not at ../shared/datasets/dreambooth")
RES = (32, 64)
DISK = np.array([220, 40, 40], np.uint8)   # subject colour
BG = np.array([70, 150, 70], np.uint8)     # background colour


# ---- helpers ------------------------------------------------------------------------------------

def disk_photo(w: int = 96, h: int = 96, radius: float = 0.3, seed: int = 0) -> np.ndarray:
    """A red disk (the subject) centred on a noisy green background, [H,W,3] uint8."""
    rng = np.random.default_rng(seed)
    img = BG + rng.normal(0, 6, (h, w, 3))
    yy, xx = np.mgrid[:h, :w]
    inside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (radius * min(h, w)) ** 2
    img[inside] = DISK + rng.normal(0, 6, (int(inside.sum()), 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def save(path: Path, arr_or_img, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = arr_or_img if isinstance(arr_or_img, Image.Image) else Image.fromarray(arr_or_img)
    img.save(path, **kw)
    return path


def write_subjects(path: Path, rows: list[tuple[str, str, str]]) -> Path:
    """rows: (subject, class_noun, licence)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(["subject", "class_noun", "kind", "token", "licence"])
        for subject, noun, licence in rows:
            w.writerow([subject, noun, "live" if noun == "dog" else "object", "sks", licence])
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A source folder with subject `thing` (3 JPEGs, one not square) and a subjects table."""
    src = tmp_path / "src"
    for i in range(3):
        w = 120 if i == 2 else 96
        save(src / "thing" / f"{i:02d}.jpg", disk_photo(w=w, seed=i), quality=95)
    write_subjects(tmp_path / "subjects.tsv", [("thing", "toy", "CC BY 4.0; photos by us")])
    return src


def build(tmp_path: Path, src: Path, subject: str = "thing", **kw) -> dict:
    kw.setdefault("resolutions", RES)
    kw.setdefault("subjects_table", tmp_path / "subjects.tsv")
    return build_subject(src, subject, tmp_path / "out" / subject, **kw)


def tree_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def out_image(tmp_path: Path, res: int, i: int = 0, kind: str = "images", subject: str = "thing") -> np.ndarray:
    return np.asarray(Image.open(tmp_path / "out" / subject / f"{kind}_{res}" / f"{i:02d}.png"))


# ---- prompt tables ------------------------------------------------------------------------------

@needs_dataset
def test_dataset_file_has_25_object_and_25_live_prompts():
    classes, prompts = parse_classes_and_prompts((DATASET / "prompts_and_classes.txt").read_text())
    assert len(classes) == 30
    assert len(prompts["object"]) == 25 and len(prompts["live"]) == 25
    assert all("{token} {class_noun}" in t for t in prompts["object"] + prompts["live"])


@needs_dataset
def test_committed_tables_match_a_fresh_parse(tmp_path: Path):
    write_tables(DATASET, tmp_path / "s.tsv", tmp_path / "p.tsv")
    assert (tmp_path / "s.tsv").read_bytes() == SUBJECTS_TSV.read_bytes()
    assert (tmp_path / "p.tsv").read_bytes() == PROMPTS_TSV.read_bytes()


def test_subject_table():
    subjects = load_subjects(SUBJECTS_TSV)
    assert len(subjects) == 30 and subjects["subject"].is_unique
    live = set(subjects.loc[subjects["kind"] == "live", "subject"])
    assert live == {"cat", "cat2", "dog", "dog2", "dog3", "dog5", "dog6", "dog7", "dog8"}
    assert (subjects["token"] == "sks").all()
    assert subjects["licence"].str.len().min() > 10
    assert not subjects["licence"].str.contains("\t|\n").any()
    assert subjects.set_index("subject").loc["bear_plushie", "class_noun"] == "stuffed animal"


def test_prompt_table_order_and_sets():
    prompts = load_prompts(PROMPTS_TSV)
    kinds = load_subjects(SUBJECTS_TSV).set_index("subject")["kind"]
    for subject, rows in prompts.groupby("subject", sort=False):
        sets = list(rows["set"])
        n_eval = sets.count("eval3d")
        assert 3 <= n_eval <= 6, subject
        assert sets[:n_eval] == ["eval3d"] * n_eval, f"{subject}: eval3d rows must come first"
        assert rows.iloc[0]["prompt"] == "a {token} {class_noun}"
        assert (rows["origin"] == "dataset").sum() == 25, subject
        assert rows["prompt_id"].is_unique
        if kinds[subject] == "live":
            assert {"sleeping", "sitting", "jumping"} <= set(rows["prompt_id"])
    assert set(prompts["subject"]) == set(kinds.index)


def test_get_prompt_fills_the_template():
    p = get_prompt(PROMPTS_TSV, SUBJECTS_TSV, "dog", "sleeping")
    assert (p.text, p.class_prompt, p.token, p.class_noun) == ("a sks dog sleeping", "a dog", "sks", "dog")
    assert p.template == "a {token} {class_noun} sleeping" and p.set == "eval3d"
    q = get_prompt(PROMPTS_TSV, SUBJECTS_TSV, "bear_plushie", "jungle")
    assert q.text == "a sks stuffed animal in the jungle" and q.class_prompt == "a stuffed animal"
    with pytest.raises(DataError, match="nope"):
        get_prompt(PROMPTS_TSV, SUBJECTS_TSV, "dog", "nope")


def test_subject_prompt_ids_takes_the_first_rows():
    assert subject_prompt_ids(PROMPTS_TSV, "dog", 1) == ["plain"]
    assert subject_prompt_ids(PROMPTS_TSV, "dog", 3) == [pid for pid, _ in EVAL3D["live"][:3]]
    with pytest.raises(DataError, match="prompts_per_subject"):
        subject_prompt_ids(PROMPTS_TSV, "dog", 1000)
    with pytest.raises(DataError, match="no prompts"):
        subject_prompt_ids(PROMPTS_TSV, "unicorn", 1)


def test_prompt_slug():
    assert prompt_slug("a {token} {class_noun} in the jungle") == "jungle"
    assert prompt_slug("a red {token} {class_noun}") == "red"
    assert prompt_slug("a {token} {class_noun} with a city in the background") == "city"
    assert prompt_slug("a {token} {class_noun}") == "plain"


def _text_files(tmp_path: Path, refs: str) -> Path:
    src = tmp_path / "txt"
    src.mkdir()
    (src / "prompts_and_classes.txt").write_text(
        "Classes\n\nsubject_name,class\nrex,dog\nmug,cup\n\nPrompts\n\nObject Prompts\n\nprompt_list = [\n"
        "'a {0} {1} in the jungle'.format(unique_token, class_token),\n]\n\nLive Subject Prompts\n\n"
        "prompt_list = [\n'a {0} {1} in the snow'.format(unique_token, class_token),\n]\n")
    (src / "references_and_licenses.txt").write_text(refs)
    return src


def test_write_tables_on_a_small_file(tmp_path: Path):
    src = _text_files(tmp_path, "rex: Photos by A\n\nmug:\n(credit: https://unsplash.com/@b)\n00: x\n\nLicenses\nfoo\n")
    write_tables(src, tmp_path / "s.tsv", tmp_path / "p.tsv")
    s = load_subjects(tmp_path / "s.tsv").set_index("subject")
    assert s.loc["rex", "kind"] == "live" and s.loc["mug", "kind"] == "object"
    assert s.loc["mug", "licence"].startswith("Unsplash") and "00: x" in s.loc["mug", "licence"]
    p = load_prompts(tmp_path / "p.tsv")
    assert list(p[p.subject == "mug"]["prompt_id"]) == [pid for pid, _ in EVAL3D["object"]] + ["jungle"]


def test_write_tables_missing_licence_line(tmp_path: Path):
    src = _text_files(tmp_path, "rex: Photos by A\n\nLicenses\n")
    with pytest.raises(DataError, match="mug"):
        write_tables(src, tmp_path / "s.tsv", tmp_path / "p.tsv")
    assert not (tmp_path / "s.tsv").exists()


# ---- a good build -------------------------------------------------------------------------------

def test_good_build(tmp_path: Path, dataset: Path):
    meta = build(tmp_path, dataset)
    out = tmp_path / "out" / "thing"
    assert sorted(p.name for p in out.iterdir()) == ["images_32", "images_64", "masks_32", "masks_64", "meta.json"]
    for r in RES:
        names = sorted(p.name for p in (out / f"images_{r}").iterdir())
        assert names == ["00.png", "01.png", "02.png"]
        for i in range(3):
            img = Image.open(out / f"images_{r}" / f"{i:02d}.png")
            m = Image.open(out / f"masks_{r}" / f"{i:02d}.png")
            assert img.size == (r, r) and img.mode == "RGB"
            assert m.size == (r, r) and m.mode == "L"
            assert set(np.unique(np.asarray(m))) <= {0, 255}
    stored = read_json(out / "meta.json")
    assert stored == meta
    assert (meta["subject"], meta["class_noun"], meta["kind"], meta["token"]) == ("thing", "toy", "object", "sks")
    assert meta["num_images"] == 3 and meta["resolutions"] == list(RES)
    assert meta["licence"] == "CC BY 4.0; photos by us"
    for rec in meta["files"]:
        assert rec["sha256"] == hashlib.sha256((dataset / "thing" / rec["file"]).read_bytes()).hexdigest()
    assert meta["files"][2]["size"] == [120, 96]
    for r in RES:
        assert len(meta["mask_coverage"][str(r)]) == 3
    # the disk covers pi*0.3^2 = 28% of the square crop; the mask finds it
    cov = np.mean(meta["mask_coverage"]["64"])
    assert 0.2 < cov < 0.36, cov


def test_non_square_photo_is_centre_cropped(tmp_path: Path, dataset: Path):
    wide = disk_photo(w=160, h=96)
    wide[:, :32] = (0, 0, 255)      # the strips a centre crop removes
    wide[:, 128:] = (0, 0, 255)
    save(dataset / "thing" / "02.jpg", wide, quality=95)
    build(tmp_path, dataset)
    img = out_image(tmp_path, 64, 2).astype(int)
    assert img[..., 2].max() < 150, "blue strips left in: not a centre crop"
    assert abs(img[32, 32] - DISK.astype(int)).max() < 40
    assert abs(img[32, 1] - BG.astype(int)).max() < 40 and abs(img[32, 62] - BG.astype(int)).max() < 40


def test_masks_follow_the_subject(tmp_path: Path, dataset: Path):
    build(tmp_path, dataset)
    m = out_image(tmp_path, 64, 0, "masks") > 0
    yy, xx = np.mgrid[:64, :64]
    truth = (yy - 31.5) ** 2 + (xx - 31.5) ** 2 <= (0.3 * 64) ** 2
    iou = (m & truth).sum() / (m | truth).sum()
    assert iou > 0.8, iou


def test_load_subject(tmp_path: Path, dataset: Path):
    build(tmp_path, dataset)
    s = load_subject(tmp_path / "out" / "thing", 32)
    assert s.images.shape == (3, 3, 32, 32) and s.masks.shape == (3, 1, 32, 32)
    assert s.images.dtype.is_floating_point and 0.0 <= float(s.images.min()) and float(s.images.max()) <= 1.0
    assert set(s.masks.unique().tolist()) <= {0.0, 1.0}
    assert (s.name, s.class_noun, s.kind, s.token) == ("thing", "toy", "object", "sks")
    assert [f.name for f in s.files] == ["00.png", "01.png", "02.png"] and s.sources == ["00.jpg", "01.jpg", "02.jpg"]
    # pixel values are the PNG's
    png = np.asarray(Image.open(s.files[1])).astype(np.float32) / 255
    assert np.allclose(s.images[1].permute(1, 2, 0).numpy(), png)
    with pytest.raises(DataError, match="--resolutions 32 64 128"):
        load_subject(tmp_path / "out" / "thing", 128)
    with pytest.raises(DataError, match="meta.json"):
        load_subject(tmp_path / "out" / "nothing", 32)


# ---- photo fix-ups ------------------------------------------------------------------------------

def test_exif_orientation_6_is_applied(tmp_path: Path):
    # stored landscape: left half red, right half blue; orientation 6 = display rotated 90 deg clockwise,
    # so the displayed (portrait) photo is red on top, blue below
    arr = np.zeros((64, 96, 3), np.uint8)
    arr[:, :48] = (255, 0, 0)
    arr[:, 48:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    src = tmp_path / "src"
    for i in range(3):
        save(src / "thing" / f"{i:02d}.jpg", arr, quality=95, exif=exif.tobytes())
    write_subjects(tmp_path / "subjects.tsv", [("thing", "toy", "ours")])
    photo = read_photo(src / "thing" / "00.jpg")
    assert photo.rgb.shape == (96, 64, 3)
    meta = build(tmp_path, src)
    assert any("orientation 6" in f for f in meta["files"][0]["fixups"])
    img = out_image(tmp_path, 32).astype(int)
    assert img[2, 16, 0] > 200 and img[2, 16, 2] < 60     # top: red
    assert img[29, 16, 2] > 200 and img[29, 16, 0] < 60   # bottom: blue


def test_png_with_alpha_is_composited_on_white_and_gives_the_mask(tmp_path: Path):
    src = tmp_path / "src"
    rgba = np.zeros((64, 64, 4), np.uint8)           # transparent black background
    rgba[16:48, 16:48] = (0, 0, 255, 255)            # opaque blue square
    for i in range(3):
        save(src / "thing" / f"{i:02d}.png", Image.fromarray(rgba, "RGBA"))
    write_subjects(tmp_path / "subjects.tsv", [("thing", "toy", "ours")])
    meta = build(tmp_path, src)
    img = out_image(tmp_path, 64)
    assert tuple(img[2, 2]) == (255, 255, 255)       # composited on white, not black
    assert tuple(img[32, 32]) == (0, 0, 255)
    mask = out_image(tmp_path, 64, kind="masks") > 0
    expected = np.zeros((64, 64), bool)
    expected[16:48, 16:48] = True
    assert (mask == expected).all()
    assert meta["files"][0]["mask_source"] == "alpha"
    assert any("alpha" in f for f in meta["files"][0]["fixups"])


def test_grayscale_photo_becomes_rgb(tmp_path: Path):
    src = tmp_path / "src"
    gray = disk_photo().mean(-1).astype(np.uint8)
    for i in range(3):
        save(src / "thing" / f"{i:02d}.png", Image.fromarray(gray, "L"))
    write_subjects(tmp_path / "subjects.tsv", [("thing", "toy", "ours")])
    meta = build(tmp_path, src)
    img = out_image(tmp_path, 64)
    assert img.shape == (64, 64, 3)
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 1] == img[..., 2]).all()
    assert meta["files"][0]["fixups"] == ["L converted to RGB"]


def test_16bit_grayscale_is_scaled_not_clipped(tmp_path: Path):
    src = tmp_path / "src"
    deep = np.full((64, 64), 40000, np.uint16)   # 40000/65535 of full scale -> 156 in 8 bits
    deep[20:44, 20:44] = 10000                   # -> 39
    for i in range(3):
        save(src / "thing" / f"{i:02d}.png", Image.fromarray(deep))
    assert Image.open(src / "thing" / "00.png").mode.startswith("I")
    write_subjects(tmp_path / "subjects.tsv", [("thing", "toy", "ours")])
    meta = build(tmp_path, src)
    img = out_image(tmp_path, 64).astype(int)
    assert abs(img[2, 2, 0] - 156) <= 1 and abs(img[32, 32, 0] - 39) <= 1   # PIL's convert gives 255
    assert "1/257" in meta["files"][0]["fixups"][0]


def test_palette_png_keeps_its_colours(tmp_path: Path):
    src = tmp_path / "src"
    for i in range(3):
        save(src / "thing" / f"{i:02d}.png", Image.fromarray(disk_photo()).quantize(16))
    write_subjects(tmp_path / "subjects.tsv", [("thing", "toy", "ours")])
    build(tmp_path, src)
    img = out_image(tmp_path, 64).astype(int)
    assert abs(img[32, 32] - DISK.astype(int)).max() < 40 and abs(img[2, 2] - BG.astype(int)).max() < 40


# ---- bad input ----------------------------------------------------------------------------------

def test_truncated_jpeg(tmp_path: Path, dataset: Path):
    bad = dataset / "thing" / "01.jpg"
    bad.write_bytes(bad.read_bytes()[: len(bad.read_bytes()) // 2])
    with pytest.raises(DataError, match=r"01\.jpg.*(corrupt|truncated)") as e:
        build(tmp_path, dataset)
    assert "\n" not in str(e.value)


def test_garbage_jpeg(tmp_path: Path, dataset: Path):
    (dataset / "thing" / "03.jpg").write_bytes(b"this is not a jpeg" * 10)
    with pytest.raises(DataError, match=r"03\.jpg.*corrupt"):
        build(tmp_path, dataset)


def test_too_small_photo_is_an_error(tmp_path: Path, dataset: Path):
    save(dataset / "thing" / "03.jpg", disk_photo(w=24, h=24), quality=95)
    with pytest.raises(DataError, match=r"03\.jpg: 24x24 px is smaller than the smallest resolution 32"):
        build(tmp_path, dataset)


def test_photo_between_resolutions_is_upscaled_and_flagged(tmp_path: Path, dataset: Path):
    save(dataset / "thing" / "03.jpg", disk_photo(w=48, h=48), quality=95)
    meta = build(tmp_path, dataset)
    assert meta["files"][3]["upscaled_to"] == [64]
    assert meta["files"][0]["upscaled_to"] == []
    assert Image.open(tmp_path / "out" / "thing" / "images_64" / "03.png").size == (64, 64)


def test_fewer_than_min_images(tmp_path: Path, dataset: Path):
    (dataset / "thing" / "02.jpg").unlink()
    (dataset / "thing" / "notes.txt").write_text("not a photo")
    with pytest.raises(DataError, match="2 image.*at least 3"):
        build(tmp_path, dataset)
    build(tmp_path, dataset, min_images=2)


def test_missing_subject_folder(tmp_path: Path, dataset: Path):
    write_subjects(tmp_path / "subjects.tsv", [("thing", "toy", "ours"), ("ghost", "toy", "ours")])
    with pytest.raises(DataError, match=r"ghost not found.*found: thing"):
        build(tmp_path, dataset, subject="ghost")


def test_unknown_class(tmp_path: Path, dataset: Path):
    write_subjects(tmp_path / "subjects.tsv", [("other", "toy", "ours")])
    with pytest.raises(DataError, match=r"'thing' is not in .*subjects.tsv \(unknown class\)"):
        build(tmp_path, dataset)


def test_missing_licence_line(tmp_path: Path, dataset: Path):
    write_subjects(tmp_path / "subjects.tsv", [("thing", "toy", "")])
    with pytest.raises(DataError, match="no licence"):
        build(tmp_path, dataset)


# ---- atomicity ----------------------------------------------------------------------------------

def test_failed_rebuild_leaves_previous_output(tmp_path: Path, dataset: Path, monkeypatch):
    build(tmp_path, dataset)
    out = tmp_path / "out" / "thing"
    before = tree_bytes(out)
    # 1. bad input found while reading
    (dataset / "thing" / "01.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError):
        build(tmp_path, dataset)
    assert tree_bytes(out) == before
    # 2. a failure half-way through writing the new folder
    save(dataset / "thing" / "01.jpg", disk_photo(seed=7), quality=95)
    calls = []

    def flaky(image, hint=None):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("killed")
        return masks.foreground_mask(image, hint)

    monkeypatch.setattr(build_mod.masks, "foreground_mask", flaky)
    with pytest.raises(RuntimeError):
        build(tmp_path, dataset)
    monkeypatch.undo()
    assert tree_bytes(out) == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["thing"]   # no temporary folders left
    # and a successful rebuild does replace it
    build(tmp_path, dataset)
    assert tree_bytes(out)["images_64/01.png"] != before["images_64/01.png"]


def test_rebuild_is_byte_identical(tmp_path: Path, dataset: Path):
    build(tmp_path, dataset)
    first = tree_bytes(tmp_path / "out" / "thing")
    build(tmp_path, dataset)
    assert tree_bytes(tmp_path / "out" / "thing") == first


# ---- source given as a git URL ------------------------------------------------------------------

def test_is_git_url(tmp_path: Path):
    assert is_git_url("https://github.com/google/dreambooth")
    assert is_git_url("git@github.com:google/dreambooth.git")
    assert is_git_url("file:///tmp/x")
    assert not is_git_url("../shared/datasets/dreambooth")
    assert not is_git_url(tmp_path)


def test_url_source_is_cloned_once(tmp_path: Path, dataset: Path):
    repo = tmp_path / "remote"
    shutil.copytree(dataset / "thing", repo / "dataset" / "thing")
    (repo / "dataset" / "prompts_and_classes.txt").write_text("Classes\n")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "x"], check=True)
    cache = tmp_path / "cache"
    root = resolve_source(f"file://{repo}", cache_dir=cache)
    assert root.parent.parent == cache and root.name == "dataset"
    assert sorted(p.name for p in (root / "thing").iterdir()) == ["00.jpg", "01.jpg", "02.jpg"]
    assert resolve_source(f"file://{repo}", cache_dir=cache) == root   # cached
    with pytest.raises(DataError, match="git clone .* failed"):
        resolve_source(f"file://{tmp_path}/no-such-repo", cache_dir=cache)


# ---- the mask method on its own -----------------------------------------------------------------

def test_foreground_mask_uses_a_transparent_hint():
    img = disk_photo()
    hint = np.zeros((96, 96))
    hint[:10, :10] = 1.0
    assert (masks.foreground_mask(img, hint=hint) == (hint >= 0.5)).all()
    opaque = np.ones((96, 96))   # a fully opaque alpha says nothing: estimate instead
    assert 0.2 < masks.foreground_mask(img, hint=opaque).mean() < 0.36

