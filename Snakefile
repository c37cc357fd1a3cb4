# DreamBooth3D as a Snakemake workflow: `snakemake --cores all reports/main.pdf`.
# The stage graph lives in rules/*.smk; paths and per-rule configs come from db3d.workflow;
# every rule calls `python -m db3d <command>` and writes a log under logs/.
from snakemake.utils import min_version, validate

min_version("8.0")


configfile: "config/config.yaml"


validate(config, "config/schema.yaml")

import json

import db3d.workflow as wf

MAIN_SETTINGS = wf.main_settings(config)
ABLATION_SETTINGS = wf.ablation_settings(config)
ALL_SETTINGS = MAIN_SETTINGS + [s for s in ABLATION_SETTINGS if s not in MAIN_SETTINGS]


wildcard_constraints:
    subject=r"[A-Za-z0-9_]+",
    prompt_id=r"[A-Za-z0-9_]+",
    variant=r"dreambooth3d|naive|single_stage|latent_nerf",
    cls=r"[a-z0-9_]+",
    setting=r"[A-Za-z0-9_.-]+~[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.-]+~[A-Za-z0-9_.+-]+)*",


include: "rules/data.smk"
include: "rules/method.smk"
include: "rules/eval.smk"
include: "rules/report.smk"
include: "rules/userstudy.smk"


rule all:
    default_target: True
    input:
        "reports/main.pdf",
