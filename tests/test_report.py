"""The report builds from a small synthetic metrics table and a fake runs folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

# the repo root on sys.path when db3d is not installed (no conftest/pythonpath setting yet)
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

pypdf = pytest.importorskip("pypdf")
pytest.importorskip("typst")

from db3d.config import DEFAULT_CONFIG_PATH  # noqa: E402
from db3d.report import PAPER_VALUES, build_report  # noqa: E402
from db3d.report.build import VARIANT_ORDER, mean_se  # noqa: E402

VARIANTS = ["latent_nerf", "naive", "dreambooth3d", "single_stage"]
SUBJECTS = ["dog", "teapot"]


def _cfg(backend: str = "tiny") -> dict:
    cfg = yaml.safe_load(Path(DEFAULT_CONFIG_PATH).read_text())
    cfg["backend"] = backend
    cfg["report"] = {"title": "Synthetic <db3d> report #1 $x$ *bold*"}  # markup chars must come out verbatim
    cfg["seed"] = 0
    return cfg


def _png(path: Path, color: tuple[int, int, int]) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (96, 64), color).save(path)


def _fake_inputs(root: Path, tiny: bool = True, ablation: bool = False) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    rows = ["subject\tprompt_id\tvariant\tsetting\tseed\tmetric\tmodel\tvalue\tnote"]
    settings = [("seed~0", 0), ("seed~1", 1)] + ([("partial_steps~50/seed~0", 0)] if ablation else [])
    for subject in SUBJECTS:
        for setting, seed in settings:
            for v in VARIANTS:
                for m in ("ViT-B-16", "ViT-B-32", "ViT-L-14"):
                    label = f"tiny-random({m})" if tiny else m
                    note = "random-weight models" if tiny else ""
                    for metric in ("clip_r_precision", "clip_t"):
                        rows.append(f"{subject}\tp0\t{v}\t{setting}\t{seed}\t{metric}\t{label}\t"
                                    f"{rng.uniform(0, 1):.6f}\t{note}")
    metrics = root / "results" / "metrics.tsv"
    metrics.parent.mkdir(parents=True)
    metrics.write_text("\n".join(rows) + "\n")

    runs = root / "runs"
    for seed in (0, 1):
        (runs / f"seed~{seed}").mkdir(parents=True)
        (runs / f"seed~{seed}" / "config.json").write_text(json.dumps({"backend": "tiny", "seed": seed}))
    for i, subject in enumerate(SUBJECTS):
        pdir = runs / "seed~0" / subject / "p0"
        _png(pdir / "eval" / "dreambooth3d" / "contact_sheet.png", (200, 40 * i, 40))
        _png(pdir / "eval" / "naive" / "contact_sheet.png", (40, 200, 40 * i))
        (pdir / "eval" / "naive" / "retrieval_pool.json").write_text(json.dumps({"prompt": f"a sks {subject}"}))
        _png(pdir / "stage1" / "turntable.png", (40, 40, 200))
        _png(pdir / "stage2" / "pseudo_views.png", (120, 120, 120))
        (pdir / "stage1" / "losses.json").write_text(json.dumps({"wall_time_s": 12.5 + i, "losses": []}))
    return metrics, runs


def _pages_text(pdf: Path) -> list[str]:
    return [p.extract_text() for p in pypdf.PdfReader(str(pdf)).pages]


def _first_page_with(pages: list[str], needle: str, start: int = 1) -> int:
    """First page (after the title page, whose outline names every section) containing needle."""
    hits = [i for i, t in enumerate(pages) if i >= start and needle.lower() in t.lower()]
    assert hits, f"{needle!r} not found in the PDF text"
    return hits[0]


def test_report_builds_with_expected_content(tmp_path):
    metrics, runs = _fake_inputs(tmp_path)
    out = build_report(_cfg("tiny"), metrics, runs, tmp_path / "reports" / "main.pdf")
    assert out.is_file() and out.read_bytes().startswith(b"%PDF")
    pages = _pages_text(out)
    text = "\n".join(pages)

    # title page: title verbatim (markup characters not interpreted) and the random-weight warning
    assert "Synthetic <db3d> report #1 $x$ *bold*" in pages[0]
    assert "random-weight models and mean nothing" in " ".join(pages[0].split())
    # sections in order, each starting on its own page
    order = [_first_page_with(pages, h) for h in ("CLIP R-Precision (R@1)", "Subject: dog", "Subject: teapot",
                                                    "Provenance")]
    assert order == sorted(order) and len(set(order)) == len(order), order
    assert order[0] >= 1  # results are not on the title page
    assert _first_page_with(pages, "No responses yet") >= order[-1]
    # table headers, variant names, models, paper column
    for needle in ("Variant", "ours", "paper ViT-B/16", "paper ViT-L/14", "tiny-random(ViT-B-16)", "tiny-random(ViT-L-14)",
                   "Latent-NeRF", "DreamBooth+Fusion", "DreamBooth3D", "Single stage", *VARIANTS):
        assert needle in text, needle
    # unknown paper values print n/a, never a made-up number
    if all(v is None for row in PAPER_VALUES.values() for v in row.values()):
        assert "n/a" in text
    # one mean ± s.e. computed by hand appears in the table
    rows = [line.split("\t") for line in metrics.read_text().splitlines()[1:]]
    vals = [float(r[7]) for r in rows if r[2] == "dreambooth3d" and r[5] == "clip_r_precision"
            and r[6] == "tiny-random(ViT-B-16)"]
    mean, se, n = mean_se(vals)
    assert n == 4 and f"{mean:.3f} ± {se:.3f}" in text
    # provenance: config hashes and wall times from the fake runs
    assert "seed~0" in text and "seed~1" in text and "stage1" in text
    # gallery pages carry the images (image XObjects), and the build folder holds the copies
    reader = pypdf.PdfReader(str(out))
    dog_page = reader.pages[_first_page_with(pages, "Subject: dog")]
    assert len(dog_page.images) >= 4
    assert "prompt: a sks dog" in pages[_first_page_with(pages, "Subject: dog")]


def test_report_is_reproducible_and_real_backend_has_no_warning(tmp_path):
    metrics, runs = _fake_inputs(tmp_path, tiny=False, ablation=True)
    cfg = _cfg("sd")
    pdf_a = build_report(cfg, metrics, runs, tmp_path / "a" / "main.pdf")
    bytes_a = pdf_a.read_bytes()
    a = _pages_text(pdf_a)
    b = _pages_text(build_report(cfg, metrics, runs, tmp_path / "a" / "main.pdf"))
    assert a == b
    # no clock, no paths: even another output folder gives the same bytes
    assert build_report(cfg, metrics, runs, tmp_path / "b" / "main.pdf").read_bytes() == bytes_a
    text = "\n".join(a)
    assert "mean nothing" not in text and "tiny-random" not in text
    assert "ViT-B-16" in text and "No responses yet" in text
    # ablation cells get their own table and stay out of the main one (n = 2 subjects x 2 seeds)
    assert "Per experiment setting" in text and "partial_steps~50/seed~0: DreamBooth3D" in text
    main = text.split("CLIP-T (mean cosine")[0]
    assert "partial_steps" not in main.split("Variant")[1] and "latent_nerf\n4 " in main


def test_report_fonts_are_embedded(tmp_path):
    metrics, runs = _fake_inputs(tmp_path)
    out = build_report(_cfg(), metrics, runs, tmp_path / "main.pdf")
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
    assert set(PAPER_VALUES) >= {"latent_nerf", "naive", "dreambooth3d"}


def test_report_without_results_yet(tmp_path):
    metrics = tmp_path / "metrics.tsv"
    metrics.write_text("subject\tprompt_id\tvariant\tsetting\tseed\tmetric\tmodel\tvalue\tnote\n")
    out = build_report(_cfg("tiny"), metrics, tmp_path / "no-runs", tmp_path / "main.pdf")
    text = "\n".join(_pages_text(out))
    assert "No rendered views were found" in text and "No responses yet" in text
    assert "tiny-random(ViT-B-32)" in text and "mean nothing" in text
