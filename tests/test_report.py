"""The report builds from a small synthetic metrics table and a fake runs folder; the failure cases
are the known worst ones; the ablation tables are checked at planning time."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

# the repo root on sys.path when db3d is not installed (no conftest/pythonpath setting yet)
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

pypdf = pytest.importorskip("pypdf")
pytest.importorskip("typst")

from db3d import workflow as wf  # noqa: E402
from db3d.config import DEFAULT_CONFIG_PATH, merge_into  # noqa: E402
from db3d.errors import ConfigError  # noqa: E402
from db3d.eval.table import read_metrics  # noqa: E402
from db3d.report import build_report, paper  # noqa: E402
from db3d.report.common import VARIANT_ORDER  # noqa: E402
from db3d.report.stats import fmt_mean_se, mean_se  # noqa: E402
from db3d.report.groundtruth import (GT_METRICS, GT_MODEL, headline_sentence, paired_difference,  # noqa: E402
                                     judge, verdict)
from db3d.report.select import loss_divergence, primary_model, select_failure_cases  # noqa: E402

VARIANTS = ["latent_nerf", "naive", "dreambooth3d", "single_stage"]
SUBJECTS = ["dog", "teapot"]
CLIP = ["ViT-B-16", "ViT-B-32", "ViT-L-14"]
DINO = "dino-vits16"
MAIN = [("seed~0", 0), ("seed~1", 1)]
# the recon_weight sweep: two values x two seeds; evaluated for DreamBooth3D and the naive baseline
ABLATION = [(f"recon_weight~{w}/seed~{s}", s) for w in ("0.0", "10.0") for s in (0, 1)]
ABLATION_VARIANTS = ["dreambooth3d", "naive"]
# planted worst cases (the selection must find exactly these)
WORST_JANUS = ("seed~1", "teapot", "naive")          # DINO janus 0.95; others <= 0.3
DECOY_JANUS = ("seed~0", "dog", "naive")              # ViT-L-14 janus 0.99: not the primary model
LOWEST_DINO = ("seed~0", "dog", "single_stage")       # DINO-I 0.01; others >= 0.4
DECOY_CLIP_I = ("seed~0", "teapot", "latent_nerf")    # CLIP-I 0.0: DINO-I is preferred
NAN_LOSS = "runs/seed~1/dog/p0/naive/losses.json"     # a NaN loss: ranks first
BIG_RATIO = "runs/recon_weight~10.0/seed~1/teapot/p0/stage3/losses.json"  # loss grows x20
# ground truth (synthetic track): 3 variants x 2 subjects x 3 seeds, values with known verdicts.
GT_VARIANTS = ["dreambooth3d", "naive", "single_stage"]
GT_SEEDS = [0, 1, 2]
# a collapsed NeRF (the `collapsed` metric, db3d.eval.coverage) among the ground-truth runs, in the
# gallery's setting: it must be the first failure case, labelled wherever its images appear
COLLAPSED_RUN = ("seed~0", "teapot", "naive")
_E = [0.1, -0.1, 0.2, -0.2, 0.05, -0.05]     # run i = (subject, seed) in order: small noise, mean 0
_ALT = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]     # large noise, mean 0


def _gt_value(variant: str, metric: str, i: int) -> float:
    e, alt = _E[i], _ALT[i]
    table = {
        "dreambooth3d": {"psnr": 20 + e, "psnr_back": 16 + e, "ssim": 0.8, "silhouette_iou": 0.9 + e / 10,
                         "chamfer": float("nan") if i == 0 else 0.10 + e / 100, "janus_gt": 0.1,
                         "lpips": 0.2 + e / 10},
        # vs naive: better on PSNR, LPIPS, IoU, Janus (GT) (lower is better); worse on Chamfer (lower is better)
        "naive": {"psnr": 17 + e / 2, "psnr_back": 16 + alt, "ssim": 0.8, "silhouette_iou": 0.7,
                  "chamfer": 0.05, "janus_gt": 0.4 + e / 10, "lpips": 0.3},
        # vs single stage: better on back PSNR and Chamfer; worse on Janus (GT)
        "single_stage": {"psnr": 20 + alt, "psnr_back": 14.0, "ssim": 0.8, "silhouette_iou": 0.9 + alt / 10,
                         "chamfer": 0.2, "janus_gt": 0.0, "lpips": 0.2 + alt / 10},
    }
    return table[variant][metric]


SENTENCE_NAIVE = ("On the synthetic track, DreamBooth3D beats naive on PSNR, LPIPS, silhouette IoU, Janus (GT); is "
                  "worse on Chamfer distance; no clear difference on back-view PSNR, SSIM.")
SENTENCE_SINGLE = ("On the synthetic track, DreamBooth3D beats single stage on back-view PSNR, Chamfer distance; is "
                   "worse on Janus (GT); no clear difference on PSNR, SSIM, LPIPS, silhouette IoU.")


TINY_CONFIG = Path(DEFAULT_CONFIG_PATH).parent / "tiny.yaml"


def _tiny_default() -> dict:
    """The tiny track's config: config/config.yaml with config/tiny.yaml over it (as --configfile
    does; before the synthetic track became the default, config.yaml alone)."""
    cfg = yaml.safe_load(Path(DEFAULT_CONFIG_PATH).read_text())
    return merge_into(cfg, yaml.safe_load(TINY_CONFIG.read_text())) if TINY_CONFIG.is_file() else cfg


def _cfg(backend: str = "tiny") -> dict:
    cfg = _tiny_default()
    cfg["backend"] = backend
    cfg["report"] = {"title": "Synthetic <db3d> report #1 $x$ *bold*"}  # markup chars must come out verbatim
    cfg["seed"] = 0
    cfg["seeds"] = [0, 1]
    cfg["ablations"] = ["recon_weight"]
    return cfg


def _label(m: str, tiny: bool) -> str:
    return f"tiny-random({m})" if tiny else m


def _png(path: Path, color: tuple[int, int, int], size=(96, 64)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def _gif(path: Path, seed: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    frames = [Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)) for _ in range(8)]
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)


def _losses(path: Path, values: list[float], wall: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    steps = [{"step": i, "loss": (None if math.isnan(v) else v)} for i, v in enumerate(values)]
    path.write_text(json.dumps({"stage": path.parent.name, "steps": steps, "wall_time_s": wall}))


def _metric_rows(tiny: bool, full: bool, gt: bool = False) -> list[str]:
    """Long-format rows; `full` adds dino_i, clip_i and janus with the planted extremes, `gt` the
    ground-truth rows of the synthetic track (`_gt_value`, seeds 0-2)."""
    rng = np.random.default_rng(0)
    note = "random-weight models" if tiny else ""
    rows = ["subject\tprompt_id\tvariant\tsetting\tseed\tmetric\tmodel\tvalue\tnote"]
    cells = [(s, seed, v) for s, seed in MAIN for v in VARIANTS] + \
            [(s, seed, v) for s, seed in ABLATION for v in ABLATION_VARIANTS]
    for subject in SUBJECTS:
        for setting, seed, v in cells:
            run = (setting, subject, v)

            def add(metric, model, value):
                rows.append(f"{subject}\tp0\t{v}\t{setting}\t{seed}\t{metric}\t{_label(model, tiny)}\t{value:.6f}\t{note}")

            for m in CLIP:
                add("clip_r_precision", m, rng.uniform(0, 1))
                add("clip_t", m, rng.uniform(-0.1, 0.3))
                if full:
                    add("clip_i", m, 0.0 if (run == DECOY_CLIP_I and m == "ViT-B-32") else rng.uniform(0.4, 0.9))
                    add("janus", m, 0.99 if (run == DECOY_JANUS and m == "ViT-L-14") else rng.uniform(-0.3, 0.3))
            if full:
                add("dino_i", DINO, 0.01 if run == LOWEST_DINO else rng.uniform(0.4, 0.9))
                add("janus", DINO, 0.95 if run == WORST_JANUS else rng.uniform(-0.3, 0.3))
    if gt:
        for k, subject in enumerate(SUBJECTS):
            for seed in GT_SEEDS:
                i = k * len(GT_SEEDS) + seed
                for v in GT_VARIANTS:
                    for metric, *_ in GT_METRICS:
                        rows.append(f"{subject}\tp0\t{v}\tseed~{seed}\t{seed}\t{metric}\t{GT_MODEL}\t"
                                    f"{_gt_value(v, metric, i):.6f}\t")
                    dead = (f"seed~{seed}", subject, v) == COLLAPSED_RUN
                    rows.append(f"{subject}\tp0\t{v}\tseed~{seed}\t{seed}\tcoverage\topacity\t"
                                f"{0.004 if dead else 0.3:.6f}\tcollapsed below 0.02")
                    rows.append(f"{subject}\tp0\t{v}\tseed~{seed}\t{seed}\tcollapsed\topacity\t"
                                f"{1.0 if dead else 0.0:.6f}\tcollapsed below 0.02")
    return rows


def _fake_prior(folder: Path) -> str:
    """A fake models/toy: a sample grid (3 classes x 4 colours x front/back), train_log.json and a
    checkpoint whose sha256 the log records; returns that sha256."""
    import hashlib

    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (8 * 32, 3 * 32), (255, 255, 255))
    colours = [(200, 40, 40), (40, 160, 40), (40, 40, 200), (220, 180, 30)]
    for r in range(3):
        for c in range(8):
            img.paste(colours[c // 2], (c * 32 + 4 + 4 * r, r * 32 + 4, c * 32 + 28 - 4 * r, r * 32 + 28))
    img.save(folder / "samples.png")
    ckpt = b"fake safetensors bytes"
    (folder / "model.safetensors").write_bytes(ckpt)
    sha = hashlib.sha256(ckpt).hexdigest()
    curve = [[s, 1.0 / (1 + s / 50) + 0.05] for s in range(0, 1001, 50)]
    (folder / "train_log.json").write_text(json.dumps({
        "steps": 1000, "batch_size": 32, "num_images": 2400, "wall_time_s": 754.3, "device": "cpu", "threads": 2,
        "loss_curve": curve, "final_loss": curve[-1][1], "sha256": sha,
        "prior_cfg": {"resolution": 32, "num_images": 2400, "steps": 1000, "batch_size": 32}}))
    return sha


# the untrained-field reference (results/reference.tsv): PSNR 11 + e, the rest constant
def _reference_value(metric: str, i: int) -> float:
    return {"psnr": 11.0 + _E[i], "psnr_back": 10.0, "ssim": 0.5, "lpips": 0.6, "silhouette_iou": 0.6,
            "chamfer": 0.2, "janus_gt": 0.5}[metric]


def _fake_reference(path: Path) -> None:
    rows = ["subject\tprompt_id\tvariant\tsetting\tseed\tmetric\tmodel\tvalue\tnote"]
    for k, subject in enumerate(SUBJECTS):
        for seed in GT_SEEDS:
            for metric, *_ in GT_METRICS:
                value = _reference_value(metric, k * len(GT_SEEDS) + seed)
                rows.append(f"{subject}\t\tuntrained\tseed~{seed}\t{seed}\t{metric}\t{GT_MODEL}\t{value:.6f}\t")
    path.write_text("\n".join(rows) + "\n")


def _fake_inputs(root: Path, tiny: bool = True, full: bool = True, gt: bool = False) -> tuple[Path, Path]:
    metrics = root / "results" / "metrics.tsv"
    metrics.parent.mkdir(parents=True)
    metrics.write_text("\n".join(_metric_rows(tiny, full, gt)) + "\n")
    if gt:
        _fake_prior(root / "models" / "toy")
        _fake_reference(metrics.parent / "reference.tsv")

    runs = root / "runs"
    df = read_metrics(metrics)
    for i, (setting, subject, variant) in enumerate(sorted(set(zip(df["setting"], df["subject"], df["variant"])))):
        ev = runs / setting / subject / "p0" / "eval" / variant
        _gif(ev / "turntable.gif", i)
        pool = [f"a {s} on a beach" for s in SUBJECTS] + [f"a {s} in the snow" for s in SUBJECTS]
        (ev / "retrieval_pool.json").write_text(json.dumps({"prompt": f"a sks {subject}", "pool": pool}))
        (ev / "eval_info.json").write_text(json.dumps({"azimuth_deg": [0, 45, 90, 135, -180, -135, -90, -45],
                                                       "timing_s": {"total": 2.0}}))
        # every stage folder this run's NeRF went through, where db3d.workflow says it is
        for stage in wf.VARIANT_STAGES[variant]:
            rel = wf.stage_file(setting, stage, subject, "p0", which=1)
            if rel is None or (root / rel).exists():
                continue
            ramp = [100.0 - i for i in range(40)]  # decreasing: ratio < 1
            _losses(root / rel, ramp, 10.0 + len(rel) % 7)
        for stage in ("stage1", "stage3"):
            png = root / wf.stage_dir(setting, stage, subject, "p0") / stage / "turntable.png"
            if not png.exists():
                _png(png, (40, 40, 200), (128, 16))
        pv = root / wf.stage_dir(setting, "stage2", subject, "p0") / "stage2" / "pseudo_views.png"
        if not pv.exists():
            _png(pv, (120, 120, 120), (128, 32))
    _losses(root / NAN_LOSS, [100.0] * 20 + [float("nan")] + [100.0] * 19, 11.0)
    _losses(root / BIG_RATIO, [10.0] * 10 + [50.0] * 20 + [200.0] * 10, 12.0)
    for setting in sorted(set(df["setting"])):
        (runs / setting).mkdir(parents=True, exist_ok=True)
        (runs / setting / "config.json").write_text(json.dumps({"backend": "tiny", "setting": setting}))
    for k, subject in enumerate(SUBJECTS):
        for j in range(3):
            _png(root / "data" / "subjects" / subject / "images_64" / f"{j:02d}.png", (200, 60 * j, 40 * k), (64, 64))
    # user study: docs/userstudy.md columns; subject vs naive = 7 of 10 (Wilson [0.396778, 0.892209])
    us = ["question\tquestion_text\tbaseline\tbaseline_name\traters_kept\traters_dropped\tn_raters\tn_responses\t"
          "n_prefer_method\trate\tci_low\tci_high\tp_value\tn_pairs\tpairs_method\tpairs_baseline\tpairs_tied\t"
          "pair_rate\tpair_ci_low\tpair_ci_high\tpair_p_value\tfleiss_kappa\tkappa_items"]
    for q in ("subject", "consistency", "prompt"):
        for b, name in (("latent_nerf", "Latent-NeRF"), ("naive", "DreamBooth+Fusion")):
            if (q, b) == ("subject", "naive"):
                us.append(f"{q}\tWhich?\t{b}\t{name}\t5\t1\t5\t10\t7\t0.7\t0.396778\t0.892209\t0.34375\t2\t2\t0\t0\t"
                          "1\t0.342372\t1\t0.5\t0.2099\t2")
            else:
                us.append(f"{q}\tWhich?\t{b}\t{name}\t5\t1\t5\t10\t5\t0.5\t0.236593\t0.763407\t1\t2\t1\t1\t0\t"
                          "0.5\t0.094531\t0.905469\t1\t\t2")
    (root / "results" / "userstudy.tsv").write_text("\n".join(us) + "\n")
    return metrics, runs


def _pages_text(pdf: Path) -> list[str]:
    return [" ".join(p.extract_text().split()) for p in pypdf.PdfReader(str(pdf)).pages]


def _first_page_with(pages: list[str], needle: str, start: int = 1) -> int:
    """First page (after the title page, whose outline names every section) containing needle."""
    hits = [i for i, t in enumerate(pages) if i >= start and needle.lower() in t.lower()]
    assert hits, f"{needle!r} not found in the PDF text"
    return hits[0]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    metrics, runs = _fake_inputs(root)
    return root, metrics, runs


@pytest.fixture(scope="module")
def built(synthetic):
    root, metrics, runs = synthetic
    out = build_report(_cfg("tiny"), metrics, runs, root / "reports" / "main.pdf")
    return out, _pages_text(out), root / "reports" / "build" / "main"


def _toy_cfg() -> dict:
    cfg = _cfg("toy")
    cfg["models"]["toy"] = "models/toy"        # relative: beside the runs folder
    cfg["seeds"] = GT_SEEDS
    return cfg


@pytest.fixture(scope="module")
def toy_built(tmp_path_factory):
    """The synthetic track: backend toy, ground-truth rows (seeds 0-2) and a fake models/toy."""
    root = tmp_path_factory.mktemp("toy")
    metrics, runs = _fake_inputs(root, gt=True)
    out = build_report(_toy_cfg(), metrics, runs, root / "reports" / "main.pdf")
    return root, metrics, out, _pages_text(out), root / "reports" / "build" / "main"


def test_report_pages_and_tables(built, synthetic):
    out, pages, _ = built
    root, metrics, _ = synthetic
    assert out.is_file() and out.read_bytes().startswith(b"%PDF")
    text = "\n".join(pages)
    # title page: title verbatim (markup characters not interpreted) and the random-weight warning
    assert "Synthetic <db3d> report #1 $x$ *bold*" in pages[0]
    assert "random-weight models and mean nothing" in pages[0]
    # sections in order, each on its own page(s)
    order = [_first_page_with(pages, h) for h in ("CLIP R-Precision (R@1)", "Ablation: recon_weight",
                                                    "Highest loss divergence", "prefer DreamBooth3D", "Subject: dog",
                                                    "Subject: teapot", "Resolved configs")]
    assert order == sorted(order) and len(set(order)) == len(order), order
    # main table: paper column (n/a: never a made-up number), models, variants
    for needle in ("paper ViT-B/16", "paper ViT-L/14", "tiny-random(ViT-B-16)", "Latent-NeRF", "DreamBooth+Fusion",
                   "DreamBooth3D", *VARIANTS):
        assert needle in text, needle
    # the paper's Table 1 (config/paper_results.yaml), cited; Latent-NeRF has no row there
    main = pages[_first_page_with(pages, "CLIP R-Precision (R@1)")]
    for v in ("0.509", "0.490", "0.506", "0.783", "0.710", "0.797"):
        assert v in main, v
    assert "not reported" in main and "Table 1" in main and "arXiv 2303.13508" in text
    assert "does not publish its retrieval pool" in text and "Ours is published with every evaluation" in text
    assert "4 prompts: every eval3d prompt" in text
    # one mean ± s.e. by hand: DreamBooth3D, R@1, ViT-B-16, over the seed~N settings only (n = 4)
    df = read_metrics(metrics)
    vals = df[(df["variant"] == "dreambooth3d") & (df["metric"] == "clip_r_precision")
              & (df["model"] == "tiny-random(ViT-B-16)") & df["setting"].str.fullmatch(r"seed~\d+")]["value"]
    mean, se, n = mean_se(vals.tolist())
    assert n == 4 and f"{mean:.3f} ± {se:.3f}" in pages[_first_page_with(pages, "CLIP R-Precision (R@1)")]
    # fidelity and Janus tables (present in this table)
    results = " ".join(pages[1:order[1]])
    assert "Subject fidelity (DINO-I, CLIP-I)" in results and "DINO-I dino-vits16" in results
    assert "Janus score" in results and "CLIP-I ViT-L-14" in results
    # ablation: one table row per value x dependent variant; naive does not depend on recon_weight
    abl = pages[order[1]]
    assert "recon_weight = 0.0" in abl and "recon_weight = 10.0" in abl and "stage3.recon_weight" in abl
    assert "not shown (their NeRF does not depend on it): naive" in abl
    assert "Seeds per cell: 2 (0, 1). Fewer than 3" in abl
    # user study table from results/userstudy.tsv (7 of 10 with its Wilson interval)
    us = pages[order[3]]
    assert "0.70 [0.40, 0.89]" in us and "No responses yet" not in text
    # galleries: photos, stage rows, variants; provenance
    dog = pages[order[4]]
    for needle in ("Input photos", "Initial NeRF (stage 1)", "Pseudo views (stage 2)", "Final NeRF (DreamBooth3D)",
                   "Naive baseline", "prompt: a sks dog"):
        assert needle in dog, needle
    assert len(pypdf.PdfReader(str(out)).pages[order[4]].images) >= 6
    prov = " ".join(pages[order[6] - 1:])
    assert "recon_weight~10.0/seed~1" in prov and "dreambooth_multiview" in prov and "evaluate" in prov
    # no ground-truth rows, not the toy backend: no synthetic-track sections
    assert "Ground-truth metrics" not in text and "Trained prior" not in text and "Headline" not in text


# ----------------------------------------------------------------------------- synthetic track
def _gt_df(rows: list[tuple]) -> "pd.DataFrame":
    import pandas as pd

    return pd.DataFrame(rows, columns=["setting", "subject", "prompt_id", "seed", "variant", "metric", "value"])


def test_verdict_rule_and_direction():
    assert verdict(1.0, 5, True, True) == "better"
    assert verdict(-1.0, 5, True, True) == "worse"
    assert verdict(-1.0, 5, True, False) == "better"       # lower is better: a negative difference wins
    assert verdict(1.0, 5, True, False) == "worse"
    assert verdict(1.0, 5, False, True) == "no clear difference"   # not rejected: no claim
    assert verdict(float("nan"), 0, False, True) == "no data"


def test_judge_holds_the_family_not_each_comparison():
    """Two comparisons at p = 0.03 each: alone each is a verdict, together (Holm) neither is."""
    res = [{"metric": "psnr", "mean": 1.0, "n": 9, "higher": True, "p": 0.03},
           {"metric": "chamfer", "mean": 1.0, "n": 9, "higher": False, "p": 0.03}]
    assert [judge([dict(r)])[0]["verdict"] for r in res] == ["better", "worse"]
    both = judge([dict(r) for r in res])
    assert [r["verdict"] for r in both] == ["no clear difference"] * 2
    assert [r["p_holm"] for r in both] == pytest.approx([0.06, 0.06])


def test_paired_difference_matches_runs_and_drops_nan():
    rows = []
    a = {0: 3.0, 1: 5.0, 2: 4.0, 3: float("nan"), 4: 9.0}   # seed 4 has no baseline run: unpaired
    b = {0: 1.0, 1: 2.0, 2: 2.0, 3: 1.0, 5: 0.0}             # seed 5 has no method run
    for seed, v in a.items():
        rows.append((f"seed~{seed}", "mug", "plain", seed, "dreambooth3d", "chamfer", v))
    for seed, v in b.items():
        rows.append((f"seed~{seed}", "mug", "plain", seed, "naive", "chamfer", v))
    rows.append(("seed~0", "mug", "plain", 0, "naive", "psnr", 99.0))  # another metric: ignored
    df = _gt_df(rows)
    r = paired_difference(df, "chamfer", "dreambooth3d", "naive")
    diffs = [2.0, 3.0, 2.0]                                  # seeds 0-2; seed 3 NaN dropped
    mean, se, n = mean_se(diffs)
    assert (r["n"], r["dropped"]) == (3, 1) and r["mean"] == pytest.approx(mean) and r["se"] == pytest.approx(se)
    # chamfer: lower is better, the method's is higher by 2.33 +- 0.33 (t = 7, 2 d.o.f., p = 0.02) -> worse
    assert r["p"] == pytest.approx(0.0198, abs=1e-4)
    assert r["higher"] is False and r["verdict"] == "worse"
    assert paired_difference(df, "chamfer", "dreambooth3d", "naive", higher_is_better=True)["verdict"] == "better"
    # pairs are matched on subject too: the same seed of another subject is not a pair
    df2 = _gt_df(rows + [("seed~0", "house", "plain", 0, "dreambooth3d", "chamfer", 100.0)])
    assert paired_difference(df2, "chamfer", "dreambooth3d", "naive")["n"] == 3
    none = paired_difference(df, "ssim", "dreambooth3d", "naive")
    assert none["n"] == 0 and none["verdict"] == "no data"


def test_headline_sentences_from_the_fixture(tmp_path):
    from db3d.report.groundtruth import gt_rows

    metrics = tmp_path / "metrics.tsv"
    metrics.write_text("\n".join(_metric_rows(True, False, gt=True)) + "\n")
    gt = gt_rows(read_metrics(metrics))
    for baseline, sentence in (("naive", SENTENCE_NAIVE), ("single_stage", SENTENCE_SINGLE)):
        res = [paired_difference(gt, m, "dreambooth3d", baseline) for m, *_ in GT_METRICS]
        assert headline_sentence(res, baseline) == sentence
        chamfer = next(r for r in res if r["metric"] == "chamfer")
        assert (chamfer["n"], chamfer["dropped"]) == (5, 1)      # the NaN run of DreamBooth3D
        assert all(r["n"] == 6 for r in res if r["metric"] != "chamfer")
    assert headline_sentence([], "naive") == \
        "On the synthetic track, DreamBooth3D and naive have no matched ground-truth runs."
    only_worse = [{"metric": "psnr", "verdict": "worse"}, {"metric": "ssim", "verdict": "no clear difference"}]
    assert headline_sentence(only_worse, "naive") == \
        "On the synthetic track, DreamBooth3D is worse than naive on PSNR; no clear difference on SSIM."


def test_toy_report_groundtruth_and_prior(toy_built):
    root, metrics, out, pages, build_dir = toy_built
    text = " ".join(pages)
    sha = json.loads((root / "models" / "toy" / "train_log.json").read_text())["sha256"]
    # title page: the toy note (trained prior + its hash, synthetic world, random CLIP/DINO), the headline
    title = pages[0]
    assert "mean nothing about the method" in title and "random-weight models and mean nothing" not in title
    for needle in ("small text-to-image model trained on synthetic renders", f"checkpoint sha256 {sha[:16]}",
                   "not real photographs", "random-weight stand-ins",
                   "DreamBooth3D vs naive (n = 5/6 runs): better on PSNR, LPIPS, silhouette IoU, Janus (GT); worse "
                   "on Chamfer distance; no clear difference on back-view PSNR, SSIM.",
                   "two-sided paired t-test per comparison", "family of 12 comparisons (family-wise α = 0.05); "
                   "n = 5/6 pairs"):  # the rule, alpha, the family and n; PDF text breaks "Holm-corrected"
        assert needle in title, (needle, title)
    # sections: ground truth, then the prior, then the CLIP results
    order = [_first_page_with(pages, h) for h in ("Ground-truth metrics (synthetic track)", "Trained prior (toy",
                                                    "CLIP R-Precision (R@1)")]
    assert order == sorted(order) and len(set(order)) == 3, order
    gt_text = " ".join(pages[order[0]:order[1]])
    # per-variant table: hand-computed mean +- s.e. with n, arrows in the header
    df = read_metrics(metrics)
    gt = df[df["model"] == GT_MODEL]
    for variant, metric in (("dreambooth3d", "psnr"), ("naive", "janus_gt"), ("single_stage", "silhouette_iou"),
                            ("dreambooth3d", "chamfer")):
        mean, se, n = mean_se(gt[(gt["variant"] == variant) & (gt["metric"] == metric)]["value"].tolist())
        assert f"{mean:.3f} ± {se:.3f}" in gt_text, (variant, metric)
    assert "PSNR ↑" in gt_text and "Chamfer distance ↓" in gt_text and "Janus (GT) ↓" in gt_text
    # the headline: paired rows (NaN run dropped), verdicts, the generated sentences
    for baseline, expect in (("naive", 0.05), ("single_stage", -0.1)):      # chamfer: worse, then better
        r = paired_difference(gt, "chamfer", "dreambooth3d", baseline)
        assert r["mean"] == pytest.approx(expect, abs=1e-3) and r["n"] == 5
        assert f"{fmt_mean_se(r['mean'], r['se'], r['n'])} 5 (1 dropped)" in gt_text
    assert SENTENCE_NAIVE in gt_text and SENTENCE_SINGLE in gt_text
    assert "p (Holm)" in gt_text and "Holm" in gt_text and "family-wise" in gt_text
    # the untrained-field reference row: under the variants, hand-computed, never in the headline
    mean, se, n = mean_se([_reference_value("psnr", i) for i in range(len(SUBJECTS) * len(GT_SEEDS))])
    assert "Untrained field (reference)" in gt_text and f"{mean:.3f} ± {se:.3f}" in gt_text and n == 6
    assert "between failures" in gt_text
    # per subject: both subjects, n = 3 seeds
    mean, se, n = mean_se(gt[(gt["variant"] == "naive") & (gt["metric"] == "psnr") & (gt["subject"] == "teapot")]
                          ["value"].tolist())
    assert n == 3 and f"{mean:.3f} ± {se:.3f}" in gt_text and "Per subject" in gt_text
    # the trained prior: samples, caption from train_log.json, loss curve, config
    prior = " ".join(pages[order[1]:order[2]])
    assert ("Trained for 1000 steps at batch size 32 on 2400 synthetic renders in 754 s (12.6 min) on cpu "
            "(2 threads); final loss 0.0976") in prior
    assert f"checkpoint sha256 {sha[:16]}" in prior and "Training loss of the toy prior" in prior
    assert len(pypdf.PdfReader(str(out)).pages[order[1]].images) >= 2
    for f in ("fig/groundtruth.png", "fig/prior_loss.png", "img/prior_samples.png"):
        assert (build_dir / f).is_file(), f
    # provenance: the checkpoint hash (checked against the file), steps and wall time
    prov = text[text.rfind("Provenance"):]
    assert f"{sha} (train_log.json; matches model.safetensors)" in prov
    assert "toy prior training 1000 steps" in prov and "wall time 754 s" in prov
    assert "toy prior trained on synthetic renders (models/toy" in prov
    # CLIP results carry the stand-in note
    assert "Backend toy: CLIP and DINO metrics from random-weight stand-ins" in pages[order[2]]


def test_toy_report_pages_render(toy_built):
    """The new pages rasterise (Typst's PNG export of the same document; no poppler needed)."""
    import io

    import typst
    from PIL import Image

    _, _, _, pages, build_dir = toy_built
    pngs = typst.compile(str(build_dir / "main.typ"), root=str(build_dir), format="png", ppi=60,
                         ignore_system_fonts=True)
    assert isinstance(pngs, list) and len(pngs) == len(pages)
    # coloured pixels (text is black): the markers of the metric plot, the sample grid
    for needle, least in (("Ground-truth metrics per variant:", 50), ("Samples of the trained", 1000)):
        arr = np.asarray(Image.open(io.BytesIO(pngs[_first_page_with(pages, needle)])).convert("RGB")).astype(int)
        assert ((arr.max(axis=-1) - arr.min(axis=-1)) > 60).sum() > least, needle


def test_toy_report_is_reproducible(toy_built):
    root, metrics, out, _, _ = toy_built
    again = build_report(_toy_cfg(), metrics, root / "runs", root / "again" / "main.pdf")
    assert again.read_bytes() == out.read_bytes()


def test_toy_report_without_prior_or_ground_truth(tmp_path):
    metrics = tmp_path / "metrics.tsv"
    metrics.write_text("subject\tprompt_id\tvariant\tsetting\tseed\tmetric\tmodel\tvalue\tnote\n")
    cfg = _cfg("toy")
    cfg["models"]["toy"] = str(tmp_path / "no-prior")
    text = " ".join(_pages_text(build_report(cfg, metrics, tmp_path / "runs", tmp_path / "main.pdf")))
    assert f"{tmp_path / 'no-prior'}/samples.png does not exist" in text
    assert "checkpoint hash unknown" in text and "Ground-truth metrics" not in text


def test_every_figure_and_image_exists(built):
    _, _, build_dir = built
    data = json.loads((build_dir / "data.json").read_text())
    paths: list[str] = []

    def walk(x):
        if isinstance(x, dict):
            for k, v in x.items():
                if k in ("path", "figure") and isinstance(v, str):
                    paths.append(v)
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(data)
    assert len(paths) >= 20
    for p in paths:
        assert (build_dir / p).is_file() and (build_dir / p).stat().st_size > 0, p
    figs = {p for p in paths if p.startswith("fig/")}
    assert {"fig/metrics.png", "fig/ablation_01.png", "fig/userstudy.png"} <= figs
    assert any(p.startswith("fig/loss_") for p in figs)
    # every failure case carries images, and the ablation its image rows
    assert all(f["rows"] for f in data["failures"]) and data["ablations"][0]["strips"]


def test_failure_cases_pick_the_known_worst(synthetic, built, tmp_path):
    root, metrics, runs = synthetic
    df = read_metrics(metrics)
    # the fixture's CLIP/DINO are tiny-random(...) stand-ins: they choose nothing, only the losses do
    assert [c.kind for c in select_failure_cases(df, runs)] == ["divergence"]
    # the same table read as real models: the planted worst Janus and fidelity
    cases = {c.kind: c for c in select_failure_cases(df, runs, stand_in=False)}
    assert set(cases) == {"janus", "fidelity", "divergence"}
    j, f, d = cases["janus"], cases["fidelity"], cases["divergence"]
    assert (j.setting, j.subject, j.variant, j.model) == (*WORST_JANUS, "tiny-random(dino-vits16)")
    assert j.value == pytest.approx(0.95)
    assert (f.setting, f.subject, f.variant) == LOWEST_DINO and f.value == pytest.approx(0.01)
    assert d.detail == NAN_LOSS and "1 of 40 steps non-finite" in d.metric
    # the PDF names the loss case and not the stand-ins' cases
    _, pages, _ = built
    page = pages[_first_page_with(pages, "Highest loss divergence")]
    assert "setting seed~1, subject dog, prompt p0, variant naive" in page
    assert "Worst Janus score" not in " ".join(pages) and "Lowest subject fidelity" not in " ".join(pages)
    # without the NaN run, the largest last/first-quarter ratio wins (200 / 10)
    good = [100.0 - i for i in range(40)]
    (root / NAN_LOSS).write_text(json.dumps({"steps": [{"loss": v} for v in good]}))
    try:
        d = {c.kind: c for c in select_failure_cases(df, runs)}["divergence"]
    finally:
        _losses(root / NAN_LOSS, [100.0] * 20 + [float("nan")] + [100.0] * 19, 11.0)
    assert d.detail == BIG_RATIO and d.value == pytest.approx(20.0)
    assert (d.setting, d.subject, d.variant, d.stage) == ("recon_weight~10.0/seed~1", "teapot", "dreambooth3d", "stage3")


def test_loss_divergence_and_primary_model():
    assert loss_divergence([4, 4, 2, 2, 1, 1, 1, 1]) == {"ratio": 0.25, "nonfinite": 0, "steps": 8, "finite": 8}
    d = loss_divergence([1.0, float("inf"), 2.0, float("nan")])
    assert d["nonfinite"] == 2 and d["ratio"] == math.inf  # last quarter has no finite loss
    assert loss_divergence([1.0]) is None
    assert primary_model(["tiny-random(ViT-B-32)", "tiny-random(dino-vits16)", "tiny-random(ViT-L-14)"]) == \
        "tiny-random(dino-vits16)"
    assert primary_model(["ViT-B-32", "ViT-L-14", "ViT-B-16"]) == "ViT-L-14"


def test_report_is_reproducible_and_real_backend_has_no_warning(tmp_path):
    # an older metrics table: CLIP metrics only -> no fidelity/Janus tables, no Janus/fidelity failure
    metrics, runs = _fake_inputs(tmp_path, tiny=False, full=False)
    (tmp_path / "results" / "userstudy.tsv").unlink()
    cfg = _cfg("sd")
    bytes_a = build_report(cfg, metrics, runs, tmp_path / "a" / "main.pdf").read_bytes()
    # no clock, no paths: another output folder gives the same bytes
    bytes_b = build_report(cfg, metrics, runs, tmp_path / "b" / "main.pdf").read_bytes()
    assert bytes_a == bytes_b
    text = "\n".join(_pages_text(tmp_path / "b" / "main.pdf"))
    assert "mean nothing" not in text and "tiny-random" not in text and "ViT-B-16" in text
    assert "Subject fidelity (DINO-I" not in text and "Janus score (" not in text and "Worst Janus" not in text
    assert "Highest loss divergence" in text and "No responses yet" in text
    # ablation cells stay out of the main table (n = 2 subjects x 2 seeds)
    main = text.split("CLIP-T (mean cosine")[0]
    assert "recon_weight" not in main.split("Variant")[1] and "latent_nerf 4 " in main


def test_report_fonts_are_embedded(built):
    out, _, _ = built
    reader = pypdf.PdfReader(str(out))
    fonts = {}
    for page in reader.pages:
        for _, ref in (page["/Resources"].get("/Font") or {}).items():
            f = ref.get_object()
            desc = f["/DescendantFonts"][0].get_object() if "/DescendantFonts" in f else f
            fd = desc.get("/FontDescriptor")
            fonts[str(f["/BaseFont"])] = fd is not None and any(k in fd.get_object() for k in
                                                                 ("/FontFile", "/FontFile2", "/FontFile3"))
    assert fonts and all(fonts.values()), fonts


def test_variant_order_matches_paper_table():
    assert VARIANT_ORDER[:3] == ["latent_nerf", "naive", "dreambooth3d"]
    assert paper.r_precision("dreambooth3d", "tiny-random(ViT-L-14)") == pytest.approx(0.797)
    assert paper.r_precision("latent_nerf", "ViT-B-16") == paper.NOT_REPORTED
    assert paper.fmt_paper(paper.r_precision("naive", "ViT-B-32")) == "0.490"


def test_report_without_results_yet(tmp_path):
    metrics = tmp_path / "metrics.tsv"
    metrics.write_text("subject\tprompt_id\tvariant\tsetting\tseed\tmetric\tmodel\tvalue\tnote\n")
    out = build_report(_cfg("tiny"), metrics, tmp_path / "no-runs", tmp_path / "main.pdf")
    text = " ".join(_pages_text(out))
    assert "No rendered views were found" in text and "No responses yet" in text
    assert "No ablation cells in the metrics table" in text and "No failure case could be chosen" in text
    assert "tiny-random(ViT-B-32)" in text and "mean nothing" in text


# ----------------------------------------------------------------------------- ablation tables
def test_shipped_ablation_tables_are_valid_on_their_configs():
    tiny = _tiny_default()
    paper = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    paper = merge_into(yaml.safe_load(Path(DEFAULT_CONFIG_PATH).read_text()), paper)
    names = sorted(p.stem for p in (REPO / "ablations").glob("*.tsv"))
    assert {"partial_steps", "partial_steps_tiny", "recon_weight", "noise_level", "pseudo_views", "multiview_steps",
            "guidance_scale"} <= set(names)
    for name in names:
        wf.check_ablations(dict(paper, ablations=[name]), REPO / "ablations")
        if name != "partial_steps":
            wf.check_ablations(dict(tiny, ablations=[name]), REPO / "ablations")
    # the paper-scale partial_steps table on the tiny default: one line naming the fix
    with pytest.raises(ConfigError) as e:
        wf.check_ablations(dict(tiny, ablations=["partial_steps"]), REPO / "ablations")
    msg = str(e.value)
    assert "\n" not in msg and "partial_steps 150, 300, 800 exceed dreambooth.full_steps (60)" in msg
    assert "config/paper.yaml" in msg and "partial_steps_tiny" in msg
    with pytest.raises(ConfigError, match="no table .*ablations/nosuch.tsv"):
        wf.check_ablations(dict(tiny, ablations=["nosuch"]), REPO / "ablations")
    # paper's values: 800 = the full DreamBooth (naive case); the tiny table ends at the tiny full_steps
    assert wf.ablation_settings(dict(paper, ablations=["partial_steps"]), REPO / "ablations")[-3:] == \
        ["partial_steps~800/seed~0", "partial_steps~800/seed~1", "partial_steps~800/seed~2"]
    assert f"partial_steps~{tiny['dreambooth']['full_steps']}/seed~0" in \
        wf.ablation_settings(dict(tiny, ablations=["partial_steps_tiny"]), REPO / "ablations")


def test_bad_cells_are_caught_with_one_line(tmp_path):
    tiny = _tiny_default()
    (tmp_path / "bad_noise.tsv").write_text("noise_level\n0.5\n1.5\n")
    (tmp_path / "bad_column.tsv").write_text("no_such_knob\n1\n")
    with pytest.raises(ConfigError, match=r"bad_noise.tsv: cell noise_level~1.5/seed~0: .*noise_level"):
        wf.check_ablations(dict(tiny, ablations=["bad_noise"]), tmp_path)
    with pytest.raises(ConfigError, match="bad_column.tsv: cell no_such_knob~1/seed~0: unknown config key"):
        wf.check_ablations(dict(tiny, ablations=["bad_column"]), tmp_path)


def test_report_inputs_reuse_upstream_stages():
    cfg = dict(_tiny_default(), ablations=["recon_weight"])
    settings = wf.main_settings(cfg) + wf.ablation_settings(cfg, REPO / "ablations")
    inputs = wf.report_inputs(cfg, settings)
    assert inputs == sorted(set(inputs))
    assert "runs/seed~0/dog/dreambooth/losses.json" in inputs
    assert "runs/recon_weight~0.0/seed~0/dog/plain/stage3/losses.json" in inputs
    assert "runs/recon_weight~0.0/seed~0/dog/plain/eval/dreambooth3d/turntable.gif" in inputs
    # the weight does not reach the baselines: their main-run evaluation stands for the cell
    assert "runs/recon_weight~0.0/seed~0/dog/plain/eval/naive/turntable.gif" not in inputs
    # the sweep reads no DreamBooth, stage-1, stage-2 or baseline NeRF of its own
    for p in inputs:
        if p.startswith("runs/recon_weight"):
            assert "/eval/" in p or "/stage3/" in p, p
    # no variant outside config["variants"] is asked for
    only = dict(cfg, variants=["dreambooth3d"])
    assert not any("/naive/" in p or "latent_nerf" in p for p in wf.report_inputs(only, settings))


def test_dry_run_stops_on_the_paper_scale_table_in_one_line():
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    tiny = ["--configfile", str(TINY_CONFIG.relative_to(REPO))] if TINY_CONFIG.is_file() else []
    res = subprocess.run([sys.executable, "-m", "snakemake", "reports/main.pdf", "-n", *tiny, "--config",
                          "ablations=[partial_steps]"], cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 1
    last = (res.stdout + res.stderr).strip().splitlines()[-1]
    assert last.startswith("db3d: error: ablations/partial_steps.tsv: partial_steps 150, 300, 800 exceed"), last
    assert "Traceback" not in res.stdout + res.stderr


# ----------------------------------------------------------------------------- issue 21: the outputs a reader trusts
def _squash(text: str) -> str:
    """PDF text without whitespace (pypdf breaks table cells across lines where Typst wraps them)."""
    return "".join(text.split())


def test_collapsed_run_is_the_first_failure_case_and_labelled(toy_built):
    root, metrics, out, pages, build_dir = toy_built
    data = json.loads((build_dir / "data.json").read_text())
    kinds = [f["kind"] for f in data["failures"]]
    assert kinds[0] == "collapsed" and kinds[1:4] == ["groundtruth"] * 3, kinds
    setting, subject, variant = COLLAPSED_RUN
    first = data["failures"][0]
    assert first["run"] == f"setting {setting}, subject {subject}, prompt p0, variant {variant}"
    assert "(collapsed: empty NeRF)" in first["rows"][-1]["label"]
    # the ground-truth cases skip the collapsed run: worst Janus (GT) is naive on dog, seed 2 (0.42)
    gt_cases = {f["title"]: f for f in data["failures"] if f["kind"] == "groundtruth"}
    assert gt_cases["Worst Janus (GT)"]["run"] == "setting seed~2, subject dog, prompt p0, variant naive"
    assert gt_cases["Worst Janus (GT)"]["value"] == "0.42"
    assert gt_cases["Worst back-view PSNR"]["value"] == "14"
    assert not any(COLLAPSED_RUN[1] in f["run"] and f"variant {variant}" in f["run"] and setting in f["run"]
                   for f in gt_cases.values())
    # in the PDF: the case and the label, in the failure cases and in the teapot gallery
    text = " ".join(pages)
    assert "Collapsed NeRF (empty scene)" in text
    teapot = pages[_first_page_with(pages, "Subject: teapot")]
    assert "Naive baseline (DreamBooth+Fusion) (collapsed: empty NeRF)" in teapot
    dog = pages[_first_page_with(pages, "Subject: dog")]
    assert "collapsed: empty NeRF" not in dog


def test_paper_results_equal_the_shared_source():
    """config/paper_results.yaml against ../shared/paper/SOURCE.md's two tables (where it exists)."""
    import re

    src = Path(os.environ.get("DB3D_PAPER_SOURCE", REPO.parent / "shared" / "paper" / "SOURCE.md"))
    if not src.is_file():
        pytest.skip(f"{src} not found (set DB3D_PAPER_SOURCE)")
    rows = [[c.strip() for c in ln.strip().strip("|").split("|")] for ln in src.read_text().splitlines()
            if ln.startswith("|") and not ln.startswith("|---")]
    p = paper.load()
    names = {"DreamBooth+Fusion": "naive", "DreamBooth3D (Ours)": "dreambooth3d"}
    table1 = [r for r in rows if r[0] in names]
    assert len(table1) == 2
    for r in table1:
        got = p["r_precision"]["values"][names[r[0]]]
        assert [got["ViT-B-16"], got["ViT-B-32"], got["ViT-L-14"]] == [float(x) for x in r[1:4]], r
    questions = {"3D consistency": "consistency", "subject fidelity": "subject", "prompt fidelity": "prompt"}
    baselines = {"DreamBooth+Fusion": "naive", "Latent-NeRF": "latent_nerf"}
    bars = [r for r in rows if r[0] in questions]
    assert len(bars) == len(p["user_study"]["bars"]) == 5
    for r, b in zip(bars, p["user_study"]["bars"]):
        assert (questions[r[0]], baselines[r[1]]) == (b["question"], b["baseline"])
        assert [int(re.match(r"\d+", r[2]).group()), int(re.match(r"\d+", r[4]).group())] == \
            [b["method"], b["baseline_preferred"]], r
    assert "2303.13508" in p["citation"]


def test_summary_md_equals_the_pdf_headline(toy_built):
    root, _, out, pages, build_dir = toy_built
    summary = (root / "reports" / "summary.md").read_text()
    data = json.loads((build_dir / "data.json").read_text())
    rows = data["groundtruth"]["headline"]["rows"]
    pdf = _squash(" ".join(pages))
    # every headline row of summary.md: its difference, n, p and verdict are the PDF's
    lines = [ln for ln in summary.splitlines() if ln.startswith("| ") and ("better" in ln or "worse" in ln
                                                                         or "no clear difference" in ln)]
    assert len(lines) == len(rows) == 14
    for ln in lines:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        for c in cells[1:]:
            assert _squash(c) in pdf, (c, ln)
    assert data["groundtruth"]["headline"]["sentence"] in summary
    # the R-Precision table: ours and the paper's, as in the PDF
    for r in data["main_table"]["rows"]:
        for c in r["cells"]:
            assert f"| {c['ours']} | {c['paper']} |" in summary.replace("| " + r["n"] + " |", "|")
    assert "0.783" in summary and "not reported" in summary and "git commit" in summary


def _chromium():
    pytest.importorskip("selenium", reason="selenium is not installed (envs/requirements-cpu.txt)")
    if not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()):
        pytest.skip("needs /usr/bin/chromium and /usr/bin/chromedriver (bash envs/setup-browser.sh)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1200,900"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)


def test_html_in_headless_chromium(toy_built):
    """reports/main.html: self-contained, loads with no console error, every image decodes, the
    turntables are animated GIFs, and its numbers are the PDF's."""
    root, _, out, pages, build_dir = toy_built
    page = root / "reports" / "main.html"
    src = page.read_text()
    assert "0.783" in src and "0.797" in src and "not reported" in src and "77 %" in src
    assert 'src="http' not in src and "<script" not in src          # nothing to fetch, nothing to run
    driver = _chromium()
    try:
        driver.get(page.as_uri())
        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        images = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete && i.naturalWidth > 0, i.src.slice(0, 15)]);")
        cells = driver.execute_script("return Array.from(document.querySelectorAll('td')).map(t => t.innerText);")
        if os.environ.get("DB3D_SCREENSHOT"):
            driver.save_screenshot(os.environ["DB3D_SCREENSHOT"])
    finally:
        driver.quit()
    assert not errors, errors
    assert images and all(ok for ok, _ in images), [s for ok, s in images if not ok]
    data = json.loads((build_dir / "data.json").read_text())
    n_turntables = sum(1 for g in data["galleries"] for e in g["entries"] for r in e["rows"] if r.get("variant"))
    assert n_turntables >= 6 and sum(s.startswith("data:image/gif") for _, s in images) >= n_turntables
    # every number in the page's tables is in the PDF's text
    import re

    pdf = _squash(" ".join(pages))
    numbers = {m for c in cells for m in re.findall(r"-?\d+\.\d+ ± \d+\.\d+|-?\d+\.\d{3}", c)}
    assert len(numbers) > 50
    missing = sorted(n for n in numbers if _squash(n) not in pdf)
    assert not missing, missing[:10]
