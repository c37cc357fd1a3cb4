# Evaluation of every variant's NeRF at fixed cameras, the tidy metrics table and the report.


rule evaluate:
    input:
        subject="data/subjects/{subject}/meta.json",
        nerf=lambda w: wf.variant_nerf(w.setting, w.subject, w.prompt_id, w.variant),
    output:
        metrics="runs/{setting}/{subject}/{prompt_id}/eval/{variant}/metrics.tsv",
    params:
        cfg=lambda w: wf.rule_config(config, w.setting, wf.EVAL_KEYS),
    log:
        "logs/{setting}/{subject}/{prompt_id}/eval_{variant}.log",
    resources:
        **GPU,
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d evaluate --config-json {params.cfg:q} --nerf {input.nerf}"
        " --subject-dir $(dirname {input.subject}) --prompt-id {wildcards.prompt_id}"
        " --variant {wildcards.variant} --setting {wildcards.setting:q}"
        " --out-dir $(dirname {output.metrics}) > {log} 2>&1"


rule collect_metrics:
    input:
        wf.eval_targets(config, ALL_SETTINGS),
    output:
        "results/metrics.tsv",
    log:
        "logs/collect_metrics.log",
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d collect-metrics {input:q} --out {output} > {log} 2>&1"


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
