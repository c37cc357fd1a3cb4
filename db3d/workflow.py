"""What the Snakefile asks of the config: targets, per-rule configs and cache keys.

The rules stay declarative; every decision about paths and parameters lives here and is tested.

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

from .config import apply_overrides, format_setting, parse_setting, resolve_key

# Config keys every rule sees (the model itself and where it runs).
COMMON_KEYS = ("backend", "device", "precision", "models.sd", "models.if", "models.tiny_space", "seed")
DATA_KEYS = ("dataset.prompts_table", "dataset.subjects_table")

_DREAMBOOTH = ("dreambooth.partial_steps", "dreambooth.full_steps", "dreambooth.learning_rate",
               "dreambooth.batch_size", "dreambooth.prior_loss_weight", "dreambooth.num_class_images",
               "dreambooth.class_sample_steps", "dreambooth.train_text_encoder", "dreambooth.lora_rank")
_PRIORS = ("dreambooth.num_class_images", "dreambooth.class_sample_steps")
_SDS = ("nerf", "sds")
_STAGE1 = _DREAMBOOTH + _SDS + ("stage1",) + DATA_KEYS
_STAGE2 = _STAGE1 + ("stage2",)
_MULTIVIEW = _STAGE2 + ("dreambooth.multiview_steps",)

# For each stage: every config key its output depends on, its own and its inputs'.
STAGE_KEYS: dict[str, tuple[str, ...]] = {
    "class_priors": _PRIORS,
    "dreambooth": _DREAMBOOTH,
    "stage1": _STAGE1,
    "stage2": _STAGE2,
    "multiview": _MULTIVIEW,
    "stage3": _MULTIVIEW + ("stage3",),
    "naive": _DREAMBOOTH + _SDS + ("naive",) + DATA_KEYS,
    "latent_nerf": _DREAMBOOTH + _SDS + ("latent_nerf",) + DATA_KEYS,
}

# The NeRF each variant is judged by, relative to runs/<setting>/<subject>/<prompt_id>/.
VARIANT_NERF = {
    "dreambooth3d": ("stage3", "stage3/nerf.pt"),
    "single_stage": ("stage1", "stage1/nerf.pt"),
    "naive": ("naive", "naive/nerf.pt"),
    "latent_nerf": ("latent_nerf", "latent_nerf/nerf.pt"),
}


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
    """The full config of one cell: the workflow config plus the setting's overrides and seed."""
    params = parse_setting(setting)
    cfg = apply_overrides({k: v for k, v in config.items() if k != "seed"}, params)
    cfg["seed"] = int(params.get("seed", config["seeds"][0]))
    return cfg


def rule_config(config: dict, setting: str | None, keys: Iterable[str]) -> str:
    """JSON of only the config keys a rule reads: its `params`, so Snakemake re-runs it exactly
    when one of them changes. `setting=None` for rules shared by all cells (class priors)."""
    cfg = resolved(config, setting) if setting else dict(config, seed=0)
    return json.dumps(_select(cfg, tuple(COMMON_KEYS) + tuple(keys)), sort_keys=True)


def stage_rule_config(config: dict, setting: str, stage: str) -> str:
    return rule_config(config, setting, STAGE_KEYS[stage])


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


def eval_targets(config: dict, settings: Iterable[str]) -> list[str]:
    return [f"runs/{s}/{subj}/{pid}/eval/{variant}/metrics.tsv"
            for s in settings
            for subj in subjects(config)
            for pid in prompt_ids(config, subj)
            for variant in config["variants"]]


def variant_nerf(setting: str, subject: str, prompt_id: str, variant: str) -> str:
    stage, rel = VARIANT_NERF[variant]
    return f"runs/{stage_setting(setting, stage)}/{subject}/{prompt_id}/{rel}"


# Evaluation reads the eval section, the CLIP/DINO ids and the prompt tables.
EVAL_KEYS = ("eval", "models.clip", "models.dino", "nerf") + DATA_KEYS


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
