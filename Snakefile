# DreamBooth3D as a Snakemake workflow: `snakemake --cores all reports/main.pdf`.
# The stage graph lives in rules/*.smk; paths and per-rule configs come from db3d.workflow;
# every rule calls `python -m db3d <command>` and writes a log under logs/.
from snakemake.utils import min_version

import db3d.config
import db3d.devices

min_version("8.0")


configfile: "config/config.yaml"


db3d.config.check_snakemake_config(config)  # --config strings -> schema types; one line per mistake

import json
import sys

import db3d.variants as V  # the stages, variants and file names, declared once
import db3d.workflow as wf
from db3d.data.prompts import prompt_id_pattern
from db3d.errors import Db3dError

MAIN_SETTINGS = wf.main_settings(config)
SUBJECT_META = wf.subject_meta(config)  # data/subjects/... (DreamBooth photos) or data/synthetic/...
PRIOR = wf.prior_checkpoint(config)  # the toy prior's weights, an input of every model rule
# Planning-time check of the variants (declared in db3d.variants, runnable by the backend) and of
# the ablation tables named in the config (missing table, unknown column, a column no evaluated
# stage reads, a value the schema refuses, partial_steps > full_steps): one line and exit 1.
try:
    ABLATION_SETTINGS = wf.checked_ablation_settings(config)
except Db3dError as e:
    sys.exit(f"db3d: error: {e}")
# Each model rule's resources by its db3d command: slots of this host's GPUs (db3d.devices: a
# light job 1 of config device_slots, DreamBooth all; the local total gpu_slots = gpu x device_slots)
try:
    GPU = db3d.devices.plan_resources(workflow, config, wf.gpu_count(config))
except Db3dError as e:
    sys.exit(f"db3d: error: {e}")
ALL_SETTINGS = MAIN_SETTINGS + [s for s in ABLATION_SETTINGS if s not in MAIN_SETTINGS]


wildcard_constraints:
    subject=r"[A-Za-z0-9_]+",
    prompt_id=prompt_id_pattern(config["dataset"]["prompts_table"]),  # an unknown prompt: refused at planning
    variant=wf.VARIANT_PATTERN,  # the variants of db3d.variants
    cls=r"[a-z0-9_]+",
    setting=r"[A-Za-z0-9_.-]+~[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.-]+~[A-Za-z0-9_.+-]+)*",


include: "rules/data.smk"
include: "rules/prior.smk"
include: "rules/method.smk"
include: "rules/eval.smk"
include: "rules/report.smk"
include: "rules/userstudy.smk"
include: "rules/bench.smk"


rule all:
    default_target: True
    input:
        "reports/main.pdf",
