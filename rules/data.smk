# The dataset: one rule per subject builds data/subjects/<subject>/ (crops, masks, meta.json) from
# the google/dreambooth folder (config dataset.source); `dataset_all` builds all 30 subjects.
# The subject and prompt tables (config/*.tsv) are committed, written by `python -m db3d prompts`.
from db3d.data.build import local_photos
from db3d.data.prompts import load_subjects

DATASET_ALL_SUBJECTS = list(load_subjects(config["dataset"]["subjects_table"])["subject"])


rule dataset:
    input:
        # the raw photos never change: only a missing meta.json (or a new table) triggers a build
        photos=lambda w: ancient(local_photos(config["dataset"]["source"], w.subject)),
        table=config["dataset"]["subjects_table"],
    output:
        # written last, inside a folder renamed into place whole (images_<res>/, masks_<res>/)
        meta="data/subjects/{subject}/meta.json",
    params:
        source=config["dataset"]["source"],
        min_images=config["dataset"]["min_images"],
    log:
        "logs/dataset/{subject}.log",
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d dataset --source {params.source:q} --subject {wildcards.subject}"
        " --out $(dirname {output.meta}) --subjects-table {input.table:q}"
        " --min-images {params.min_images} > {log} 2>&1"


rule dataset_all:
    input:
        expand("data/subjects/{subject}/meta.json", subject=DATASET_ALL_SUBJECTS),
