# The pairwise user study (docs/userstudy.md). Not part of `all`: answers come from people.
#   snakemake --cores 1 studies/main/manifest.json        build the study from the main setting
#   python -m db3d userstudy serve --study studies/main    collect answers (links: studies/main/raters.tsv)
#   snakemake --cores 1 --forcerun userstudy_analyse results/userstudy.tsv
# The analysis needs studies/main/responses.sqlite (made by `serve`); --forcerun because answers
# land in the SQLite write-ahead log first, so the database file's mtime lags behind them.
# The study folder holds secrets (rater tokens, admin token) and personal answers: never commit it.

USERSTUDY_NAME = config["userstudy"]["name"]
USERSTUDY_SETTING = MAIN_SETTINGS[0]


rule userstudy_build:
    input:
        # the evaluate rule writes turntable.gif beside metrics.tsv
        evals=lambda w: wf.eval_targets(config, [USERSTUDY_SETTING]),
        subjects=lambda w: expand(SUBJECT_META, subject=wf.subjects(config)),
        prompts=config["dataset"]["prompts_table"],
        subjects_table=config["dataset"]["subjects_table"],
    output:
        # protected: a rebuild would replace the rater links; `build` also refuses to replace a
        # study that holds answers
        manifest=protected("studies/{study}/manifest.json"),
    wildcard_constraints:
        study=r"[A-Za-z0-9_.-]+",
    params:
        setting=USERSTUDY_SETTING,
        data=wf.subjects_dir(config),
        seed=config["userstudy"]["seed"],
        raters=config["userstudy"]["raters"],
    log:
        "logs/userstudy/{study}_build.log",
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d userstudy build --runs runs --setting {params.setting:q} --out $(dirname {output.manifest})"
        " --seed {params.seed} --raters {params.raters} --data {params.data:q}"
        " --prompts-table {input.prompts:q} --subjects-table {input.subjects_table:q} > {log} 2>&1"


rule userstudy_analyse:
    input:
        manifest=f"studies/{USERSTUDY_NAME}/manifest.json",
        responses=f"studies/{USERSTUDY_NAME}/responses.sqlite",
    output:
        summary="results/userstudy.tsv",
        pairs="results/userstudy_pairs.tsv",
        raters="results/userstudy_raters.tsv",
    log:
        "logs/userstudy/analyse.log",
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d userstudy analyse --study $(dirname {input.manifest}) --responses {input.responses}"
        " --out {output.summary} > {log} 2>&1"
