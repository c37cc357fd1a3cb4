# Benchmarks of the method's stages (docs/performance.md). Not part of `all`; run one explicitly:
#   snakemake --cores 1 reports/bench/quick.tsv
#   snakemake --cores 1 --configfile config/paper.yaml reports/bench/paper.tsv
# {name} picks a preset below (extra `python -m db3d bench` arguments); any other name benchmarks the
# workflow's config (config files + --config) on every row with the default options.

BENCH_PRESETS = {
    # the per-step rows only (a minute or two on a GPU)
    "quick": "--rows build,db,ref,unet,sds --repeats 3",
    # SD 2.1-base architecture with random weights: no model download needed
    "sd-random": "--set backend=sd --set models.sd=random",
    # optimisations that do not change what is computed, one variant each
    "sweep": (
        "--variant 'bf16 precision=bf16' --variant 'tf32 tf32=1' --variant 'chlast channels_last=1'"
        " --variant 'classic attention=classic' --variant 'nogrid occgrid=off rows=sds'"
        " --variant 'nondet deterministic=0 rows=sds,db'"
    ),
    # does every stage fit a 24 GiB card? (the allocator is capped; an overflow is an `oom` row)
    "mem24": "--rows build,db,ref,unet,sds,sds3,img2img,priors,eval --memory-limit-gib 24",
}


rule bench:
    output:
        tsv="reports/bench/{name}.tsv",
        md="reports/bench/{name}.md",
    wildcard_constraints:
        name=r"[A-Za-z0-9_.-]+",
    params:
        cfg=lambda w: json.dumps(config, sort_keys=True),
        extra=lambda w: BENCH_PRESETS.get(w.name, ""),
    log:
        "logs/bench/{name}.log",
    resources:
        **GPU["bench"],
    conda:
        "../envs/gpu.yaml"
    shell:
        "python -m db3d bench --config-json {params.cfg:q} {params.extra} --name {wildcards.name}"
        " --out {output.tsv} > {log} 2>&1"
