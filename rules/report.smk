# The report: reports/main.pdf from the metrics table, the run folders and each cell's config.


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
    output:
        "reports/main.pdf",
    params:
        cfg=lambda w: json.dumps(wf.resolved(config, MAIN_SETTINGS[0]), sort_keys=True),
    log:
        "logs/report.log",
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d report --config-json {params.cfg:q} --metrics {input.metrics} --runs runs"
        " --out {output} > {log} 2>&1"
