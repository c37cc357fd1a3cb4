"""The user-study design: which pairs, which questions, which rater sees what, in which order.

`build_study` scans `runs/<setting>/<subject>/<prompt_id>/eval/<variant>/turntable.gif` and
writes a study folder:

    <out>/manifest.json    the design (pairs, questions, attention checks, seed): deterministic
    <out>/media/<sha256[:20]>.gif|png   turntables, corrupted attention-check videos, subject photos
    <out>/raters.tsv       rater_id, token, link (secret: mode 0600)
    <out>/admin_token      the admin token of /admin/* (secret: mode 0600)

Media are named by content hash so a rater cannot read the variant from a URL (blind comparison).

A rater's trials are never stored: `rater_schedule(manifest, rater_index)` derives them from the
seed and the rater's index with SHA-256 (not with a language's RNG), so anyone can recompute the
order and the left/right sides from the manifest alone:

- assigned pairs: all pairs, or with `pairs_per_rater = k` the k consecutive pairs starting at
  `rater_index * k` in the list of pairs sorted by sha256("{seed}/pairs/{pair_id}") (cyclic), so
  every pair gets the same number of raters (+-1);
- trials: every (assigned pair, question) and every attention check, sorted by
  sha256("{seed}/{rater_index}/order/{trial_id}");
- side: the method (or, for a check, the real video) is on the left iff the first byte of
  sha256("{seed}/{rater_index}/side/{trial_id}") is even.
"""
from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import re
import secrets
from pathlib import Path
from typing import Any, Iterable

from .. import variants as V
from ..errors import DataError, Db3dError
from ..io import atomic_path, read_json, write_json

log = logging.getLogger(__name__)

FORMAT = "db3d-userstudy/1"
# the method and the baselines it is compared with, and their names (db3d.variants)
METHOD = V.METHOD
BASELINES = V.userstudy_baselines()
VARIANT_NAMES = {name: V.label(name) for name in (METHOD,) + BASELINES}
# The paper's three questions (DreamBooth3D, Sec. 5, user study). `show`: what the rater sees
# besides the two videos: the subject's photos, the prompt, or nothing.
QUESTIONS: list[dict[str, str]] = [
    {"id": "subject", "text": "Which 3D item looks more like the subject?", "show": "photos"},
    {"id": "consistency", "text": "Which 3D item looks more plausible / 3D consistent?", "show": "none"},
    {"id": "prompt", "text": "Which video better matches the prompt?", "show": "prompt"},
]
CHECK_KINDS = ("blank", "inverted", "noise")
MANIFEST = "manifest.json"
RATERS_TSV = "raters.tsv"
ADMIN_TOKEN = "admin_token"
DB_NAME = "responses.sqlite"
MAX_PHOTOS = 6
PHOTO_SIZE = 256
_RATER_ID = re.compile(r"r(\d{3,})")


# ----------------------------------------------------------------------------- hashing helpers
def _h(*parts: Any) -> bytes:
    return hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()


def rater_id(index: int) -> str:
    return f"r{index:03d}"


def rater_index(rid: str) -> int:
    m = _RATER_ID.fullmatch(rid)
    if not m:
        raise ValueError(f"not a rater id: {rid!r}")
    return int(m.group(1))


def new_token() -> str:
    """A rater or admin token: 128 random bits, URL-safe (22 characters)."""
    return secrets.token_urlsafe(16)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# ----------------------------------------------------------------------------- schedule
def assigned_pairs(manifest: dict, index: int) -> list[dict]:
    pairs = manifest["pairs"]
    k = manifest["design"].get("pairs_per_rater")
    if not k or k >= len(pairs):
        return list(pairs)
    seed = manifest["seed"]
    ordered = sorted(pairs, key=lambda p: _h(seed, "pairs", p["id"]))
    start = (index * k) % len(ordered)
    return [ordered[(start + j) % len(ordered)] for j in range(k)]


def public_id(seed: int, trial_id: str) -> str:
    """The opaque id a browser sees for a trial (the real id names the baseline)."""
    return _h(seed, "trial", trial_id).hex()[:16]


def rater_schedule(manifest: dict, index: int) -> list[dict]:
    """The trials of rater `index`, in the order shown (see the module docstring).

    Each trial: trial_id, public_id (opaque: what the browser sees), kind (pair|check), item (pair
    or check id), question (id), subject, prompt_id, position, left/right: {"media": path in the
    study folder, "role": variant, or real/corrupt for a check}. Server-side only: what a rater's
    browser gets is `public_trial`.
    """
    seed = manifest["seed"]
    trials = []
    for p in assigned_pairs(manifest, index):
        for q in manifest["questions"]:
            trials.append({"trial_id": f"{p['id']}:{q['id']}", "kind": "pair", "item": p["id"],
                           "question": q["id"], "subject": p["subject"], "prompt_id": p["prompt_id"],
                           "first": {"media": p["method"]["media"], "role": p["method"]["variant"]},
                           "second": {"media": p["baseline"]["media"], "role": p["baseline"]["variant"]}})
    for c in manifest["attention_checks"]:
        trials.append({"trial_id": f"{c['id']}:{c['question']}", "kind": "check", "item": c["id"],
                       "question": c["question"], "subject": c["subject"], "prompt_id": c["prompt_id"],
                       "first": {"media": c["real"], "role": "real"},
                       "second": {"media": c["corrupt"], "role": "corrupt"}})
    trials.sort(key=lambda t: _h(seed, index, "order", t["trial_id"]))
    out = []
    for pos, t in enumerate(trials):
        first_left = _h(seed, index, "side", t["trial_id"])[0] % 2 == 0
        left, right = (t["first"], t["second"]) if first_left else (t["second"], t["first"])
        t = {k: v for k, v in t.items() if k not in ("first", "second")}
        out.append({**t, "public_id": public_id(seed, t["trial_id"]), "position": pos, "left": left, "right": right})
    return out


def public_trial(manifest: dict, trial: dict, media_url: str = "/media/") -> dict:
    """What a rater's browser sees of a trial: no variant names, no roles (blind)."""
    q = next(q for q in manifest["questions"] if q["id"] == trial["question"])
    subj = manifest["subjects"][trial["subject"]]
    prompt = manifest["prompts"][f"{trial['subject']}.{trial['prompt_id']}"]
    return {
        "trial_id": trial["public_id"],
        "question": q["text"],
        "show": q["show"],
        "prompt": prompt["display"] if q["show"] == "prompt" else None,
        "photos": [media_url + Path(p).name for p in subj["photos"]] if q["show"] == "photos" else [],
        "left": media_url + Path(trial["left"]["media"]).name,
        "right": media_url + Path(trial["right"]["media"]).name,
    }


def load_manifest(study_dir: str | Path) -> dict:
    path = Path(study_dir) / MANIFEST
    if not path.is_file():
        raise Db3dError(f"{path} not found; build the study with `python -m db3d userstudy build --out {study_dir}`")
    manifest = read_json(path)
    if manifest.get("format") != FORMAT:
        raise Db3dError(f"{path}: format {manifest.get('format')!r} is not {FORMAT!r}; rebuild the study")
    return manifest


# ----------------------------------------------------------------------------- media
def _gif_frames(path: Path):
    """RGB frames (PIL images) and the frame duration in ms of a GIF."""
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        duration = int(im.info.get("duration", 125) or 125)
        frames = [f.convert("RGB").copy() for f in ImageSequence.Iterator(im)]
    if not frames:
        raise DataError(f"{path}: a GIF with no frames")
    return frames, duration


def _gif_bytes(frames, duration: int) -> bytes:
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0,
                   optimize=False, disposal=1)
    return buf.getvalue()


def corrupt_gif(path: Path, kind: str, key: str = "0") -> bytes:
    """A clearly wrong version of a turntable, same size, frame count and speed.

    blank: every frame uniform grey (no object at all); inverted: colours inverted and upside
    down; noise: independent uniform noise per frame (no object, flickering).
    """
    import numpy as np
    from PIL import Image, ImageOps

    frames, duration = _gif_frames(path)
    if kind == "blank":
        out = [Image.new("RGB", f.size, (128, 128, 128)) for f in frames]
    elif kind == "inverted":
        out = [ImageOps.flip(ImageOps.invert(f)) for f in frames]
    elif kind == "noise":
        rng = np.random.default_rng(int.from_bytes(_h("noise", key)[:8], "little"))
        out = [Image.fromarray(rng.integers(0, 256, (f.height, f.width, 3), dtype=np.uint8)) for f in frames]
    else:
        raise Db3dError(f"unknown attention-check kind {kind!r}; use one of {', '.join(CHECK_KINDS)}")
    return _gif_bytes(out, duration)


def _photo_bytes(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if max(im.size) > PHOTO_SIZE:
            im.thumbnail((PHOTO_SIZE, PHOTO_SIZE), Image.LANCZOS)
        buf = io.BytesIO()
        im.save(buf, format="PNG")
    return buf.getvalue()


class _Media:
    """Writes media files named by content hash into <study>/media/."""

    def __init__(self, root: Path):
        self.dir = root / "media"
        self.dir.mkdir(parents=True, exist_ok=True)

    def add(self, data: bytes, ext: str) -> str:
        name = f"{hashlib.sha256(data).hexdigest()[:20]}.{ext}"
        target = self.dir / name
        if not target.exists():
            target.write_bytes(data)
        return f"media/{name}"


# ----------------------------------------------------------------------------- scanning
def scan_turntables(runs_dir: Path, setting: str) -> dict[tuple[str, str], dict[str, Path]]:
    """{(subject, prompt_id): {variant: turntable.gif}} of one setting."""
    base = Path(runs_dir) / setting
    found: dict[tuple[str, str], dict[str, Path]] = {}
    for gif in sorted(base.glob(f"*/*/eval/*/{V.EVAL_FILES['turntable']}")):
        variant = gif.parent.name
        prompt_id = gif.parent.parent.parent.name
        subject = gif.parent.parent.parent.parent.name
        found.setdefault((subject, prompt_id), {})[variant] = gif
    return found


def subject_photos(data_dir: Path, subject: str) -> list[Path]:
    """The subject's input photos: images_512, else the largest images_<res> there is."""
    sdir = Path(data_dir) / subject
    others = [d for d in sdir.glob("images_*") if d.name.split("_", 1)[1].isdigit()]
    dirs = [sdir / "images_512"] + sorted(others, key=lambda d: -int(d.name.split("_", 1)[1]))
    for d in dirs:
        photos = sorted(d.glob("*.png")) + sorted(d.glob("*.jpg"))
        if photos:
            return photos[:MAX_PHOTOS]
    raise DataError(f"no photos of subject {subject!r} under {sdir}/images_512 (or images_*); "
                    f"build it with `snakemake data/subjects/{subject}/meta.json`")


def display_prompt(template: str, class_noun: str) -> str:
    """The prompt as raters read it: the rare token left out ("a sks dog sleeping" -> "a dog sleeping")."""
    return " ".join(template.format(token="", class_noun=class_noun).split())


# ----------------------------------------------------------------------------- build
def build_study(runs_dir: str | Path, setting: str, out_dir: str | Path, *, seed: int = 0, raters: int = 21,
                pairs_per_rater: int | None = None, checks: int = 3, check_kind: str = "blank",
                baselines: Iterable[str] | None = None, data_dir: str | Path = "data/subjects",
                prompts_table: str | Path = "config/prompts.tsv",
                subjects_table: str | Path = "config/subjects.tsv", name: str | None = None,
                force: bool = False) -> dict:
    """Write the study folder `out_dir` (see the module docstring); returns the manifest.

    Refuses to replace a study that already holds responses (`responses.sqlite`) unless `force`.
    """
    from ..data.prompts import get_prompt, subject_row

    runs_dir, out_dir = Path(runs_dir), Path(out_dir)
    if raters < 1:
        raise Db3dError(f"--raters must be at least 1 (got {raters})")
    if checks < 0:
        raise Db3dError(f"--checks must be >= 0 (got {checks})")
    if pairs_per_rater is not None and pairs_per_rater < 1:
        raise Db3dError(f"--pairs-per-rater must be at least 1 (got {pairs_per_rater})")
    if check_kind not in CHECK_KINDS:
        raise Db3dError(f"unknown attention-check kind {check_kind!r}; use one of {', '.join(CHECK_KINDS)}")
    baselines = list(baselines) if baselines is not None else list(BASELINES)
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise Db3dError(f"unknown baseline(s) {', '.join(unknown)}; known: {', '.join(BASELINES)}")
    if (out_dir / DB_NAME).exists() and not force:
        raise Db3dError(f"{out_dir} already holds responses ({DB_NAME}); build the new study into another "
                        "folder (or pass --force to discard them)")
    if not (runs_dir / setting).is_dir():
        raise Db3dError(f"{runs_dir / setting} does not exist; run the workflow for setting {setting!r} first "
                        "(or pass --runs/--setting)")
    found = scan_turntables(runs_dir, setting)
    if not found:
        raise Db3dError(f"no turntables under {runs_dir / setting}/<subject>/<prompt_id>/eval/<variant>/turntable.gif; "
                        "run the `evaluate` rules first")

    with atomic_path(out_dir, suffix="") as tmp:
        media = _Media(tmp)
        pairs, subjects, prompts = [], {}, {}
        for (subject, prompt_id), variants in sorted(found.items()):
            if METHOD not in variants:
                log.warning("userstudy: %s/%s has no %s turntable; skipped", subject, prompt_id, METHOD)
                continue
            present = [b for b in baselines if b in variants]
            if not present:
                log.warning("userstudy: %s/%s has no baseline turntable; skipped", subject, prompt_id)
                continue
            if subject not in subjects:
                info = subject_row(subjects_table, subject)
                subjects[subject] = {
                    "class_noun": info["class_noun"],
                    "photos": [media.add(_photo_bytes(p), "png") for p in subject_photos(Path(data_dir), subject)],
                }
            pr = get_prompt(prompts_table, subjects_table, subject, prompt_id)
            prompts[f"{subject}.{prompt_id}"] = {"text": pr.text,
                                                 "display": display_prompt(pr.template, pr.class_noun)}
            m_media = media.add(Path(variants[METHOD]).read_bytes(), "gif")
            for b in present:
                pairs.append({"id": f"{subject}.{prompt_id}.{b}", "subject": subject, "prompt_id": prompt_id,
                              "method": {"variant": METHOD, "media": m_media},
                              "baseline": {"variant": b, "media": media.add(Path(variants[b]).read_bytes(), "gif")}})
        if not pairs:
            raise Db3dError(f"no (subject, prompt) under {runs_dir / setting} has both a {METHOD} turntable and one "
                            f"of {', '.join(baselines)}; nothing to compare")

        # attention checks: the method's video against a corrupted copy of itself, one question each
        sources = sorted({(p["subject"], p["prompt_id"]) for p in pairs}, key=lambda sp: _h(seed, "checks", *sp))
        attention = []
        for i in range(checks):
            subject, prompt_id = sources[i % len(sources)]
            q = QUESTIONS[i % len(QUESTIONS)]
            gif = found[(subject, prompt_id)][METHOD]
            attention.append({"id": f"check{i + 1:02d}", "subject": subject, "prompt_id": prompt_id,
                              "question": q["id"], "kind": check_kind, "expected": "real",
                              "real": media.add(Path(gif).read_bytes(), "gif"),
                              "corrupt": media.add(corrupt_gif(Path(gif), check_kind, f"{seed}/{subject}/{prompt_id}"),
                                                   "gif")})

        manifest = {
            "format": FORMAT,
            "name": name or out_dir.name,
            "seed": int(seed),
            "setting": setting,
            "method": METHOD,
            "variant_names": VARIANT_NAMES,
            "questions": QUESTIONS,
            "pairs": pairs,
            "attention_checks": attention,
            "subjects": subjects,
            "prompts": prompts,
            "design": {
                "raters": int(raters),
                "pairs_per_rater": int(pairs_per_rater) if pairs_per_rater else None,
                "checks_per_rater": len(attention),
                "check_kind": check_kind,
                "trials_per_rater": (min(pairs_per_rater or len(pairs), len(pairs)) * len(QUESTIONS)
                                     + len(attention)),
                "schedule": "db3d.userstudy.design.rater_schedule (SHA-256 of seed, rater index, trial id)",
            },
        }
        write_json(tmp / MANIFEST, manifest)
        _write_secret(tmp / RATERS_TSV, _raters_tsv([(rater_id(i), new_token()) for i in range(raters)]))
        _write_secret(tmp / ADMIN_TOKEN, new_token() + "\n")
    log.info("userstudy: %s: %d pairs x %d questions + %d checks, %d raters", out_dir, len(pairs), len(QUESTIONS),
             len(attention), raters)
    return manifest


def _raters_tsv(rows: list[tuple[str, str]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(["rater_id", "token", "link"])
    for rid, tok in rows:
        w.writerow([rid, tok, f"/r/{tok}"])
    return buf.getvalue()


def _write_secret(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_raters(study_dir: str | Path) -> list[tuple[str, str]]:
    """(rater_id, token) of raters.tsv (empty if there is none)."""
    path = Path(study_dir) / RATERS_TSV
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [(r["rater_id"], r["token"]) for r in csv.DictReader(f, delimiter="\t")]


def read_admin_token(study_dir: str | Path) -> str | None:
    path = Path(study_dir) / ADMIN_TOKEN
    if not path.is_file():
        return None
    return path.read_text().strip() or None
