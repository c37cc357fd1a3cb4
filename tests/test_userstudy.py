"""User study (db3d.userstudy): design, analysis statistics, SQLite store, Flask app, CLI.

Everything runs on tiny GIFs and PNGs made here with PIL; no workflow run is needed.
The browser end-to-end test and the concurrency test are in test_userstudy_e2e.py.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import sqlite3
import stat
import threading
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageSequence

from db3d.errors import Db3dError
from db3d.userstudy import analysis, design
from db3d.userstudy.store import Store

VARIANT_COLOURS = {"dreambooth3d": (200, 60, 60), "naive": (60, 140, 200), "latent_nerf": (90, 170, 90),
                   "single_stage": (200, 160, 40)}
TEMPLATES = {"plain": "a {token} {class_noun}", "red": "a red {token} {class_noun}",
             "sleeping": "a {token} {class_noun} sleeping"}
CLASS = {"dog": "dog", "teapot": "teapot", "cat": "cat"}


# ----------------------------------------------------------------------------- fixtures (also used by the e2e tests)
def make_gif(path: Path, colour, size: int = 32, frames: int = 6) -> None:
    """A tiny 'turntable': an ellipse whose width follows the rotation, a marker that moves."""
    ims = []
    for i in range(frames):
        a = 2 * math.pi * i / frames
        im = Image.new("RGB", (size, size), (235, 235, 235))
        d = ImageDraw.Draw(im)
        w = max(2, int(size * 0.3 * abs(math.cos(a)))) + 2
        c = size // 2
        d.ellipse([c - w, int(size * 0.15), c + w, int(size * 0.85)], fill=colour)
        x = c + int(size * 0.2 * math.sin(a))
        d.rectangle([x - 1, 2, x + 1, 5], fill=(20, 20, 20))
        ims.append(im)
    path.parent.mkdir(parents=True, exist_ok=True)
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=100, loop=0)


def make_project(root: Path, subjects=("dog", "teapot"), prompts=("plain",),
                 variants=("dreambooth3d", "naive", "latent_nerf"), size: int = 32, setting: str = "seed~0") -> dict:
    """runs/<setting>/.../eval/<variant>/turntable.gif, data/subjects/<s>/images_64/, config tables."""
    root = Path(root)
    for s in subjects:
        for p in prompts:
            for v in variants:
                make_gif(root / "runs" / setting / s / p / "eval" / v / "turntable.gif", VARIANT_COLOURS[v], size)
        d = root / "data" / "subjects" / s / "images_64"
        d.mkdir(parents=True, exist_ok=True)
        for k in range(3):
            Image.new("RGB", (64, 64), (60 * k, 100, 150)).save(d / f"{k:02d}.png")
    (root / "config").mkdir(exist_ok=True)
    (root / "config" / "subjects.tsv").write_text(
        "subject\tclass_noun\tkind\ttoken\tlicence\n"
        + "".join(f"{s}\t{CLASS[s]}\tobject\tsks\ttest\n" for s in subjects))
    (root / "config" / "prompts.tsv").write_text(
        "subject\tprompt_id\tprompt\tset\torigin\n"
        + "".join(f"{s}\t{p}\t{TEMPLATES[p]}\teval3d\tdb3d\n" for s in subjects for p in prompts))
    return {"runs": root / "runs", "data": root / "data" / "subjects", "prompts": root / "config" / "prompts.tsv",
            "subjects": root / "config" / "subjects.tsv", "setting": setting}


def build(root: Path, out: Path | None = None, project: dict | None = None, **kw) -> tuple[Path, dict]:
    project = project or make_project(root, **{k: kw.pop(k) for k in ("subjects", "prompts", "variants") if k in kw})
    out = out or Path(root) / "studies" / "s"
    m = design.build_study(project["runs"], project["setting"], out, data_dir=project["data"],
                           prompts_table=project["prompts"], subjects_table=project["subjects"], **kw)
    return out, m


def trial_role_side(trial: dict, role: str) -> str:
    """left or right: the side where `role` (a variant, or real/corrupt) is shown."""
    return "left" if trial["left"]["role"] == role else "right"


@pytest.fixture
def study(tmp_path):
    out, manifest = build(tmp_path, raters=4)
    return out, manifest


# ----------------------------------------------------------------------------- design
def test_build_writes_pairs_questions_checks_and_secrets(study):
    out, m = study
    assert [p["id"] for p in m["pairs"]] == ["dog.plain.latent_nerf", "dog.plain.naive",
                                            "teapot.plain.latent_nerf", "teapot.plain.naive"]
    assert [q["id"] for q in m["questions"]] == ["subject", "consistency", "prompt"]
    assert [q["text"] for q in m["questions"]] == ["Which 3D item looks more like the subject?",
                                                   "Which 3D item looks more plausible / 3D consistent?",
                                                   "Which video better matches the prompt?"]
    assert [(c["id"], c["question"], c["kind"]) for c in m["attention_checks"]] == [
        ("check01", "subject", "blank"), ("check02", "consistency", "blank"), ("check03", "prompt", "blank")]
    assert m["design"]["trials_per_rater"] == 4 * 3 + 3 and m["seed"] == 0 and m["setting"] == "seed~0"
    assert m["prompts"]["dog.plain"] == {"text": "a sks dog", "display": "a dog"}
    # media copied into the study, named by content hash (blind), the method's video the original bytes
    for p in m["pairs"]:
        for side in ("method", "baseline"):
            f = out / p[side]["media"]
            assert f.is_file() and re.fullmatch(r"[0-9a-f]{20}\.gif", f.name)
            assert f.name[:20] == hashlib.sha256(f.read_bytes()).hexdigest()[:20]
    src = out.parent.parent / "runs/seed~0/dog/plain/eval/dreambooth3d/turntable.gif"
    assert (out / m["pairs"][0]["method"]["media"]).read_bytes() == src.read_bytes()
    assert len(m["subjects"]["dog"]["photos"]) == 3
    # secrets: one token per rater, readable by the owner only
    raters = design.read_raters(out)
    assert [r for r, _ in raters] == ["r000", "r001", "r002", "r003"] and len({t for _, t in raters}) == 4
    for name in (design.RATERS_TSV, design.ADMIN_TOKEN):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o600
    assert design.read_admin_token(out)


def test_manifest_is_reproducible_from_the_seed(tmp_path):
    project = make_project(tmp_path)
    a, _ = build(tmp_path, tmp_path / "a", project, seed=7, name="study")
    b, _ = build(tmp_path, tmp_path / "b", project, seed=7, name="study")
    c, _ = build(tmp_path, tmp_path / "c", project, seed=8, name="study")
    assert (a / "manifest.json").read_bytes() == (b / "manifest.json").read_bytes()
    assert json.loads((c / "manifest.json").read_text())["seed"] == 8
    assert design.read_raters(a) != design.read_raters(b)  # tokens are secrets, not derived from the seed
    ma, mc = design.load_manifest(a), design.load_manifest(c)
    assert design.rater_schedule(ma, 3) == design.rater_schedule(design.load_manifest(b), 3)
    order = [t["trial_id"] for t in design.rater_schedule(ma, 3)]
    assert order != [t["trial_id"] for t in design.rater_schedule(mc, 3)]


def test_schedule_follows_the_documented_sha256_rule(study):
    _, m = study
    for idx in range(4):
        trials = design.rater_schedule(m, idx)
        ids = [t["trial_id"] for t in trials]
        expect = sorted(ids, key=lambda t: hashlib.sha256(f"0/{idx}/order/{t}".encode()).digest())
        assert ids == expect and len(set(ids)) == len(ids) == 15
        assert [t["position"] for t in trials] == list(range(15))
        for t in trials:
            first_left = hashlib.sha256(f"0/{idx}/side/{t['trial_id']}".encode()).digest()[0] % 2 == 0
            first = "dreambooth3d" if t["kind"] == "pair" else "real"
            assert (t["left"]["role"] == first) == first_left
    orders = {tuple(t["trial_id"] for t in design.rater_schedule(m, i)) for i in range(4)}
    assert len(orders) == 4  # every rater has their own order


def test_sides_are_balanced_over_raters(study):
    _, m = study
    left = total = 0
    for idx in range(40):
        for t in design.rater_schedule(m, idx):
            total += 1
            left += t["left"]["role"] in ("dreambooth3d", "real")
    assert 0.4 < left / total < 0.6


def test_pairs_per_rater_gives_every_pair_the_same_number_of_raters(tmp_path):
    _, m = build(tmp_path, raters=6, pairs_per_rater=2)
    seen = {p["id"]: 0 for p in m["pairs"]}
    for idx in range(6):
        trials = design.rater_schedule(m, idx)
        pairs = {t["item"] for t in trials if t["kind"] == "pair"}
        assert len(pairs) == 2 and len(trials) == 2 * 3 + 3 == m["design"]["trials_per_rater"]
        for p in pairs:
            seen[p] += 1
    assert sorted(seen.values()) == [3, 3, 3, 3]


def test_attention_check_videos_are_clearly_wrong(tmp_path):
    gif = tmp_path / "t.gif"
    make_gif(gif, (200, 60, 60), size=24, frames=5)

    def frames(data_or_path):
        im = Image.open(data_or_path if isinstance(data_or_path, Path) else __import__("io").BytesIO(data_or_path))
        return [f.convert("RGB").copy() for f in ImageSequence.Iterator(im)]

    src = frames(gif)
    blank = frames(design.corrupt_gif(gif, "blank"))
    assert blank[0].size == (24, 24)  # (Pillow merges the identical frames into one)
    assert all(f.getextrema() == ((128, 128),) * 3 for f in blank)
    inv = frames(design.corrupt_gif(gif, "inverted"))
    assert len(inv) == 5
    a, b = src[2].load(), inv[2].load()
    for x, y in ((12, 12), (3, 20), (20, 3)):  # inverted and upside down (GIF palette: allow rounding)
        assert all(abs(255 - a[x, y][c] - b[x, 23 - y][c]) <= 8 for c in range(3))
    n1, n2 = design.corrupt_gif(gif, "noise", "k"), design.corrupt_gif(gif, "noise", "k")
    assert n1 == n2 and n1 != design.corrupt_gif(gif, "noise", "other")
    with pytest.raises(Db3dError, match="unknown attention-check kind"):
        design.corrupt_gif(gif, "sideways")


def test_public_trial_is_blind_and_shows_what_the_question_needs(study):
    _, m = study
    trials = design.rater_schedule(m, 0)
    for t in trials:
        pub = design.public_trial(m, t)
        text = json.dumps(pub)
        assert re.fullmatch(r"[0-9a-f]{16}", pub["trial_id"])
        for word in ("dreambooth3d", "naive", "latent_nerf", "real", "corrupt", "check", "plain"):
            assert word not in text
        q = t["question"]
        assert bool(pub["photos"]) == (q == "subject")
        assert pub["prompt"] == (f"a {t['subject']}" if q == "prompt" else None)
        assert pub["left"].startswith("/media/") and pub["left"] != pub["right"]


def test_display_prompt_drops_the_rare_token():
    assert design.display_prompt("a {token} {class_noun} sleeping", "dog") == "a dog sleeping"
    assert design.display_prompt("a red {token} {class_noun}", "teapot") == "a red teapot"


def test_build_errors_are_one_line_db3d_errors(tmp_path):
    project = make_project(tmp_path)
    kw = dict(data_dir=project["data"], prompts_table=project["prompts"], subjects_table=project["subjects"])
    with pytest.raises(Db3dError, match="does not exist"):
        design.build_study(project["runs"], "seed~9", tmp_path / "x", **kw)
    with pytest.raises(Db3dError, match="unknown baseline"):
        design.build_study(project["runs"], "seed~0", tmp_path / "x", baselines=["dreamfusion"], **kw)
    with pytest.raises(Db3dError, match="unknown attention-check kind"):
        design.build_study(project["runs"], "seed~0", tmp_path / "x", check_kind="sideways", **kw)
    only_method = make_project(tmp_path / "m", variants=("dreambooth3d",))
    with pytest.raises(Db3dError, match="nothing to compare"):
        build(tmp_path / "m", project=only_method)
    assert not (tmp_path / "m" / "studies" / "s").exists()  # nothing half-written
    out, _ = build(tmp_path, project=project)
    (out / design.DB_NAME).write_bytes(b"")
    with pytest.raises(Db3dError, match="already holds responses"):
        build(tmp_path, project=project)
    build(tmp_path, project=project, force=True)
    assert not (out / design.DB_NAME).exists()


# ----------------------------------------------------------------------------- statistics
def test_wilson_interval_7_of_10_matches_the_hand_computation():
    # z = 1.959964, p = 0.7, n = 10: centre = (0.7 + z^2/20) / (1 + z^2/10) = 0.892073 / 1.384146 = 0.644493
    # half = z / 1.384146 * sqrt(0.021 + z^2/400) = 1.416011 * 0.174939 = 0.247715 -> [0.396778, 0.892209]
    lo, hi = analysis.wilson_interval(7, 10)
    assert lo == pytest.approx(0.396778, abs=2e-6) and hi == pytest.approx(0.892209, abs=2e-6)


def test_wilson_interval_edges():
    lo, hi = analysis.wilson_interval(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.277533, abs=1e-6)
    lo, hi = analysis.wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 0.277533, abs=1e-6)
    assert all(math.isnan(v) for v in analysis.wilson_interval(0, 0))


def test_binomial_test_two_sided():
    assert analysis.binomial_p(7, 10) == pytest.approx(352 / 1024, rel=1e-12)  # 2 * (1+10+45+120) / 2^10
    assert analysis.binomial_p(5, 10) == pytest.approx(1.0)
    assert analysis.binomial_p(10, 10) == pytest.approx(2 / 1024)
    assert math.isnan(analysis.binomial_p(0, 0))


def test_fleiss_kappa_textbook_example():
    # Fleiss (1971) as worked in Wikipedia's "Fleiss' kappa": 10 items, 14 raters, 5 categories;
    # P_bar = 0.378, P_e = 0.213, kappa = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
             [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert analysis.fleiss_kappa(table) == pytest.approx(0.20993, abs=5e-5)


def test_fleiss_kappa_special_cases():
    assert analysis.fleiss_kappa([[3, 0], [0, 3]]) == pytest.approx(1.0)
    assert analysis.fleiss_kappa([[3, 1], [2, 2]]) == pytest.approx(-11 / 45)  # unequal votes, by hand
    assert analysis.fleiss_kappa([[3, 1], [2, 2], [1, 0]]) == pytest.approx(-11 / 45)  # n < 2 item left out
    assert math.isnan(analysis.fleiss_kappa([[3, 0], [2, 0]]))  # one category only: undefined
    assert math.isnan(analysis.fleiss_kappa([]))


def test_majority_vote_and_ties():
    assert analysis.majority(3, 1) == "method"
    assert analysis.majority(1, 2) == "baseline"
    assert analysis.majority(2, 2) == "tie"
    assert analysis.majority(0, 0) == "tie"


# ----------------------------------------------------------------------------- analysis on known answers
def _answer_all(store: Store, m: dict, idx: int, prefer, checks_ok=True, stop: int | None = None) -> None:
    """Answer rater idx's schedule: prefer(trial) -> 'method'|'baseline'; checks right or wrong."""
    rid = design.rater_id(idx)
    store.add_rater(rid, idx, design.token_hash(f"tok{idx}" * 3))
    for t in design.rater_schedule(m, idx)[:stop]:
        if t["kind"] == "check":
            role = "real" if checks_ok else "corrupt"
        else:
            p = next(p for p in m["pairs"] if p["id"] == t["item"])
            role = "dreambooth3d" if prefer(t) == "method" else p["baseline"]["variant"]
        store.record_answer(rid, t, trial_role_side(t, role), 1000)


def test_analyse_known_responses_exact_tables(study, tmp_path):
    out, m = study
    from db3d.userstudy.server import open_store

    store = open_store(out)
    # subject question vs naive, per kept rater (dog, teapot): dog M M M B (3-1: majority method),
    # teapot M B B M (2-2: tie); every other question and pair: the method. Rater 3 fails the checks
    # and always prefers the baseline: dropped, must not count.
    votes = {0: "mm", 1: "mb", 2: "mb", 4: "bm"}

    def prefer_for(idx):
        def prefer(t):
            if t["question"] != "subject" or not t["item"].endswith(".naive"):
                return "method"
            return "method" if votes[idx][0 if t["subject"] == "dog" else 1] == "m" else "baseline"
        return prefer

    for idx in (0, 1, 2, 4):
        _answer_all(store, m, idx, prefer_for(idx))
    _answer_all(store, m, 3, lambda t: "baseline", checks_ok=False)
    store.close()

    paths = analysis.analyse(out, tmp_path / "res" / "userstudy.tsv")
    assert paths["pairs"].name == "userstudy_pairs.tsv" and paths["raters"].name == "userstudy_raters.tsv"
    rows = _read_tsv(paths["summary"])
    assert list(rows[0]) == analysis.SUMMARY_COLUMNS
    assert [(r["question"], r["baseline"]) for r in rows] == [
        (q, b) for q in ("subject", "consistency", "prompt") for b in ("latent_nerf", "naive")]
    r = next(r for r in rows if r["question"] == "subject" and r["baseline"] == "naive")
    # dog: M M M B (3-1 -> method); teapot: M B B M (2-2 -> tie)
    assert r["n_raters"] == "4" and r["n_responses"] == "8" and r["n_prefer_method"] == "5"
    assert float(r["rate"]) == pytest.approx(0.625)
    lo, hi = analysis.wilson_interval(5, 8)
    assert float(r["ci_low"]) == pytest.approx(lo, rel=1e-5) and float(r["ci_high"]) == pytest.approx(hi, rel=1e-5)
    assert float(r["p_value"]) == pytest.approx(0.7265625, rel=1e-5)  # 2 * 93/256
    assert (r["n_pairs"], r["pairs_method"], r["pairs_baseline"], r["pairs_tied"]) == ("2", "1", "0", "1")
    assert float(r["pair_rate"]) == 1.0 and float(r["pair_p_value"]) == 1.0
    assert float(r["fleiss_kappa"]) == pytest.approx(-11 / 45, rel=1e-5) and r["kappa_items"] == "2"
    assert r["raters_kept"] == "4" and r["raters_dropped"] == "1"
    r2 = next(r for r in rows if r["question"] == "prompt" and r["baseline"] == "latent_nerf")
    assert (r2["n_responses"], r2["n_prefer_method"], r2["rate"], r2["pairs_method"]) == ("8", "8", "1", "2")
    assert float(r2["p_value"]) == pytest.approx(2 / 256)
    assert r2["fleiss_kappa"] == ""  # every vote for the method: kappa undefined
    pairs = _read_tsv(paths["pairs"])
    dog = next(p for p in pairs if p["question"] == "subject" and p["pair_id"] == "dog.plain.naive")
    tea = next(p for p in pairs if p["question"] == "subject" and p["pair_id"] == "teapot.plain.naive")
    assert (dog["votes_method"], dog["votes_baseline"], dog["majority"]) == ("3", "1", "method")
    assert (tea["votes_method"], tea["votes_baseline"], tea["majority"]) == ("2", "2", "tie")
    raters = {r["rater_id"]: r for r in _read_tsv(paths["raters"])}
    assert raters["r003"]["kept"] == "0" and raters["r003"]["reason"] == "failed_check"
    assert raters["r000"] == {"rater_id": "r000", "n_answers": "15", "n_pair_answers": "12", "checks_answered": "3",
                              "checks_correct": "3", "kept": "1", "reason": "ok"}


def test_attention_threshold_and_unverified_raters():
    rows = ([{"rater_id": "a", "kind": "check", "correct": 1}, {"rater_id": "a", "kind": "check", "correct": 0}]
            + [{"rater_id": "b", "kind": "pair", "correct": None}])
    strict = {r["rater_id"]: (r["kept"], r["reason"]) for r in analysis.rater_table(rows, 1.0)}
    lenient = {r["rater_id"]: (r["kept"], r["reason"]) for r in analysis.rater_table(rows, 0.5)}
    assert strict == {"a": (0, "failed_check"), "b": (0, "no_check_answered")}
    assert lenient == {"a": (1, "ok"), "b": (0, "no_check_answered")}


def test_analyse_without_responses_writes_empty_rates(study, tmp_path):
    out, _ = study
    paths = analysis.analyse(out, tmp_path / "u.tsv")
    rows = _read_tsv(paths["summary"])
    assert len(rows) == 6 and all(r["n_responses"] == "0" and r["rate"] == "" and r["ci_low"] == "" for r in rows)
    assert _read_tsv(paths["raters"]) == []


def test_analyse_reads_an_admin_tsv_export(study, tmp_path):
    out, m = study
    from db3d.userstudy.server import create_app

    app = create_app(out)
    store = app.extensions["db3d_store"]
    _answer_all(store, m, 0, lambda t: "method")
    tsv = app.test_client().get("/admin/export?format=tsv", headers={"X-Admin-Token": design.read_admin_token(out)})
    (tmp_path / "export.tsv").write_bytes(tsv.data)
    a = _read_tsv(analysis.analyse(out, tmp_path / "a.tsv")["summary"])
    b = _read_tsv(analysis.analyse(out, tmp_path / "b.tsv", responses=tmp_path / "export.tsv")["summary"])
    assert a == b and a[0]["n_responses"] == "2"


def _read_tsv(path: Path) -> list[dict]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


# ----------------------------------------------------------------------------- store
def test_store_wal_idempotent_duplicates_and_conflicts(study, tmp_path):
    _, m = study
    store = Store(tmp_path / "db.sqlite")
    assert store.journal_mode() == "wal"
    store.add_rater("r000", 0, "h0")
    t = design.rater_schedule(m, 0)[0]
    status, row = store.record_answer("r000", t, "left", 1200)
    assert status == "created" and row["choice"] == "left" and row["chosen"] == t["left"]["role"]
    # committed at once: another connection sees it
    other = sqlite3.connect(tmp_path / "db.sqlite")
    assert other.execute("SELECT COUNT(*) FROM responses").fetchone()[0] == 1
    assert store.record_answer("r000", t, "left", 999)[0] == "duplicate"
    status, row = store.record_answer("r000", t, "right", 5)
    assert status == "conflict" and row["choice"] == "left"  # the first answer stays
    assert other.execute("SELECT choice, client_ms FROM responses").fetchall() == [("left", 1200)]
    assert (tmp_path / "db.sqlite-wal").exists()
    other.close()
    store.close()


def test_store_resume_after_reopen(study, tmp_path):
    _, m = study
    trials = design.rater_schedule(m, 1)
    s1 = Store(tmp_path / "db.sqlite")
    s1.add_rater("r001", 1, "h1")
    for t in trials[:5]:
        s1.record_answer("r001", t, "left")
    s1.close()
    s2 = Store(tmp_path / "db.sqlite")
    assert s2.answered("r001") == {t["trial_id"] for t in trials[:5]}
    assert s2.add_rater("r001", 1, "h1") is False  # re-registering is a no-op
    s2.close()


def test_store_concurrent_duplicates_create_exactly_one_row(study, tmp_path):
    _, m = study
    store = Store(tmp_path / "db.sqlite")
    store.add_rater("r000", 0, "h0")
    t = design.rater_schedule(m, 0)[0]
    results, barrier = [], threading.Barrier(8)

    def worker():
        barrier.wait()
        results.append(store.record_answer("r000", t, "right")[0])

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(30)
    assert sorted(results) == ["created"] + ["duplicate"] * 7
    assert len(store.responses()) == 1
    store.close()


# ----------------------------------------------------------------------------- server (Flask test client)
@pytest.fixture
def app_study(tmp_path):
    from db3d.userstudy.server import create_app

    out, m = build(tmp_path, raters=3, pairs_per_rater=2)
    app = create_app(out)
    yield app, out, m
    app.extensions["db3d_store"].close()


def _tok(out, idx):
    return design.read_raters(out)[idx][1]


def test_rater_page_and_next_trial(app_study):
    app, out, m = app_study
    c = app.test_client()
    tok = _tok(out, 0)
    page = c.get(f"/r/{tok}")
    assert page.status_code == 200 and f'data-token="{tok}"' in page.get_data(as_text=True)
    assert page.headers["Cache-Control"] == "no-store" and page.headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["Referrer-Policy"] == "no-referrer"
    assert c.get("/r/" + "x" * 22).status_code == 404
    assert c.get("/r/bad!token").status_code == 404
    nxt = c.get(f"/api/r/{tok}/next")
    body = nxt.get_json()
    first = design.rater_schedule(m, 0)[0]
    assert body["answered"] == 0 and body["total"] == 9 and not body["done"]
    assert body["trial"]["trial_id"] == first["public_id"]
    for word in (b"dreambooth3d", b"naive", b"latent_nerf", b"corrupt"):
        assert word not in nxt.data
    media = c.get(body["trial"]["left"])
    assert media.status_code == 200 and media.mimetype == "image/gif"
    assert c.get("/static/rater.js").status_code == 200


def test_answers_are_idempotent_and_resume(app_study):
    from db3d.userstudy.server import create_app

    app, out, m = app_study
    c = app.test_client()
    tok = _tok(out, 1)
    trials = design.rater_schedule(m, 1)
    r = c.post(f"/api/r/{tok}/answer", json={"trial_id": trials[0]["public_id"], "choice": "left", "ms": 812})
    assert r.status_code == 200 and r.get_json()["status"] == "created"
    assert r.get_json()["answered"] == 1 and r.get_json()["trial"]["trial_id"] == trials[1]["public_id"]
    r = c.post(f"/api/r/{tok}/answer", json={"trial_id": trials[0]["public_id"], "choice": "left", "ms": 900})
    assert r.status_code == 200 and r.get_json()["status"] == "duplicate" and r.get_json()["answered"] == 1
    r = c.post(f"/api/r/{tok}/answer", json={"trial_id": trials[0]["public_id"], "choice": "right"})
    assert r.status_code == 409 and r.get_json()["choice"] == "left"
    # answering out of order is fine; the next trial is the first unanswered one
    c.post(f"/api/r/{tok}/answer", json={"trial_id": trials[2]["public_id"], "choice": "right"})
    app.extensions["db3d_store"].close()
    app2 = create_app(out)  # a server restart: the rater continues where they stopped
    body = app2.test_client().get(f"/api/r/{tok}/next").get_json()
    assert body["answered"] == 2 and body["trial"]["trial_id"] == trials[1]["public_id"]
    rows = app2.extensions["db3d_store"].responses()
    assert [(r["trial_id"], r["choice"], r["client_ms"]) for r in rows] == [
        (trials[0]["trial_id"], "left", 812), (trials[2]["trial_id"], "right", None)]
    app2.extensions["db3d_store"].close()
    # finishing: done, no trial
    app3 = create_app(out)
    c3 = app3.test_client()
    for t in trials:
        c3.post(f"/api/r/{tok}/answer", json={"trial_id": t["public_id"], "choice": "left"})
    body = c3.get(f"/api/r/{tok}/next").get_json()
    assert body == {"answered": 9, "total": 9, "done": True, "trial": None}
    app3.extensions["db3d_store"].close()


@pytest.mark.parametrize("kwargs,code", [
    ({"data": "trial_id=x&choice=left", "content_type": "application/x-www-form-urlencoded"}, 415),
    ({"data": "{not json", "content_type": "application/json"}, 400),
    ({"data": "[1, 2]", "content_type": "application/json"}, 400),
    ({"data": "null", "content_type": "application/json"}, 400),
    ({"json": {"trial_id": "TRIAL", "choice": "up"}}, 400),
    ({"json": {"trial_id": 5, "choice": "left"}}, 400),
    ({"json": {"trial_id": "", "choice": "left"}}, 400),
    ({"json": {"trial_id": "TRIAL", "choice": "left", "ms": -1}}, 400),
    ({"json": {"trial_id": "TRIAL", "choice": "left", "ms": True}}, 400),
    ({"data": '{"trial_id": "TRIAL", "choice": "left", "ms": NaN}', "content_type": "application/json"}, 400),
    ({"json": {"trial_id": "TRIAL", "choice": "left", "rater_id": "r002"}}, 400),
    ({"json": {"trial_id": "nope:subject", "choice": "left"}}, 404),
    ({"json": {"trial_id": "TRIAL", "choice": "left", "pad": "x" * 20000}}, 413),
    ({"data": "x" * (1 << 20), "content_type": "application/json"}, 413),
    # nested past the JSON parser's recursion limit (16 KB, under the size limit): RecursionError
    ({"data": '{"trial_id": ' + "[" * 8000 + "]" * 8000 + "}", "content_type": "application/json"}, 400),
    ({"data": "[" * 8000, "content_type": "application/json"}, 400),
    ({"data": b'{"trial_id": "\xff\xfe", "choice": "left"}', "content_type": "application/json"}, 400),
])
def test_malformed_and_oversized_answers_get_4xx(app_study, kwargs, code):
    app, out, m = app_study
    c = app.test_client()
    tok = _tok(out, 0)
    trial = design.rater_schedule(m, 0)[0]["public_id"]
    if "json" in kwargs:
        kwargs = {"json": {k: (trial if v == "TRIAL" else v) for k, v in kwargs["json"].items()}}
    elif isinstance(kwargs.get("data"), str):
        kwargs = dict(kwargs, data=kwargs["data"].replace("TRIAL", trial))
    r = c.post(f"/api/r/{tok}/answer", **kwargs)
    assert r.status_code == code
    assert r.is_json and r.get_json()["code"] == code and r.get_json()["error"]
    assert app.extensions["db3d_store"].responses() == []
    assert c.get(f"/api/r/{tok}/next").status_code == 200  # and the server keeps serving


def test_a_rater_cannot_write_into_another_session(app_study):
    app, out, m = app_study
    c = app.test_client()
    mine = {t["public_id"] for t in design.rater_schedule(m, 0)}
    foreign = next(t["public_id"] for t in design.rater_schedule(m, 1) if t["public_id"] not in mine)
    r = c.post(f"/api/r/{_tok(out, 0)}/answer", json={"trial_id": foreign, "choice": "left"})
    assert r.status_code == 404
    r = c.post("/api/r/" + "A" * 22 + "/answer", json={"trial_id": foreign, "choice": "left"})
    assert r.status_code == 404
    assert c.get(f"/api/r/{_tok(out, 0)}/answer").status_code == 405
    assert app.extensions["db3d_store"].responses() == []
    # a rater token is not an admin token, and no rater route shows results
    assert c.get(f"/admin/export?token={_tok(out, 0)}").status_code == 403
    assert c.get("/admin/export", headers={"X-Admin-Token": _tok(out, 0)}).status_code == 403


def test_admin_export_needs_the_token(app_study):
    app, out, m = app_study
    c = app.test_client()
    admin = design.read_admin_token(out)
    t = design.rater_schedule(m, 2)[0]
    c.post(f"/api/r/{_tok(out, 2)}/answer", json={"trial_id": t["public_id"], "choice": "right"})
    assert c.get("/admin/export").status_code == 401
    assert c.get("/admin/export?token=wrong").status_code == 403
    assert c.get("/admin/status").status_code == 401
    for kw in ({"query_string": {"token": admin}}, {"headers": {"X-Admin-Token": admin}},
               {"headers": {"Authorization": f"Bearer {admin}"}}):
        r = c.get("/admin/export", **kw)
        assert r.status_code == 200
        body = r.get_json()
        assert [x["trial_id"] for x in body["responses"]] == [t["trial_id"]]
        assert body["responses"][0]["chosen"] == t["right"]["role"] and len(body["raters"]) == 3
    tsv = c.get("/admin/export?format=tsv", headers={"X-Admin-Token": admin})
    assert tsv.mimetype == "text/tab-separated-values" and tsv.data.count(b"\n") == 2
    assert c.get("/admin/export?format=xml", headers={"X-Admin-Token": admin}).status_code == 400
    status = c.get("/admin/status", headers={"X-Admin-Token": admin}).get_json()
    assert [(r["rater_id"], r["answered"]) for r in status["raters"]] == [("r000", 0), ("r001", 0), ("r002", 1)]


def test_admin_creates_rater_links(app_study):
    app, out, m = app_study
    c = app.test_client()
    admin = {"X-Admin-Token": design.read_admin_token(out)}
    assert c.post("/admin/raters", json={"count": 2}).status_code == 401
    assert c.post("/admin/raters", json={"count": 0}, headers=admin).status_code == 400
    assert c.post("/admin/raters", json={"count": 2, "x": 1}, headers=admin).status_code == 400
    r = c.post("/admin/raters", json={"count": 2}, headers=admin)
    assert r.status_code == 201
    new = r.get_json()["raters"]
    assert [x["rater_id"] for x in new] == ["r003", "r004"]
    body = c.get(f"/api/r/{new[1]['token']}/next").get_json()
    assert body["trial"]["trial_id"] == design.rater_schedule(m, 4)[0]["public_id"]
    assert c.get(new[0]["link"]).status_code == 200


def test_media_route_serves_only_study_media(app_study):
    app, out, m = app_study
    c = app.test_client()
    name = Path(m["pairs"][0]["method"]["media"]).name
    r = c.get(f"/media/{name}")
    assert r.status_code == 200 and r.data == (out / "media" / name).read_bytes()
    for bad in ("/media/manifest.json", "/media/..%2Fmanifest.json", "/media/../raters.tsv",
                "/media/" + "0" * 20 + ".gif", "/raters.tsv", "/admin_token"):
        assert c.get(bad).status_code == 404, bad


def test_internal_errors_are_500_json_and_the_server_keeps_going(app_study, monkeypatch, caplog):
    app, out, m = app_study
    c = app.test_client()
    store = app.extensions["db3d_store"]
    tok, admin = _tok(out, 0), design.read_admin_token(out)

    def fail(secret):  # a bug whose message carries the secret the request came with
        def raise_(*a, **k):
            raise RuntimeError(f"disk on fire while serving {secret}")
        return raise_

    monkeypatch.setattr(store, "record_answer", fail(tok))
    monkeypatch.setattr(store, "progress", fail(admin))
    t = design.rater_schedule(m, 0)[0]
    with caplog.at_level(logging.DEBUG):
        r = c.post(f"/api/r/{tok}/answer", json={"trial_id": t["public_id"], "choice": "left"})
        assert r.status_code == 500 and r.get_json() == {"error": "internal error", "code": 500}
        assert c.get(f"/admin/status?token={admin}").status_code == 500
        assert c.post(f"/api/r/{tok}/answer", data="[" * 8000, content_type="application/json").status_code == 400
    logged = caplog.text
    assert "disk on fire" in logged and "/api/r/<token>/answer" in logged  # the error is logged ...
    assert tok not in logged and admin not in logged  # ... without a token
    assert c.get(f"/api/r/{tok}/next").status_code == 200


def test_the_answer_database_and_its_wal_files_are_owner_only(app_study, tmp_path):
    app, out, m = app_study
    c = app.test_client()
    t = design.rater_schedule(m, 0)[0]
    assert c.post(f"/api/r/{_tok(out, 0)}/answer", json={"trial_id": t["public_id"], "choice": "left"}).status_code == 200
    files = sorted(out.glob(design.DB_NAME + "*"))
    assert [f.name for f in files] == [design.DB_NAME, design.DB_NAME + "-shm", design.DB_NAME + "-wal"]
    assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
    # a database left world-readable by an older version is tightened when opened
    old = tmp_path / "old.sqlite"
    Store(old).close()
    old.chmod(0o644)
    Store(old).close()
    assert stat.S_IMODE(old.stat().st_mode) == 0o600


def test_answers_are_pinned_to_the_manifest(app_study):
    from db3d.userstudy.server import open_store

    app, out, m = app_study
    app.extensions["db3d_store"].close()
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["seed"] = 99
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(Db3dError, match="another manifest"):
        open_store(out)


# ----------------------------------------------------------------------------- CLI
def test_cli_build_and_analyse(tmp_path, capsys):
    from db3d.cli import main

    p = make_project(tmp_path)
    common = ["--data", str(p["data"]), "--prompts-table", str(p["prompts"]), "--subjects-table", str(p["subjects"])]
    out = tmp_path / "studies" / "cli"
    assert main(["userstudy", "build", "--runs", str(p["runs"]), "--setting", "seed~0", "--out", str(out),
                 "--raters", "2", "--seed", "3", "--check-kind", "noise"] + common) == 0
    m = design.load_manifest(out)
    assert m["seed"] == 3 and m["design"]["raters"] == 2 and m["attention_checks"][0]["kind"] == "noise"
    res = tmp_path / "results" / "userstudy.tsv"
    assert main(["userstudy", "analyse", "--study", str(out), "--out", str(res)]) == 0
    assert res.is_file() and (tmp_path / "results" / "userstudy_pairs.tsv").is_file()
    capsys.readouterr()
    assert main(["userstudy", "build", "--runs", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")] + common) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("db3d: error: ") and "does not exist" in err[0]
    assert main(["userstudy", "analyse", "--study", str(tmp_path / "none"), "--out", str(res)]) == 2
    assert main(["userstudy", "analyse", "--study", str(out), "--out", str(res), "--min-attention", "2"]) == 2
