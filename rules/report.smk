# The report: reports/main.pdf, reports/main.html and reports/summary.md from the metrics table, the
# run folders, each cell's config and the paper's published numbers (config/paper_results.yaml).
from db3d.report.common import report_outputs
from db3d.config import REPO_ROOT
from db3d.report.paper import PAPER_RESULTS_PATH


rule cell_config:
    # the resolved config of one cell, for provenance in the report
    output:
        "runs/{setting}/config.json",
    params:
        cfg=lambda w: json.dumps(wf.resolved(config, w.setting), sort_keys=True),
    log:
        "logs/{setting}/cell_config.log",
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d write-json --json {params.cfg:q} --out {output} > {log} 2>&1"


rule report:
    input:
        metrics="results/metrics.tsv",
        configs=expand("runs/{setting}/config.json", setting=ALL_SETTINGS),
        # what the report reads from the run folders and data/ (galleries, losses.json, photos);
        # all of it is upstream of the metrics already, so this adds no job
        runs=wf.report_inputs(config, ALL_SETTINGS),
        ablation_tables=expand("ablations/{name}.tsv", name=config.get("ablations", [])),
        # results/userstudy.tsv when it exists, by its absolute path, so the report never schedules
        # the user study (wf.userstudy_report_input; answers come from people)
        userstudy=lambda w: wf.userstudy_report_input(),
        # the toy prior's samples and training log (the report's "trained prior" section)
        prior=wf.prior_report_files(config),
        # synthetic track: the untrained-field reference rows of the ground-truth tables
        reference=wf.reference_report_input(config),
        # the paper's Table 1 and user-study bars, with their citation
        paper=str(PAPER_RESULTS_PATH.relative_to(REPO_ROOT)),
    output:
        # the PDF, the self-contained HTML page beside it, summary.md (the README links to it)
        **report_outputs("reports/main.pdf"),
    params:
        cfg=lambda w: json.dumps(wf.resolved(config, MAIN_SETTINGS[0]), sort_keys=True),
    log:
        "logs/report.log",
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d report --config-json {params.cfg:q} --metrics {input.metrics} --runs runs"
        " --out {output.pdf} > {log} 2>&1"
