#!/usr/bin/env bash
# The GPU benchmark run, in one command (docs/performance.md, "Device run"). From the repository root:
#
#   OUT=/some/folder bash scripts/device_bench.sh
#
# For a machine that cannot download anything (set-up: scripts/device_env.sh): installs the wheels
# carried in .carry/wheels, loads nerfacc's CUDA ops (carried prebuilt in .carry/nerfacc, else a JIT
# build of ~80 s) and torch.compile's cache (.carry/inductor, if carried). DB3D_BENCH_PARTS (comma list,
# default test,sd,stage,if) picks what runs, in this order:
#   test   the GPU tests of the directly captured CUDA graphs (tests/test_graphs.py -m gpu)
#   sd     `sd` (SD 2.1-base architecture, random weights) as config/paper.yaml runs it (its
#          `deterministic` and `compile_unet`, i.e. CUDA graphs captured directly: the base variant,
#          whose rows the projection uses) with variants `vaeprev` (the VAE as before 2026-11-30
#          evening: SDPA attention, under autocast) and `eager` (nothing compiled or captured)
#   stage  the stage-1 job (stages.fit_nerf, STAGE_ITERS iterations, default 300) eager, then with
#          compile_unet (direct CUDA graphs), compared: steady rate, warm-up, losses
#   ro     the same stage-1 job through torch.compile reduce-overhead (its warm-up in a real job)
#   if     `if` (IF-I-XL + T5-XXL, random weights, LoRA r=4) as config/paper.yaml runs it, + `eager`
#   ab     `sd` again (per-step rows, 9 repeats) against kernel choices under the direct CUDA graphs:
#          channels_last, cudnn.benchmark, both (sd_graphs_ab.{tsv,md})
# Everything ends within DB3D_BENCH_LIMIT_S seconds (default 540). Writes at most 8 files, flat, into
# $OUT: device_bench.log sd.{tsv,md} if.{tsv,md} sd_graphs_ab.{tsv,md} stage1_{eager,graphs,ro}.json
# stage1_compare.json (the summaries without their per-iteration lists): pick parts that stay within 8.
# DB3D_BENCH_ARGS (optional) is appended to every bench command, e.g. for a quick local dry run on CPU:
#   DB3D_BENCH_ARGS="--set backend=tiny --set device=cpu --repeats 1 --warmup 0 --sds-block 1" bash scripts/device_bench.sh
set -uo pipefail

T0=$SECONDS
LIMIT=${DB3D_BENCH_LIMIT_S:-540}
ITERS=${STAGE_ITERS:-300}
OUT=${OUT:-reports/bench/device}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/device_bench.log"
source scripts/device_env.sh

left() { echo $((LIMIT - (SECONDS - T0))); }
say() { echo "[$((SECONDS - T0))s] $*"; }

has() { case ",${DB3D_BENCH_PARTS:-test,sd,stage,if}," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }

stage1() {  # label, timeout, extra stagecheck arguments
    local label=$1 limit=$2
    shift 2
    say "== stage 1 job ($label, ${ITERS} iterations)"
    timeout "$limit" "$PY" -m db3d.bench.stagecheck --config config/paper.yaml --set backend=sd --set models.sd=random \
        --set device=cuda --set stage1.iters="$ITERS" --label "$label" --out "/tmp/stage1_$label.json" "$@" 2>&1 \
        | grep -v "it/s]$" | tail -n 32
    [ -f "/tmp/stage1_$label.json" ] && "$PY" -c "
import json, sys
d = json.load(open('/tmp/stage1_$label.json'))
json.dump({k: v for k, v in d.items() if k not in ('sds', 'loss', 't', 'shading')}, open('$OUT/stage1_$label.json', 'w'), indent=1)"
}

main() {
    say "== environment + carried wheels -> /tmp/pydeps"
    db3d_env || return 1
    say "== nerfacc CUDA ops"
    db3d_nerfacc

    if has test; then
        say "== GPU tests of the CUDA graphs"
        timeout 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_graphs.py 2>&1 | tail -n 15 || true
    fi

    local budget
    if has sd; then
        budget=$(( $(left) - ${DB3D_BENCH_RESERVE_S:-150} ))
        [ "$budget" -lt 120 ] && budget=$(( $(left) - 40 ))
        say "== sd sweep, config/paper.yaml as the stages run it (time budget ${budget}s)"
        timeout -s INT -k 20 $((budget + 45)) "$PY" -m db3d bench --config config/paper.yaml \
            --set backend=sd --set models.sd=random --name sd-paper-random --out "$OUT/sd.tsv" \
            --time-budget "$budget" --sds-repeats 2 ${DB3D_BENCH_ARGS:-} \
            --variant "vaeprev vae_attention=sdpa vae_autocast=1 rows=sds,sds3" \
            --variant "eager compile=0 rows=unet,sds,sds3"
        say "sd exit code $?"
    fi

    if has stage && [ "$(left)" -gt 100 ]; then
        stage1 eager 150 --set compile_unet=false
        stage1 graphs 150 --set compile_unet=true --cudagraphs direct
        if [ -f /tmp/stage1_eager.json ] && [ -f /tmp/stage1_graphs.json ]; then
            "$PY" -m db3d.bench.stagecheck --compare /tmp/stage1_eager.json /tmp/stage1_graphs.json \
                | tee "$OUT/stage1_compare.json"
        fi
    fi
    if has ro && [ "$(left)" -gt 150 ]; then
        stage1 ro 200 --set compile_unet=true --cudagraphs compile
    fi

    if has if && [ "$(left)" -gt 100 ]; then
        budget=$(( $(left) - 60 ))
        say "== if as config/paper_if.yaml runs it (LoRA r=4, lr 5e-6, batch 4, SDS guidance 20) + eager (time budget ${budget}s)"
        timeout -s INT -k 20 $((budget + 40)) "$PY" -m db3d bench --config config/paper.yaml --config config/paper_if.yaml \
            --set models.if=random --name if-paper_if-random \
            --out "$OUT/if.tsv" --time-budget "$budget" --sds-repeats 2 ${DB3D_BENCH_ARGS:-} --sds-resolutions 64 \
            --rows start,build,db,ref,unet,sds,sds3,img2img,priors,eval,save \
            --variant "eager compile=0 rows=unet,sds"
        say "if exit code $?"
    elif has if; then
        say "skipping if (time)"
    fi

    if has ab && [ "$(left)" -gt 120 ]; then
        budget=$(( $(left) - ${DB3D_AB_RESERVE_S:-30} ))
        say "== sd, direct CUDA graphs with kernel choices: channels_last, cudnn.benchmark (time budget ${budget}s)"
        timeout -s INT -k 20 $((budget + 40)) "$PY" -m db3d bench --config config/paper.yaml \
            --set backend=sd --set models.sd=random --name sd-graphs-ab --out "$OUT/sd_graphs_ab.tsv" \
            --time-budget "$budget" --sds-repeats 3 --repeats 9 --sds-resolutions 64 ${DB3D_BENCH_ARGS:-} \
            --rows build,db,ref,unet,sds,sds3,priors,img2img \
            --variant "cl channels_last=1 rows=unet,sds,sds3,priors" \
            --variant "cudnnb cudnn_benchmark=1 rows=unet,sds,sds3,priors" \
            --variant "clb channels_last=1 cudnn_benchmark=1 rows=unet,sds,priors"
        say "ab exit code $?"
    fi

    say "== outputs"
    ls -la "$OUT"
    for f in "$OUT"/sd.md "$OUT"/if.md; do
        [ -f "$f" ] && awk '/^## Projection/{p=1} /^## Notes/{p=0} p' "$f"
    done
    say "done"
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
