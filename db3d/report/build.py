"""`python -m db3d report`: `reports/main.pdf` (Typst), `reports/main.html` and `reports/summary.md`
from the metrics and run folders, all three from one gathered document (data.json).

How it is built: `build_report` gathers everything the report shows into one JSON document
(`data.json`), draws the figures with matplotlib (PNG), writes the gallery strips (PIL), all into a
fresh build folder (`<out dir>/build/<out stem>/`), copies `template.typ` there as `main.typ`
and compiles it with the `typst` Python package (the Typst compiler in-process; no network, only
Typst's embedded fonts - Libertinus Serif, New Computer Modern, DejaVu Sans Mono - so the fonts
and the output are the same on every machine). The PDF is written atomically.

What it reads (rules/report.smk declares the same files as inputs, `db3d.workflow.report_inputs`):
the metrics table; for each (setting, subject, prompt, variant) of that table the evaluation
renders (`eval/<variant>/turntable.gif`, `eval_info.json`, `retrieval_pool.json`) and the stage
folders of its NeRF (`losses.json`, `turntable.png`, `stage2/pseudo_views.png`) found through
`db3d.workflow.stage_setting`, so stale folders under runs/ never leak in; the subjects' photos
(`data/subjects/<subject>/images_*`); `runs/<setting>/config.json`; the ablation tables named in
the config; `results/userstudy.tsv` beside the metrics table when it exists; with backend toy the
prior's folder (`models.toy`: samples.png, train_log.json, model.safetensors). The synthetic
track's sections (ground-truth metrics, the trained prior) are made in `groundtruth.py`; the paper's
numbers come from config/paper_results.yaml (`paper.py`); `logs/` beside the runs folder gives each
job's timing line (`provenance.py`).

The parts: `gather` (what is read), `sections`, `ablations`, `groundtruth`, `objective` (the section
builders), `provenance`, `common` (the vocabulary), `html` and `summary` (the two other outputs);
this module puts them together.

Reproducible: same inputs -> same PDF. The document date is `none`, nothing reads a clock, and
lists are sorted. Provenance that comes from the environment (git commit, hardware of the machine
that builds the report) is stated as such. Layout and choices: docs/report.md.
"""
from __future__ import annotations

import json
import logging
import platform
import shutil
from pathlib import Path

from .. import workflow as wf
from ..errors import Db3dError
from ..io import atomic_path
from . import figures, html, paper, provenance as prov, summary as summary_md
from . import groundtruth as gtm
from .ablations import ablations_section
from .common import STAND_IN_BACKENDS, VARIANT_NAMES, canonical_hash, report_outputs, sha256_file
from .gather import Assets, Runs, azimuth_text, first_pool, load_metrics, table_models, table_variants
from .objective import objective_section
from .sections import (WARNING_BODY, WARNING_HEADLINE, WARNING_SHORT, failures_section, fidelity_section,
                       galleries_section, janus_section, results_table, userstudy_section)
from .select import is_seed_setting, metric_model

log = logging.getLogger(__name__)

TEMPLATE_PATH = Path(__file__).with_name("template.typ")


def build_data(cfg: dict, metrics_path: Path, runs_dir: Path, build_dir: Path, *,
               userstudy: Path | None = None, subjects_dir: Path | None = None,
               ablation_dir: Path | None = None, prior_dir: Path | None = None, logs_dir: Path | None = None) -> dict:
    """Everything the template shows (also writes the figures and image strips into build_dir)."""
    df = load_metrics(metrics_path)
    runs = Runs(runs_dir)
    backend = str(cfg.get("backend"))
    tiny = backend in STAND_IN_BACKENDS  # the CLIP/DINO metrics are random-weight stand-ins
    models = table_models(df, cfg)
    variants = table_variants(df, cfg)
    userstudy = Path(userstudy) if userstudy is not None else Path(metrics_path).parent / "userstudy.tsv"
    subjects_dir = Path(subjects_dir) if subjects_dir is not None else Path(runs_dir).parent / "data" / "subjects"
    ablation_dir = Path(ablation_dir) if ablation_dir is not None else Path(runs_dir).parent / "ablations"
    assets = Assets(build_dir)
    fig_dir = build_dir / "fig"
    fig_dir.mkdir(parents=True, exist_ok=True)

    main_df = df[df["setting"].map(is_seed_setting)] if len(df) else df
    if len(df) and len(main_df) == 0:
        main_df, scope = df, "all settings (no plain seed~N settings found)"
    else:
        scope = "the seed~N settings (the ablation cells are in section 2)"
    unit = "subjects \u00d7 prompts \u00d7 seeds"
    main_table, stats_r = results_table(
        main_df, "clip_r_precision", variants, models, True,
        intro=(f"Fraction of the fixed turntable views whose prompt CLIP ranks first among the retrieval pool "
               f"(all eval3d prompts of all subjects, class noun in, rare token out). Mean \u00b1 standard error over "
               f"{unit}; n = number of (subject, prompt, seed) runs; rows from {scope}."),
        note=(f"Paper: {paper.source_line()} \u201c{paper.NOT_REPORTED}\u201d: the paper's table has no row for "
              "this variant. " + paper.pool_statement(first_pool(runs, main_df) if len(main_df) else None,
                                                       main_df["subject"].nunique() if len(main_df) else 0)
              + " The renders differ from the paper's too, so the columns are comparable in trend, not digit "
                "by digit."
              + (f" Ours: random-weight CLIP stand-ins ({backend} backend) - meaningless." if tiny else "")))
    clipt_table, stats_t = results_table(
        main_df, "clip_t", variants, models, False,
        intro=f"Mean cosine similarity between the views and the prompt text (token removed); mean \u00b1 s.e. over {unit}.")

    figs = []
    if len(df):
        published = {v: {m: x for m in models if isinstance(x := paper.r_precision(v, m), float)} for v in variants}
        figures.rprecision_figure(fig_dir / "metrics.png", stats_r, stats_t, variants, models, VARIANT_NAMES,
                                  published, lambda m: m, tiny)
        figs.append({"path": "fig/metrics.png",
                     "caption": ("CLIP R-Precision (left) and CLIP-T (right) per variant; bars: CLIP models, "
                                 "error bars: standard error, diamonds: paper (where known)."
                                 + (" Random-weight models: meaningless." if tiny else ""))})
    present_variants = [v for v in variants if v in set(main_df["variant"])] if len(main_df) else []
    fidelity = fidelity_section(main_df, present_variants, tiny) if len(main_df) else None
    janus = janus_section(main_df, present_variants, tiny) if len(main_df) else None
    groundtruth = (gtm.groundtruth_section(main_df, variants, fig_dir, reference=gtm.reference_rows(metrics_path))
                   if len(main_df) else None)
    objective = objective_section(main_df, runs, variants, VARIANT_NAMES, fig_dir)
    toy = backend == "toy"
    prior_info = None
    if toy:
        folder = Path(prior_dir) if prior_dir is not None else gtm.prior_dir(cfg, Path(runs_dir).parent)
        prior_info = gtm.prior_info(folder, str(prior_dir if prior_dir is not None else
                                                 cfg.get("models", {}).get("toy") or folder))

    ablations = ablations_section(df, cfg, runs, assets, fig_dir, tiny) if len(df) else []
    named = list(cfg.get("ablations", []) or [])
    ablation_intro = ("Each ablation is a table in ablations/ (one row per cell, each row run with every seed of "
                      "the config; ablations/README.md). A cell re-runs only the stages that depend on its "
                      "parameters and reuses the rest. Tables named in this config: "
                      + (", ".join(named) if named else "none") + ".")
    ablation_empty = (None if ablations else
                      "No ablation cells in the metrics table. Run one, e.g. snakemake --cores all reports/main.pdf "
                      "--config 'ablations=[recon_weight]'.")

    failures = failures_section(df, runs, subjects_dir, assets, fig_dir, stand_in=tiny) if len(df) else []
    galleries, gallery_setting = galleries_section(df, cfg, runs, subjects_dir, assets)
    user_study = userstudy_section(userstudy, fig_dir, build_dir)

    settings = sorted(set(df["setting"])) if len(df) else []
    configs = prov.scan_configs(runs, settings + wf.main_settings(cfg) if cfg.get("seeds") else settings)
    wall = prov.wall_times(df, runs)
    jobs = prov.job_times(Path(logs_dir) if logs_dir is not None else Path(runs_dir).parent / "logs")
    cpu, gpu = prov.hardware_info()
    torch_build, threads = prov.torch_build()
    subjects = sorted(set(df["subject"])) if len(df) else []
    prompts = sorted(set(zip(df["subject"], df["prompt_id"]))) if len(df) else []
    seeds = sorted({int(s) for s in df["seed"]}) if len(df) else []
    summary = [
        f"Inputs: {Path(metrics_path).name} (sha256 {sha256_file(metrics_path)[:16]}), {len(df)} metric rows; "
        f"runs folder {Path(runs_dir).name}/ with {len(configs)} setting config(s).",
        f"Subjects ({len(subjects)}): {', '.join(subjects) or 'none'}; subject-prompt pairs: {len(prompts)}; "
        f"seeds: {', '.join(map(str, seeds)) or 'none'}; settings: {len(settings)} "
        f"({len(ablations)} ablation(s)).",
        f"Variants: {', '.join(f'{VARIANT_NAMES.get(v, v)} ({v})' for v in variants)}.",
    ]
    tables = []
    for name in named:
        p = ablation_dir / f"{name}.tsv"
        tables.append(f"{name} ({sha256_file(p)[:16]})" if p.is_file() else f"{name} (missing)")
    dino = metric_model(df, "dino_i") if len(df) else None
    toy_sha = prior_info["sha"] if prior_info else None
    provenance = {
        "items": [
            ["git commit", prov.git_info()],
            ["backend", str(cfg.get("backend"))],
            ["model ids", prov.model_ids(cfg, models, dino, toy_sha)],
            *(gtm.prior_provenance(prior_info) if prior_info else []),
            ["seeds", f"in metrics: {', '.join(map(str, seeds)) or 'none'}; config seeds: "
                      f"{', '.join(map(str, cfg.get('seeds', [])))}"],
            ["report config hash", canonical_hash(cfg)],
            ["metrics table sha256", sha256_file(metrics_path)],
            ["ablation tables (sha256)", ", ".join(tables) or "none"],
            ["user study table", f"{userstudy.name} (sha256 {sha256_file(userstudy)[:16]})" if userstudy.is_file()
             else "absent"],
            ["hardware (machine that built this report)", f"CPU: {cpu}; GPU: {gpu}"],
            ["CPU flags (report machine)", prov.cpu_flags()],
            ["threads (report machine)", threads],
            ["torch build (report machine)", torch_build],
            ["software", f"Python {platform.python_version()}; " + prov.versions()],
        ],
        "configs": configs,
        "wall_times": wall,
        "jobs": jobs,
        "jobs_table": html.job_table(jobs),
    }
    return {
        "title": str(cfg.get("report", {}).get("title", "DreamBooth3D reproduction")),
        "subtitle": "A reproduction of DreamBooth3D: Subject-Driven Text-to-3D Generation (Raj et al., ICCV 2023)",
        "backend": str(cfg.get("backend")),
        "clip_models": models,
        "warning": ({"headline": WARNING_HEADLINE, "body": WARNING_BODY, "short": WARNING_SHORT}
                    if backend == "tiny" else None),
        "toy_note": gtm.toy_note(prior_info) if prior_info else None,
        "prior": gtm.prior_section(prior_info, build_dir) if prior_info else None,
        "groundtruth": groundtruth,
        "objective": objective,
        "summary": summary,
        "main_table": main_table,
        "clipt_table": clipt_table,
        "figures": figs,
        "fidelity": fidelity,
        "janus": janus,
        "ablation_intro": ablation_intro,
        "ablation_empty": ablation_empty,
        "ablations": ablations,
        "failure_intro": ("Chosen automatically over every run of the metrics table (main and ablation cells), by "
                          "what is true: collapsed NeRFs first (coverage below eval.collapse_coverage); with ground "
                          "truth, the worst Janus (GT), back-view PSNR and LPIPS among the runs that did not "
                          "collapse; without it, the worst Janus score and the lowest subject fidelity (DINO-I, else "
                          "CLIP-I) of real models only"
                          + (" - not here: this backend's CLIP/DINO are random-weight stand-ins" if tiny else "")
                          + "; and the highest loss divergence of a NeRF stage (median loss of the last quarter of "
                            "the steps over the first quarter, runs with non-finite losses first). Each only when "
                            "its data exist."),
        "failures": failures,
        "gallery_intro": ("Per subject, the first prompt-seed runs side by side: the input photos, the initial NeRF "
                          "(stage 1), the pseudo multi-view images (stage 2), the final DreamBooth3D NeRF and the "
                          "baselines. NeRF rows are the fixed evaluation cameras the metrics are computed on "
                          f"(azimuth {azimuth_text(runs, df, cfg) if len(df) else '-'}), else the training "
                          f"turntable; setting {gallery_setting or '-'}; under each label its R@1, DINO-I and Janus "
                          "(primary models) where present."),
        "galleries": galleries,
        "provenance": provenance,
        "user_study": user_study,
    }


def compile_typst(build_dir: Path) -> bytes:
    try:
        import typst
    except ImportError as e:
        raise Db3dError(f"the `typst` Python package is needed to build the report ({e}); "
                        f"install the pinned environment (envs/requirements-cpu.txt)") from None
    try:
        return typst.compile(str(build_dir / "main.typ"), root=str(build_dir), ignore_system_fonts=True)
    except Exception as e:  # typst.TypstError: a template/data bug, keep the details
        raise RuntimeError(f"Typst failed on {build_dir / 'main.typ'}: {e}") from e


def build_report(cfg: dict, metrics_path: Path, runs_dir: Path, out_pdf: Path, *,
                 userstudy: Path | None = None, subjects_dir: Path | None = None,
                 ablation_dir: Path | None = None, prior_dir: Path | None = None,
                 logs_dir: Path | None = None) -> Path:
    """Typeset the report PDF from the metrics table and the run folders, and write the HTML page
    and summary.md beside it (`report_outputs`) from the same data; returns `out_pdf`.

    Defaults: `userstudy` = userstudy.tsv beside the metrics table (read when present),
    `subjects_dir` = data/subjects, `ablation_dir` = ablations/ and `logs_dir` = logs/ beside the
    runs folder; with backend toy, `prior_dir` = `cfg["models"]["toy"]` (relative: to the runs
    folder's parent)."""
    metrics_path, runs_dir, out_pdf = Path(metrics_path), Path(runs_dir), Path(out_pdf)
    build_dir = out_pdf.parent / "build" / out_pdf.stem
    shutil.rmtree(build_dir, ignore_errors=True)
    build_dir.mkdir(parents=True)
    data = build_data(cfg, metrics_path, runs_dir, build_dir, userstudy=userstudy, subjects_dir=subjects_dir,
                      ablation_dir=ablation_dir, prior_dir=prior_dir, logs_dir=logs_dir)
    (build_dir / "data.json").write_text(json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n")
    shutil.copyfile(TEMPLATE_PATH, build_dir / "main.typ")
    pdf = compile_typst(build_dir)
    outs = report_outputs(out_pdf)
    with atomic_path(out_pdf) as tmp:
        tmp.write_bytes(pdf)
    with atomic_path(Path(outs["html"])) as tmp:
        tmp.write_text(html.render(data, build_dir), encoding="utf-8")
    with atomic_path(Path(outs["summary"])) as tmp:
        tmp.write_text(summary_md.render(data, pdf_name=out_pdf.name, html_name=Path(outs["html"]).name),
                       encoding="utf-8")
    log.info("report: %s (%d bytes; build folder %s)", out_pdf, len(pdf), build_dir)
    return out_pdf
