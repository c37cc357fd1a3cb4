# Evaluation of every variant's NeRF at fixed cameras, the tidy metrics table and the report.


rule evaluate:
    input:
        subject=ancient(SUBJECT_META),  # DVC-tracked or generated once: a dvc pull re-triggers nothing
        nerf=lambda w: wf.variant_nerf(w.setting, w.subject, w.prompt_id, w.variant),
    output:
        metrics=wf.eval_output("metrics"),
        mesh=wf.eval_output("mesh"),
        mesh_obj=wf.eval_output("mesh_obj"),
        turntable=wf.eval_output("turntable"),
        contact_sheet=wf.eval_output("contact_sheet"),
        info=wf.eval_output("info"),
    params:
        cfg=lambda w: wf.rule_config(config, w.setting, wf.EVAL_KEYS),
    log:
        "logs/{setting}/{subject}/{prompt_id}/eval_{variant}.log",
    resources:
        **GPU["evaluate"],
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d evaluate --config-json {params.cfg:q} --nerf {input.nerf}"
        " --subject-dir $(dirname {input.subject}) --prompt-id {wildcards.prompt_id}"
        " --variant {wildcards.variant} --setting {wildcards.setting:q}"
        " --out-dir $(dirname {output.metrics}) > {log} 2>&1"


rule reference:
    # a reference NeRF of db3d.variants.REFERENCES (untrained: the initial field; oracle: it fit to
    # true renders) through the same ground-truth evaluation (db3d.eval.reference)
    input:
        subject=ancient(SUBJECT_META),
    output:
        metrics=wf.reference_output(V.EVAL_FILES["metrics"]),
        info=wf.reference_output(V.REFERENCE_INFO),
    wildcard_constraints:
        reference=wf.REFERENCE_PATTERN,
    params:
        cfg=lambda w: wf.reference_rule_config(config, w.setting, w.reference),
    log:
        "logs/{setting}/{subject}/reference_{reference}.log",
    resources:
        **GPU["reference"],
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d reference --kind {wildcards.reference} --config-json {params.cfg:q}"
        " --subject-dir $(dirname {input.subject}) --setting {wildcards.setting:q}"
        " --out-dir $(dirname {output.metrics}) > {log} 2>&1"


rule collect_reference:
    input:
        wf.reference_targets(config, MAIN_SETTINGS),
    output:
        "results/reference.tsv",
    log:
        "logs/collect_reference.log",
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d collect-metrics {input:q} --out {output} > {log} 2>&1"


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
