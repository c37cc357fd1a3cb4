# The toy backend's prior (backend: toy): a small text-to-image model trained from scratch on renders
# of random synthetic objects (db3d.synth.prior). Its checkpoint is versioned with DVC
# (models/toy.dvc, remote models/dvc-remote/ committed in the repo), so `dvc pull models/toy.dvc`
# fetches it on any clone and this rule never runs; every model rule takes it as ancient() input
# (PRIOR), so a pulled copy re-triggers nothing downstream. Which prior the results are made with
# is keyed by params instead: models.toy_sha256 and the toy_prior recipe (db3d.workflow.rule_config).


rule toy_prior:
    output:
        model=f"{config['models']['toy']}/model.safetensors",
        samples=f"{config['models']['toy']}/samples.png",
        train_log=f"{config['models']['toy']}/train_log.json",
    params:
        cfg=lambda w: wf.rule_config(config, None, wf.TOY_PRIOR_KEYS),
    # all cores: nothing else can run yet (every model rule waits for it), and torch follows the
    # OMP_NUM_THREADS Snakemake sets from `threads`
    threads: workflow.cores
    log:
        "logs/toy_prior.log",
    resources:
        **GPU["toy-prior"],
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d toy-prior --config-json {params.cfg:q} --out $(dirname {output.model}) > {log} 2>&1"
