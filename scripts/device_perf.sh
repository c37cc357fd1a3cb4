#!/usr/bin/env bash
# torch.compile inside the real stage, and what each compiled piece buys (docs/performance.md,
# "Compilation"). From the repository root on a lent GPU machine (set-up: scripts/device_env.sh):
#
#   OUT=/some/folder bash scripts/device_perf.sh
#
# 1. `python -m db3d.bench.stagecheck`: the stage-1 job (`stages.fit_nerf`, config/paper.yaml, SD 2.1-base
#    architecture with random weights, STAGE_ITERS iterations, seed 0) with compile_unet false, then true;
#    per-iteration wall clock: steady it/s, the compile warm-up, and whether the losses agree.
# 2. The bench's UNet / SDS / DreamBooth rows, eager against each compiled piece: everything (UNet for
#    training too, CUDA graphs for calls without autograd, the VAE encoder), CUDA graphs + UNet, and
#    the UNet alone. (Run 2026-11-30 on an H200: reports/bench/sd_compile_ab.md, stage1_compile_check.json;
#    compile_unet: true now compiles the CUDA-graph path only, stages.STAGE_COMPILE.)
# Everything ends within DB3D_PERF_LIMIT_S seconds (default 560). $OUT gets (flat, at most 8 files):
# device_perf.log, results.tgz (stage1_*.json, sd_compile_ab.{tsv,md}), and for the next machine
# nerfacc_cuda.so + cache.tgz.part* (carry them as .carry/nerfacc/ and .carry/inductor/).
set -uo pipefail

T0=$SECONDS
LIMIT=${DB3D_PERF_LIMIT_S:-560}
ITERS=${STAGE_ITERS:-300}
OUT=${OUT:-/tmp/db3d-perf}
mkdir -p "$OUT/res"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/device_perf.log"
source scripts/device_env.sh

left() { echo $((LIMIT - (SECONDS - T0))); }
say() { echo "[$((SECONDS - T0))s] $*"; }

main() {
    say "== environment + carried wheels"
    db3d_env || return 1
    say "== nerfacc CUDA ops"
    db3d_nerfacc

    local S=(--config config/paper.yaml --set backend=sd --set models.sd=random --set device=cuda
             --set stage1.iters="$ITERS")
    say "== stage 1 job, compile_unet false ($ITERS iterations)"
    timeout 200 "$PY" -m db3d.bench.stagecheck "${S[@]}" --set compile_unet=false --label eager \
        --out "$OUT/res/stage1_eager.json" 2>&1 | grep -v "it/s]$" | tail -n 40
    say "== stage 1 job, compile_unet true"
    timeout 260 "$PY" -m db3d.bench.stagecheck "${S[@]}" --set compile_unet=true --label compiled \
        --out "$OUT/res/stage1_compiled.json" 2>&1 | grep -v "it/s]$" | tail -n 40
    if [ -f "$OUT/res/stage1_eager.json" ] && [ -f "$OUT/res/stage1_compiled.json" ]; then
        "$PY" -m db3d.bench.stagecheck --compare "$OUT/res/stage1_eager.json" "$OUT/res/stage1_compiled.json" \
            | tee "$OUT/res/stage1_compare.json"
    fi

    local budget=$(( $(left) - 75 ))
    if [ "$budget" -gt 40 ]; then
        say "== bench: eager vs compiled pieces (time budget ${budget}s)"
        timeout -s INT -k 20 $((budget + 40)) "$PY" -m db3d bench --config config/paper.yaml \
            --set backend=sd --set models.sd=random --name sd-compile-ab --out "$OUT/res/sd_compile_ab.tsv" \
            --time-budget "$budget" --sds-repeats 2 --sds-resolutions 64 --compile 0 --rows unet,sds,db \
            --variant "cgvae compile=1 cudagraphs=1 compile_vae=1 rows=db,unet,sds" \
            --variant "cg compile=1 cudagraphs=1 rows=unet,sds" \
            --variant "unetonly compile=1 rows=unet,sds" 2>&1 | grep -v "it/s]$"
        say "bench exit code $?"
    else
        say "skipping the bench (time)"
    fi

    say "== builds for the next machine"
    db3d_keep_builds "$OUT"
    tar czf "$OUT/results.tgz" -C "$OUT" res && rm -rf "$OUT/res"
    ls -la "$OUT"
    say "done"
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
