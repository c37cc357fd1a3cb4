"""What the Snakefile asks of the config: targets, per-rule configs and cache keys.

The rules stay declarative; every decision about paths and parameters lives here and is tested.
The stages, variants and file names come from db3d.variants (declared once); the tables below
(`STAGE_KEYS`, `VARIANT_NERF`, `VARIANT_STAGES`, `STAGE_FILES`, `COMMON_KEYS`) are derived from it
and from the backend registry (db3d.diffusion.registry).

Caching by parameters: an experiment cell ("setting", e.g. `recon_weight~0/seed~1`) only changes
some stages. Each stage's folder is keyed by the part of the setting that stage (and what feeds it)
depends on (`stage_setting`), so the reconstruction-weight sweep reuses the main run's DreamBooth,
initial NeRF and pseudo views instead of recomputing them, and re-running one cell never
recomputes another. Each rule gets, as its `params`, only the config keys it reads
(`rule_config`), so editing e.g. the report title re-runs the report alone.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from . import variants as V
from .config import format_setting, parse_setting, resolve_key, setting_config
from .diffusion.registry import backends
from .variants import DATA_KEYS, EVAL_KEYS  # noqa: F401 - rules read them from here

# Config keys every rule sees: where it runs and the model (every registered backend's keys);
# `selected_keys`: those a rule sees only when that backend is chosen (toy: the prior's recipe,
# since another prior means other results downstream; db3d.diffusion.toy.load_toy refuses a
# checkpoint trained with other toy_prior values).
COMMON_KEYS = (("backend", "device", "precision", "deterministic", "compile_unet")
               + tuple(sorted(k for spec in backends().values() for k in (spec.config_key,) + spec.also_keys))
               + ("seed",))

# For each stage: every config key its output depends on, its own and its inputs'.
STAGE_KEYS: dict[str, tuple[str, ...]] = {name: V.stage_keys(name) for name in V.STAGES}

# The NeRF each variant is judged by, relative to runs/<setting>/<subject>/<prompt_id>/.
VARIANT_NERF = {v.name: (v.judged, f"{V.STAGES[v.judged].dir}/{V.NERF}") for v in V.VARIANT_LIST}

# Wildcard constraints: the `{variant}` of the evaluation, the `{baseline}` of rule nerf_baseline
# (every NeRF stage outside DreamBooth3D's chain).
VARIANT_PATTERN = V.variant_pattern()
BASELINE_PATTERN = "|".join(V.baseline_stages())


def _depends(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def stage_setting(setting: str, stage: str) -> str:
    """The part of `setting` that `stage` depends on (the seed always counts)."""
    params = parse_setting(setting)
    keep = {k: v for k, v in params.items()
            if k == "seed" or _depends(resolve_key(k), STAGE_KEYS[stage])}
    return format_setting(keep)


def _select(cfg: dict, keys: Iterable[str]) -> dict:
    out: dict = {}
    for key in keys:
        src, dst = cfg, out
        parts = key.split(".")
        for part in parts[:-1]:
            src = src[part]
            dst = dst.setdefault(part, {})
        if parts[-1] in src:
            dst[parts[-1]] = src[parts[-1]]
    return out


def resolved(config: dict, setting: str) -> dict:
    """The full config of one cell: the workflow config plus the setting's overrides and seed
    (validated once at planning time by the Snakefile and `check_ablations`, not per call)."""
    return setting_config(config, setting, check=False)


def rule_config(config: dict, setting: str | None, keys: Iterable[str]) -> str:
    """JSON of only the config keys a rule reads: its `params`, so Snakemake re-runs it exactly
    when one of them changes. `setting=None` for rules shared by all cells (class priors)."""
    cfg = resolved(config, setting) if setting else dict(config, seed=0)
    selected = backends()[cfg["backend"]].selected_keys
    return json.dumps(_select(cfg, tuple(COMMON_KEYS) + selected + tuple(keys)), sort_keys=True)


def stage_rule_config(config: dict, setting: str, stage: str) -> str:
    return rule_config(config, setting, STAGE_KEYS[stage])


# ---- rule inputs and outputs (the file names of db3d.variants) ---------------------------------------

def stage_output(stage: str, name: str) -> str:
    """The output pattern of `stage`'s file `name`; `stage` may be a wildcard of per-prompt stages
    (`{baseline}`: rule nerf_baseline)."""
    st = V.STAGES.get(stage)
    if st is not None and st.scope == "subject":
        return f"runs/{{setting}}/{{subject}}/{st.dir}/{name}"
    return f"runs/{{setting}}/{{subject}}/{{prompt_id}}/{st.dir if st else stage}/{name}"


def eval_output(name: str) -> str:
    return f"runs/{{setting}}/{{subject}}/{{prompt_id}}/eval/{{variant}}/{V.EVAL_FILES[name]}"


def guide_input(wildcards, stage: str) -> list[str]:
    """The DreamBooth checkpoint guiding NeRF stage `stage` for the job's cell ([]: the base model)."""
    guide = V.STAGES[stage].guide
    if guide is None:
        return []
    up, name = guide.split(":")
    return [stage_input(wildcards, up, name)]


def guide_option(paths) -> str:
    """`--dreambooth <checkpoint>` for `db3d nerf`, or nothing (the base model)."""
    paths = list(paths)
    return f"--dreambooth {paths[0]}" if paths else ""


# ---- targets -----------------------------------------------------------------------------------

def subjects(config: dict) -> list[str]:
    chosen = config["dataset"]["subjects"]
    if chosen == "all":
        from .data.prompts import load_subjects

        return list(load_subjects(config["dataset"]["subjects_table"])["subject"])
    return list(chosen)


def prompt_ids(config: dict, subject: str) -> list[str]:
    from .data.prompts import subject_prompt_ids

    return subject_prompt_ids(config["dataset"]["prompts_table"], subject,
                              config["dataset"]["prompts_per_subject"])


def class_slug(config: dict, subject: str) -> str:
    from .data.prompts import load_subjects

    table = load_subjects(config["dataset"]["subjects_table"])
    row = table[table["subject"] == subject]
    if row.empty:
        from .errors import ConfigError

        raise ConfigError(f"subject {subject!r} is not in {config['dataset']['subjects_table']}; "
                          "fix dataset.subjects in the config")
    return slug(row.iloc[0]["class_noun"])


def slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.strip().lower())


def main_settings(config: dict) -> list[str]:
    return [f"seed~{s}" for s in config["seeds"]]


def ablation_settings(config: dict, ablation_dir: str | Path = "ablations") -> list[str]:
    """Cells of the ablation tables named in `config["ablations"]`, one per row and seed."""
    import pandas as pd
    from snakemake.utils import Paramspace

    cells: list[str] = []
    for name in config.get("ablations", []):
        table = pd.read_csv(Path(ablation_dir) / f"{name}.tsv", sep="\t")
        if "seed" not in table.columns:
            table = table.merge(pd.DataFrame({"seed": config["seeds"]}), how="cross")
        space = Paramspace(table, param_sep="~")
        cells.extend(p for p in space.instance_patterns if p not in cells)
    return cells


def variant_depends_on_setting(setting: str, variant: str) -> bool:
    """Whether a cell's parameters (beyond the seed) reach this variant's NeRF. A cell whose
    parameters only touch stage 3 (recon_weight) leaves the baselines and stage 1 as they are in
    the main run, so evaluating them again would only repeat the main run's numbers."""
    reduced = parse_setting(stage_setting(setting, VARIANT_NERF[variant][0]))
    return any(k != "seed" for k in reduced)


def evaluated_variants(config: dict, setting: str) -> list[str]:
    """Every variant of a main cell (seed only); in an ablation cell, the variants it changes."""
    main = set(parse_setting(setting)) <= {"seed"}
    return [v for v in config["variants"] if main or variant_depends_on_setting(setting, v)]


def eval_targets(config: dict, settings: Iterable[str]) -> list[str]:
    return [f"runs/{s}/{subj}/{pid}/eval/{variant}/{V.EVAL_FILES['metrics']}"
            for s in settings
            for subj in subjects(config)
            for pid in prompt_ids(config, subj)
            for variant in evaluated_variants(config, s)]


# The reference rows (db3d.eval.reference): rule reference, one job per reference of
# db3d.variants.REFERENCES, subject and main cell; its params are the keys that reference reads.
REFERENCE_KEYS = V.REFERENCE_READS  # the declaration itself, not a copy
REFERENCE_PATTERN = V.reference_pattern()


def reference_output(name: str) -> str:
    """The output pattern of rule reference's file `name` (metrics.tsv, info.json)."""
    return f"runs/{{setting}}/{{subject}}/reference/{{reference}}/{name}"


def reference_rule_config(config: dict, setting: str, reference: str) -> str:
    return rule_config(config, setting, REFERENCE_KEYS[reference])


def reference_targets(config: dict, settings: Iterable[str]) -> list[str]:
    """Every reference of every subject and main cell: synthetic subjects only (they have a
    truth); [] otherwise."""
    if config["dataset"]["kind"] != "synthetic":
        return []
    pattern = reference_output(V.EVAL_FILES["metrics"])
    return [pattern.format(setting=s, subject=subj, reference=r)
            for s in settings for subj in subjects(config) for r in V.REFERENCES]


def reference_report_input(config: dict) -> list[str]:
    """results/reference.tsv for the report on the synthetic track ([] otherwise)."""
    return ["results/reference.tsv"] if config["dataset"]["kind"] == "synthetic" else []


def variant_nerf(setting: str, subject: str, prompt_id: str, variant: str) -> str:
    stage, rel = VARIANT_NERF[variant]
    return f"{stage_dir(setting, stage, subject, prompt_id)}/{rel}"


def stage_input(wildcards, stage: str, name: str) -> str:
    """A rule input from `stage`'s folder for the job's cell: its file `name` in
    runs/<the part of the cell's setting that stage depends on>/<subject>[/<prompt_id>]/<its folder>/."""
    prompt_id = getattr(wildcards, "prompt_id", None)
    return f"{stage_dir(wildcards.setting, stage, wildcards.subject, prompt_id)}/{V.STAGES[stage].dir}/{name}"


def subjects_dir(config: dict) -> str:
    """Where the built subjects live: data/subjects/ (the DreamBooth photos, DVC-tracked) or
    data/synthetic/ (generated by db3d.synth: cheap to rebuild, never mixed into data.dvc)."""
    return "data/synthetic" if config["dataset"]["kind"] == "synthetic" else "data/subjects"


def subject_meta(config: dict) -> str:
    """The pattern of a built subject's meta.json: the input every method rule takes."""
    return f"{subjects_dir(config)}/{{subject}}/meta.json"


def prior_checkpoint(config: dict) -> list[str]:
    """The trained weights the backend loads from the workflow's own outputs: the toy prior
    (rule toy_prior, or `dvc pull models/toy.dvc`); [] for the tiny/sd/if backends."""
    return [f"{config['models']['toy']}/model.safetensors"] if config["backend"] == "toy" else []


def prior_report_files(config: dict) -> list[str]:
    """The toy prior's samples grid and training log, which the report shows ([] otherwise)."""
    return [f"{config['models']['toy']}/{name}" for name in ("samples.png", "train_log.json")
            if config["backend"] == "toy"]


# The toy prior's training reads its own section and the camera ranges (its training views).
TOY_PRIOR_KEYS = ("toy_prior", "nerf.camera")
# A synthetic subject's build reads the photo count and the camera ranges (db3d.synth.world).
SYNTHETIC_SUBJECT_KEYS = ("dataset.num_photos", "nerf.camera") + DATA_KEYS


CLASS_PRIORS_OUTPUT = f"cache/{{backend}}/class_priors/{{cls}}/{V.PRIORS_MANIFEST}"


def class_priors_manifest(config: dict, subject: str) -> str:
    return CLASS_PRIORS_OUTPUT.format(backend=config["backend"], cls=class_slug(config, subject))


def class_noun(config: dict, cls: str) -> str:
    """The class noun whose slug is `cls` (class-prior folders are named by slug)."""
    from .data.prompts import load_subjects

    nouns = {slug(n): n for n in load_subjects(config["dataset"]["subjects_table"])["class_noun"]}
    return nouns[cls]


def gpu_count(config: dict) -> int:
    """GPUs one job takes (the `gpu` resource profiles cap): 0 on a CPU-only run."""
    device = config["device"]
    if device == "cpu":
        return 0
    if device.startswith("cuda"):
        return 1
    import torch

    return 1 if torch.cuda.is_available() else 0


# ---- ablation tables: planning-time check; what the report reads ---------------------------------
# (db3d.report and rules/report.smk use these; nothing above depends on them)

# The stages each variant's NeRF went through, in order.
VARIANT_STAGES: dict[str, tuple[str, ...]] = {v.name: v.stages for v in V.VARIANT_LIST}
# Per stage: (file a rule declares as output, the losses/record file beside it), relative to
# runs/<stage setting>/<subject>/ (dreambooth) or runs/<stage setting>/<subject>/<prompt_id>/.
STAGE_FILES: dict[str, tuple[str, str | None]] = {
    s.name: (f"{s.dir}/{s.primary}", f"{s.dir}/{s.record}" if s.record else None)
    for s in V.STAGE_LIST if s.scope != "class"}


def stage_dir(setting: str, stage: str, subject: str, prompt_id: str | None) -> str:
    """The folder holding a stage's outputs for one run of `setting` (shared across cells)."""
    base = f"runs/{stage_setting(setting, stage)}/{subject}"
    return base if V.STAGES[stage].scope == "subject" else f"{base}/{prompt_id}"


def stage_file(setting: str, stage: str, subject: str, prompt_id: str, which: int = 0) -> str | None:
    """`which=0`: the declared output of `stage`; `which=1`: its losses file (None for stage2)."""
    rel = STAGE_FILES[stage][which]
    if rel is None:
        return None
    return f"{stage_dir(setting, stage, subject, prompt_id)}/{rel}"


def report_inputs(config: dict, settings: Iterable[str]) -> list[str]:
    """Every file `db3d report` reads besides the metrics table and the cell configs, as the rule's
    inputs: the evaluation renders (turntable.gif, contact_sheet.png), each stage's declared
    output beside the file the report reads (losses.json; pseudo_views.pt for pseudo_views.png;
    dreambooth_mv.safetensors for dreambooth_mv_losses.json) and each subject's meta.json (its
    photos). Only variants in `config["variants"]`, so no stage is added to the DAG that the
    metrics do not already need. Sorted, without duplicates (cells share upstream stages)."""
    out: set[str] = set()
    for subj in subjects(config):
        out.add(subject_meta(config).format(subject=subj))
        for pid in prompt_ids(config, subj):
            for s in settings:
                for variant in evaluated_variants(config, s):
                    ev = f"runs/{s}/{subj}/{pid}/eval/{variant}"
                    out.update(f"{ev}/{V.EVAL_FILES[k]}" for k in ("turntable", "contact_sheet"))
                    out.update(stage_file(s, st, subj, pid) for st in VARIANT_STAGES[variant])
    return sorted(out)


def check_ablations(config: dict, ablation_dir: str | Path = "ablations") -> None:
    """Raise ConfigError (one line) when a table named in `config["ablations"]` is missing, has a
    column no stage of the configured variants reads (e.g. `eval.*`, `dataset.num_photos`: its
    cells would reuse every NeRF and evaluate nothing), or one of its cells is not a valid config:
    an unknown column, a value the schema refuses, or a partial DreamBooth longer than the full one (e.g. the paper-scale partial_steps table on the
    tiny default, whose full_steps is 60)."""
    import pandas as pd

    from .errors import ConfigError

    ablation_dir = Path(ablation_dir)
    # what the evaluated NeRFs depend on: a cell that changes nothing else is never evaluated
    read = {k for v in config["variants"] if v in V.VARIANTS for st in V.VARIANTS[v].stages for k in STAGE_KEYS[st]}
    for name in config.get("ablations", []) or []:
        path = ablation_dir / f"{name}.tsv"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in ablation_dir.glob("*.tsv"))) or "none"
            raise ConfigError(f"ablations: no table {path} (tables: {known}); fix `ablations` in the config")
        table = pd.read_csv(path, sep="\t")
        if table.empty or len(table.columns) == 0:
            raise ConfigError(f"{path}: the table has no rows; add one row per cell (ablations/README.md)")
        over = []
        for cell in ablation_settings(dict(config, ablations=[name]), ablation_dir):
            try:
                cfg = setting_config(config, cell)
            except ConfigError as e:
                raise ConfigError(f"{path}: cell {cell}: {e}") from None
            db = cfg["dreambooth"]
            if db["partial_steps"] > db["full_steps"] and db["partial_steps"] not in over:
                over.append(db["partial_steps"])
        for column in table.columns:
            if column != "seed" and not _depends(resolve_key(column), read):
                raise ConfigError(
                    f"{path}: column {column} ({resolve_key(column)}) is read by no stage of the variants "
                    f"{', '.join(config['variants'])}, so its cells would evaluate nothing; sweep a key a stage "
                    "reads (db3d.variants) or drop the column")
        if over:
            full = setting_config(config, main_settings(config)[0])["dreambooth"]["full_steps"]
            tiny = ablation_dir / f"{name}_tiny.tsv"
            fix = (f"this table is paper-scale (full_steps 800): run it with --configfile config/paper.yaml, "
                   f"or ablations=[{tiny.stem}] on the tiny default" if tiny.is_file()
                   else "lower those rows or raise dreambooth.full_steps")
            raise ConfigError(f"{path}: partial_steps {', '.join(map(str, over))} exceed dreambooth.full_steps "
                              f"({full}) of this config; {fix}")


def check_variants(config: dict) -> None:
    """Raise ConfigError (one line) for a variant db3d.variants does not declare, or one the backend
    cannot run (a latent-space NeRF on a pixel-space backend)."""
    from .errors import ConfigError

    unknown = [v for v in config["variants"] if v not in V.VARIANTS]
    if unknown:
        raise ConfigError(f"variants: unknown {', '.join(unknown)} (known: {', '.join(V.VARIANTS)}); "
                          "fix `variants` in the config")
    spec = backends().get(config["backend"])
    if spec is None:
        raise ConfigError(f"backend {config['backend']!r} is not registered (known: {', '.join(sorted(backends()))}); "
                          "fix `backend` in the config")
    space = spec.space_of(config)
    for v in config["variants"]:
        if V.VARIANTS[v].latent and space != "latent":
            raise ConfigError(f"variants: {v} needs a latent-space backend, and backend {spec.name} works in {space} "
                              f"space; drop {v} from `variants` or use a latent backend "
                              f"({', '.join(n for n, s in sorted(backends().items()) if s.space == 'latent')}, "
                              "or tiny with models.tiny_space: latent)")


def checked_ablation_settings(config: dict, ablation_dir: str | Path = "ablations") -> list[str]:
    """`ablation_settings` after `check_variants` and `check_ablations`: for the Snakefile's
    ABLATION_SETTINGS (one planning-time check of the whole experiment)."""
    check_variants(config)
    check_ablations(config, ablation_dir)
    return ablation_settings(config, ablation_dir)


def userstudy_report_input(path: str | Path = "results/userstudy.tsv") -> list[str]:
    """The user-study summary as an input of the report: `[absolute path]` when it exists, else [].

    Absolute on purpose: rule userstudy_analyse declares the relative path as its output, and an
    input written the same way would pull the analysis - and through its manifest.json input the
    study build, which would replace the rater links - into the report's DAG whenever their own
    inputs are newer. By the absolute path Snakemake only checks that the file exists (and
    rebuilds the report when it changes); it never schedules the study."""
    p = Path(path)
    return [str(p.resolve())] if p.is_file() else []
