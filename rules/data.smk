# The subjects, one folder each with photos, masks and meta.json, by `dataset.kind`:
# - dreambooth: rule `dataset` builds data/subjects/<subject>/ from the google/dreambooth folder
#   (config dataset.source); the tables config/subjects.tsv, config/prompts.tsv are committed,
#   written by `python -m db3d prompts`;
# - synthetic: rule `synthetic_subject` renders data/synthetic/<subject>/ (front-biased photos of a
#   procedural object, plus object.json: its true geometry) from a row of config/synthetic/subjects.tsv.
# `dataset_all` builds every subject of the configured table.
from db3d.data.prompts import load_subjects

DATASET_ALL_SUBJECTS = list(load_subjects(config["dataset"]["subjects_table"])["subject"])


rule dataset:
    input:
        # the raw photos never change, and dataset.source only says where a copy of them lies:
        # only a missing meta.json (or a new table) triggers a build (`--forcerun dataset` too)
        table=config["dataset"]["subjects_table"],
    output:
        # written last, inside a folder renamed into place whole (images_<res>/, masks_<res>/);
        # update(): Snakemake keeps a built meta.json while the job runs and restores it if the
        # rebuild fails (its default deletes it first, leaving a built subject without it)
        meta=update("data/subjects/{subject}/meta.json"),
    params:
        # a function of `input`: Snakemake leaves such params out of its params rerun trigger, so
        # pointing dataset.source at another folder (or a broken one) rebuilds no built subject
        source=lambda w, input: config["dataset"]["source"],
        min_images=config["dataset"]["min_images"],
    log:
        "logs/dataset/{subject}.log",
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d dataset --source {params.source:q} --subject {wildcards.subject}"
        " --out $(dirname {output.meta}) --subjects-table {input.table:q}"
        " --min-images {params.min_images} > {log} 2>&1"


rule synthetic_subject:
    input:
        table=config["dataset"]["subjects_table"],
    output:
        # written last, inside a folder renamed into place whole; update(): kept across a failed rebuild
        meta=update("data/synthetic/{subject}/meta.json"),
    params:
        cfg=lambda w: wf.rule_config(config, None, wf.SYNTHETIC_SUBJECT_KEYS),
    log:
        "logs/synthetic_subject/{subject}.log",
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d synthetic-subject --config-json {params.cfg:q} --subject {wildcards.subject}"
        " --out $(dirname {output.meta}) > {log} 2>&1"


rule dataset_all:
    input:
        expand(SUBJECT_META, subject=DATASET_ALL_SUBJECTS),
