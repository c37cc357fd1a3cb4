# The method: class priors -> DreamBooth (partial, full) -> stage 1 NeRF -> stage 2 pseudo views
# -> stage 3 multi-view DreamBooth -> stage 3 NeRF, and the baselines (naive, latent_nerf, ...).
# Stages, variants and file names are declared in db3d.variants; paths come from db3d.workflow.
# Folders are keyed by the part of the setting each stage depends on (wf.stage_setting), so an
# ablation cell reuses every upstream result it shares with another cell.


rule class_priors:
    input:
        prior=ancient(PRIOR),  # the toy backend's trained weights ([] for tiny/sd/if)
    output:
        wf.CLASS_PRIORS_OUTPUT,
    params:
        cfg=lambda w: wf.rule_config(config, None, wf.STAGE_KEYS["class_priors"]),
        class_noun=lambda w: wf.class_noun(config, w.cls),
    log:
        "logs/class_priors/{backend}/{cls}.log",
    resources:
        **GPU["class-priors"],
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d class-priors --config-json {params.cfg:q} --class-noun {params.class_noun:q}"
        " --out $(dirname {output}) > {log} 2>&1"


rule dreambooth:
    input:
        subject=ancient(SUBJECT_META),  # DVC-tracked or generated once: a dvc pull re-triggers nothing
        prior=ancient(PRIOR),
        priors=lambda w: wf.class_priors_manifest(config, w.subject),
    output:
        partial=wf.stage_output("dreambooth", V.PARTIAL),
        full=wf.stage_output("dreambooth", V.FULL),
        losses=wf.stage_output("dreambooth", V.LOSSES),
    params:
        cfg=lambda w: wf.stage_rule_config(config, w.setting, "dreambooth"),
    log:
        "logs/{setting}/{subject}/dreambooth.log",
    resources:
        **GPU["dreambooth"],
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d dreambooth --config-json {params.cfg:q} --subject-dir $(dirname {input.subject})"
        " --priors $(dirname {input.priors}) --out-dir $(dirname {output.losses}) > {log} 2>&1"


rule nerf_stage1:
    input:
        subject=ancient(SUBJECT_META),  # DVC-tracked or generated once: a dvc pull re-triggers nothing
        prior=ancient(PRIOR),
        dreambooth=lambda w: wf.guide_input(w, "stage1"),
    output:
        nerf=wf.stage_output("stage1", V.NERF),
        losses=wf.stage_output("stage1", V.LOSSES),
    params:
        cfg=lambda w: wf.stage_rule_config(config, w.setting, "stage1"),
    log:
        "logs/{setting}/{subject}/{prompt_id}/stage1.log",
    resources:
        **GPU["nerf"],
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d nerf --stage stage1 --config-json {params.cfg:q} --dreambooth {input.dreambooth}"
        " --subject-dir $(dirname {input.subject}) --prompt-id {wildcards.prompt_id}"
        " --out-dir $(dirname {output.nerf}) > {log} 2>&1"


rule pseudo_views:
    input:
        subject=ancient(SUBJECT_META),  # DVC-tracked or generated once: a dvc pull re-triggers nothing
        prior=ancient(PRIOR),
        nerf=lambda w: wf.stage_input(w, "stage1", V.NERF),
        dreambooth=lambda w: wf.stage_input(w, "dreambooth", V.FULL),
    output:
        views=wf.stage_output("stage2", V.PSEUDO_VIEWS),
    params:
        cfg=lambda w: wf.stage_rule_config(config, w.setting, "stage2"),
    log:
        "logs/{setting}/{subject}/{prompt_id}/stage2.log",
    resources:
        **GPU["pseudo-views"],
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d pseudo-views --config-json {params.cfg:q} --nerf {input.nerf}"
        " --dreambooth {input.dreambooth} --subject-dir $(dirname {input.subject})"
        " --prompt-id {wildcards.prompt_id} --out-dir $(dirname {output.views}) > {log} 2>&1"


rule dreambooth_multiview:
    input:
        subject=ancient(SUBJECT_META),  # DVC-tracked or generated once: a dvc pull re-triggers nothing
        prior=ancient(PRIOR),
        priors=lambda w: wf.class_priors_manifest(config, w.subject),
        init=lambda w: wf.stage_input(w, "dreambooth", V.PARTIAL),
        views=lambda w: wf.stage_input(w, "stage2", V.PSEUDO_VIEWS),
    output:
        model=wf.stage_output("multiview", V.MULTIVIEW_MODEL),
    params:
        cfg=lambda w: wf.stage_rule_config(config, w.setting, "multiview"),
    log:
        "logs/{setting}/{subject}/{prompt_id}/dreambooth_multiview.log",
    resources:
        **GPU["dreambooth"],
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d dreambooth --config-json {params.cfg:q} --subject-dir $(dirname {input.subject})"
        " --priors $(dirname {input.priors}) --init {input.init} --pseudo-views {input.views}"
        " --out-dir $(dirname {output.model}) > {log} 2>&1"


rule nerf_stage3:
    input:
        subject=ancient(SUBJECT_META),  # DVC-tracked or generated once: a dvc pull re-triggers nothing
        prior=ancient(PRIOR),
        dreambooth=lambda w: wf.guide_input(w, "stage3"),
        views=lambda w: wf.stage_input(w, "stage2", V.PSEUDO_VIEWS),
    output:
        nerf=wf.stage_output("stage3", V.NERF),
        losses=wf.stage_output("stage3", V.LOSSES),
    params:
        cfg=lambda w: wf.stage_rule_config(config, w.setting, "stage3"),
    log:
        "logs/{setting}/{subject}/{prompt_id}/stage3.log",
    resources:
        **GPU["nerf"],
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d nerf --stage stage3 --config-json {params.cfg:q} --dreambooth {input.dreambooth}"
        " --pseudo-views {input.views} --subject-dir $(dirname {input.subject})"
        " --prompt-id {wildcards.prompt_id} --out-dir $(dirname {output.nerf}) > {log} 2>&1"


rule nerf_baseline:
    # every NeRF stage outside DreamBooth3D's chain (db3d.variants.baseline_stages): naive =
    # DreamBooth+Fusion (full DreamBooth -> one SDS NeRF), latent_nerf = the same in latent space,
    # and any baseline guided by another checkpoint or by the base model (no --dreambooth)
    input:
        subject=ancient(SUBJECT_META),  # DVC-tracked or generated once: a dvc pull re-triggers nothing
        prior=ancient(PRIOR),
        dreambooth=lambda w: wf.guide_input(w, w.baseline),
    output:
        nerf=wf.stage_output("{baseline}", V.NERF),
        losses=wf.stage_output("{baseline}", V.LOSSES),
    wildcard_constraints:
        baseline=wf.BASELINE_PATTERN,
    params:
        cfg=lambda w: wf.stage_rule_config(config, w.setting, w.baseline),
        dreambooth=lambda w, input: wf.guide_option(input.dreambooth),
    log:
        "logs/{setting}/{subject}/{prompt_id}/{baseline}.log",
    resources:
        **GPU["nerf"],
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d nerf --stage {wildcards.baseline} --config-json {params.cfg:q}"
        " {params.dreambooth} --subject-dir $(dirname {input.subject})"
        " --prompt-id {wildcards.prompt_id} --out-dir $(dirname {output.nerf}) > {log} 2>&1"
