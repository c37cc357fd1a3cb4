"""`python -m db3d <command>`: the one entry point the Snakemake rules call.

Each command parses its arguments and calls one library function; no logic lives here.
A `Db3dError` (bad input, bad config, missing model) is printed as one line and exits 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import report_errors


def _config(args: argparse.Namespace) -> dict:
    """The config a command runs with: a file (+ --set overrides), or the JSON a rule passes.

    Rules pass `--config-json` holding only the keys that rule reads (see db3d.workflow), already
    validated by the Snakefile; a key outside it is a KeyError, never a silent default.
    A GPU command leases its GPU here, before anything initialises CUDA (db3d.devices).
    """
    import json

    from .config import load_config, parse_overrides
    from .devices import claim

    if getattr(args, "config_json", None):
        cfg = json.loads(args.config_json)
    else:
        cfg = load_config(args.config, parse_overrides(getattr(args, "set", None)))
    return claim(args.command, cfg)


def cmd_write_json(args: argparse.Namespace) -> None:
    import json

    from .io import write_json

    write_json(args.out, json.loads(args.json))


def cmd_prompts(args: argparse.Namespace) -> None:
    from .data.prompts import write_tables

    write_tables(Path(args.source), Path(args.subjects_out), Path(args.prompts_out))


def cmd_dataset(args: argparse.Namespace) -> None:
    from .data.build import build_subject

    build_subject(args.source, args.subject, Path(args.out), resolutions=tuple(args.resolutions),
                  min_images=args.min_images, subjects_table=Path(args.subjects_table))


def cmd_synthetic_subject(args: argparse.Namespace) -> None:
    from .synth.subjects import build_from_table

    build_from_table(_config(args), args.subject, Path(args.out))


def cmd_toy_prior(args: argparse.Namespace) -> None:
    from .synth.prior import train_prior_from_config

    train_prior_from_config(_config(args), Path(args.out))


def cmd_class_priors(args: argparse.Namespace) -> None:
    from .stages import class_priors

    class_priors(_config(args), args.class_noun, Path(args.out))


def cmd_dreambooth(args: argparse.Namespace) -> None:
    from .stages import dreambooth

    dreambooth(_config(args), Path(args.subject_dir), Path(args.priors), Path(args.out_dir),
               init=Path(args.init) if args.init else None,
               pseudo_views=Path(args.pseudo_views) if args.pseudo_views else None)


def cmd_nerf(args: argparse.Namespace) -> None:
    from .stages import fit_nerf

    fit_nerf(_config(args), args.stage, Path(args.dreambooth) if args.dreambooth else None, args.prompt_id,
             Path(args.subject_dir),
             Path(args.out_dir), pseudo_views=Path(args.pseudo_views) if args.pseudo_views else None)


def cmd_pseudo_views(args: argparse.Namespace) -> None:
    from .stages import pseudo_views

    pseudo_views(_config(args), Path(args.nerf), Path(args.dreambooth), args.prompt_id,
                 Path(args.subject_dir), Path(args.out_dir))


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .eval import evaluate

    evaluate(_config(args), Path(args.nerf), Path(args.subject_dir), args.prompt_id, args.variant,
             args.setting, Path(args.out_dir))


def cmd_reference(args: argparse.Namespace) -> None:
    from .eval.reference import write_reference

    write_reference(_config(args), args.kind, Path(args.subject_dir), args.setting, Path(args.out_dir))


def cmd_collect(args: argparse.Namespace) -> None:
    from .eval.table import collect_metrics

    collect_metrics([Path(p) for p in args.inputs], Path(args.out))


def cmd_report(args: argparse.Namespace) -> None:
    from .report import build_report

    from .workflow import subjects_dir

    cfg = _config(args)
    built = Path(args.subjects_dir) if args.subjects_dir else Path(args.runs).resolve().parent / subjects_dir(cfg)
    build_report(cfg, Path(args.metrics), Path(args.runs), Path(args.out), subjects_dir=built)


def cmd_userstudy_build(args: argparse.Namespace) -> None:
    from .userstudy.design import build_study

    build_study(Path(args.runs), args.setting, Path(args.out), seed=args.seed, raters=args.raters,
                pairs_per_rater=args.pairs_per_rater, checks=args.checks, check_kind=args.check_kind,
                baselines=args.baselines, data_dir=Path(args.data), prompts_table=Path(args.prompts_table),
                subjects_table=Path(args.subjects_table), name=args.name, force=args.force)


def cmd_userstudy_serve(args: argparse.Namespace) -> None:
    from .userstudy.server import serve

    serve(Path(args.study), host=args.host, port=args.port, threads=args.threads,
          db_path=Path(args.db) if args.db else None)


def cmd_userstudy_analyse(args: argparse.Namespace) -> None:
    from .userstudy.analysis import analyse

    analyse(Path(args.study), Path(args.out), responses=Path(args.responses) if args.responses else None,
            min_attention=args.min_attention)


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import main as bench_main

    rc = bench_main(args)
    if rc:
        raise SystemExit(rc)


def build_parser() -> argparse.ArgumentParser:
    from .variants import REFERENCES, nerf_stages

    p = argparse.ArgumentParser(prog="db3d", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    def with_config(sp: argparse.ArgumentParser) -> argparse.ArgumentParser:
        sp.add_argument("--config", action="append", default=None,
                        help="config YAML/JSON (default config/config.yaml); repeat to merge, e.g. "
                             "--config config/config.yaml --config config/paper.yaml")
        sp.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a config key, e.g. --set stage3.recon_weight=0.5")
        sp.add_argument("--config-json", help="resolved config as JSON (what the Snakemake rules pass)")
        return sp

    sp = sub.add_parser("write-json", help="write a JSON document atomically (a cell's resolved config)")
    sp.add_argument("--json", required=True)
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_write_json)

    sp = sub.add_parser("prompts", help="write config/subjects.tsv and config/prompts.tsv from the dataset's text file")
    sp.add_argument("--source", required=True)
    sp.add_argument("--subjects-out", default="config/subjects.tsv")
    sp.add_argument("--prompts-out", default="config/prompts.tsv")
    sp.set_defaults(func=cmd_prompts)

    sp = sub.add_parser("dataset", help="build one subject's training images, masks and metadata")
    sp.add_argument("--source", required=True, help="dataset folder (google/dreambooth layout)")
    sp.add_argument("--subject", required=True)
    sp.add_argument("--out", required=True, help="output folder data/subjects/<subject>")
    sp.add_argument("--subjects-table", default="config/subjects.tsv")
    sp.add_argument("--resolutions", type=int, nargs="+", default=[64, 512])
    sp.add_argument("--min-images", type=int, default=3)
    sp.set_defaults(func=cmd_dataset)

    sp = with_config(sub.add_parser("synthetic-subject", help="render one synthetic subject (photos, masks, "
                                                              "meta.json, object.json) from the subject table"))
    sp.add_argument("--subject", required=True, help="a row of dataset.subjects_table (config/synthetic/subjects.tsv)")
    sp.add_argument("--out", required=True, help="output folder data/synthetic/<subject>")
    sp.set_defaults(func=cmd_synthetic_subject)

    sp = with_config(sub.add_parser("toy-prior", help="train the toy backend's text-to-image prior on synthetic "
                                                      "renders (models/toy/)"))
    sp.add_argument("--out", required=True, help="checkpoint folder (model.safetensors, samples.png, train_log.json)")
    sp.set_defaults(func=cmd_toy_prior)

    sp = with_config(sub.add_parser("class-priors", help="sample the class-prior images of one class"))
    sp.add_argument("--class-noun", required=True)
    sp.add_argument("--out", required=True, help="output folder (images + manifest.json)")
    sp.set_defaults(func=cmd_class_priors)

    sp = with_config(sub.add_parser("dreambooth", help="DreamBooth fine-tuning (partial+full, or multi-view)"))
    sp.add_argument("--subject-dir", required=True)
    sp.add_argument("--priors", required=True, help="class-prior folder from class-priors")
    sp.add_argument("--out-dir", required=True)
    sp.add_argument("--init", help="continue from this checkpoint (multi-view DreamBooth)")
    sp.add_argument("--pseudo-views", help="stage-2 pseudo views to add to the instance images")
    sp.set_defaults(func=cmd_dreambooth)

    sp = with_config(sub.add_parser("nerf", help="optimise a NeRF by score distillation"))
    sp.add_argument("--stage", required=True, choices=nerf_stages())
    sp.add_argument("--dreambooth", help="DreamBooth checkpoint guiding the NeRF (omit: the base model, "
                    "i.e. plain DreamFusion)")
    sp.add_argument("--subject-dir", required=True)
    sp.add_argument("--prompt-id", required=True)
    sp.add_argument("--pseudo-views", help="stage-2 pseudo views (reconstruction loss, stage3)")
    sp.add_argument("--out-dir", required=True)
    sp.set_defaults(func=cmd_nerf)

    sp = with_config(sub.add_parser("pseudo-views", help="stage 2: img2img of NeRF renders with the full DreamBooth"))
    sp.add_argument("--nerf", required=True)
    sp.add_argument("--dreambooth", required=True)
    sp.add_argument("--subject-dir", required=True)
    sp.add_argument("--prompt-id", required=True)
    sp.add_argument("--out-dir", required=True)
    sp.set_defaults(func=cmd_pseudo_views)

    sp = with_config(sub.add_parser("evaluate", help="render fixed views of a NeRF and compute its metrics"))
    sp.add_argument("--nerf", required=True)
    sp.add_argument("--subject-dir", required=True)
    sp.add_argument("--prompt-id", required=True)
    sp.add_argument("--variant", required=True)
    sp.add_argument("--setting", required=True)
    sp.add_argument("--out-dir", required=True)
    sp.set_defaults(func=cmd_evaluate)

    sp = with_config(sub.add_parser("reference", help="ground-truth metrics of a reference NeRF (untrained: the "
                                                      "initial field; oracle: it fit to true renders from all "
                                                      "around) of a synthetic subject"))
    sp.add_argument("--kind", required=True, choices=list(REFERENCES))
    sp.add_argument("--subject-dir", required=True)
    sp.add_argument("--setting", required=True)
    sp.add_argument("--out-dir", required=True)
    sp.set_defaults(func=cmd_reference)

    sp = sub.add_parser("collect-metrics", help="concatenate per-run metric tables into one tidy table")
    sp.add_argument("inputs", nargs="+")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_collect)

    sp = with_config(sub.add_parser("report", help="typeset reports/main.pdf from the metrics and run folders"))
    sp.add_argument("--metrics", required=True)
    sp.add_argument("--runs", default="runs")
    sp.add_argument("--subjects-dir", help="built subjects (default: data/subjects or data/synthetic, by dataset.kind, "
                    "beside the runs folder)")
    sp.add_argument("--out", required=True)
    sp.set_defaults(func=cmd_report)

    sp = sub.add_parser("userstudy", help="pairwise user study: build a study, serve it to raters, analyse the answers")
    us = sp.add_subparsers(dest="userstudy_command", required=True)
    b = us.add_parser("build", help="write a study folder (manifest.json, media, rater links) from the turntables")
    b.add_argument("--runs", default="runs", help="runs folder (runs/<setting>/<subject>/<prompt_id>/eval/<variant>/)")
    b.add_argument("--setting", default="seed~0", help="the experiment cell whose turntables are compared")
    b.add_argument("--out", required=True, help="study folder to write, e.g. studies/main")
    b.add_argument("--seed", type=int, default=0, help="fixes each rater's order and left/right sides")
    b.add_argument("--raters", type=int, default=21, help="rater links to make (paper: 11-21 raters per pair)")
    b.add_argument("--pairs-per-rater", type=int, default=None,
                   help="pairs each rater sees (default all; balanced so every pair gets as many raters)")
    b.add_argument("--checks", type=int, default=3, help="attention checks per rater (one per question, cycled)")
    b.add_argument("--check-kind", default="blank", choices=["blank", "inverted", "noise"],
                   help="how the attention-check video is spoiled")
    b.add_argument("--baselines", nargs="+", default=None, help="baselines to compare against (default: all present)")
    b.add_argument("--data", default="data/subjects", help="subject folders with images_512/ (the photos shown)")
    b.add_argument("--prompts-table", default="config/prompts.tsv")
    b.add_argument("--subjects-table", default="config/subjects.tsv")
    b.add_argument("--name", default=None, help="study name (default: the folder name)")
    b.add_argument("--force", action="store_true", help="replace a study folder that already holds responses")
    b.set_defaults(func=cmd_userstudy_build)
    s_ = us.add_parser("serve", help="serve the study to raters (waitress; links in <study>/raters.tsv)")
    s_.add_argument("--study", required=True)
    s_.add_argument("--host", default="127.0.0.1")
    s_.add_argument("--port", type=int, default=8000)
    s_.add_argument("--threads", type=int, default=8)
    s_.add_argument("--db", default=None, help="answer database (default <study>/responses.sqlite)")
    s_.set_defaults(func=cmd_userstudy_serve)
    a = us.add_parser("analyse", help="preference rates, CIs, binomial tests, majority votes, Fleiss' kappa")
    a.add_argument("--study", required=True)
    a.add_argument("--out", default="results/userstudy.tsv",
                   help="summary table; <stem>_pairs.tsv and <stem>_raters.tsv are written beside it")
    a.add_argument("--responses", default=None,
                   help="answers: a responses.sqlite or an /admin/export?format=tsv file "
                        "(default <study>/responses.sqlite)")
    a.add_argument("--min-attention", type=float, default=1.0,
                   help="fraction of attention checks a rater must pass to be kept (default 1.0: all)")
    a.set_defaults(func=cmd_userstudy_analyse)

    from .bench.args import add_arguments as bench_arguments

    sp = with_config(sub.add_parser("bench", help="time each stage (iterations/s, peak GPU memory) into "
                                                  "reports/bench/<name>.tsv + .md, with the projected wall time"))
    bench_arguments(sp)
    sp.set_defaults(func=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    def run() -> int:
        # the timing line goes out before report_errors prints the error, so that a failed job's
        # log still ends in its one-line reason (or its traceback)
        status = "error"
        try:
            args.func(args)
            status = "ok"
            return 0
        finally:  # also on the way to a traceback: the log says how far the job got and what it held
            from .jobperf import job_line

            logging.getLogger("db3d").info("%s", job_line(args.command, status))

    return report_errors(run)
