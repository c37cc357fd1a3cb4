#!/usr/bin/env bash
# Where the time of an SDS iteration and of a job's start goes, on a lent GPU machine
# (docs/performance.md, "Profiles"). From the repository root (set-up: scripts/device_env.sh):
#
#   OUT=/some/folder bash scripts/device_profile.sh
#
# 1. start-up: a fresh python importing what a stage job imports (`python -X importtime`, the 25
#    slowest modules by cumulative time) and the CUDA context, each timed on its own;
# 2. `python -m db3d.bench.profile` for stage 1 and stage 3 (config/paper.yaml, SD 2.1-base
#    architecture with random weights): per step wall vs GPU kernel time, regions, top ops.
# $OUT gets device_profile.log, profile_stage1.json, profile_stage3.json (+ trace_stage1.json.gz).
set -uo pipefail
T0=$SECONDS
OUT=${OUT:-/tmp/db3d-profile}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
source scripts/device_env.sh
say() { echo "[$((SECONDS - T0))s] $*"; }
STEPS=${PROFILE_STEPS:-12}

main() {
    say "== environment"
    db3d_env || return 1
    db3d_nerfacc
    local code="import torch, diffusers, transformers; import db3d.cli, db3d.stages, db3d.diffusion, db3d.nerf, db3d.dreambooth, db3d.guidance"
    say "== start-up pieces (wall, warm page cache: each run twice, the second reported)"
    for what in "pass" "import torch" "import torch; torch.zeros(1, device='cuda'); torch.cuda.synchronize()" \
                "$code" "$code; torch.zeros(1, device='cuda'); torch.cuda.synchronize()" \
                "import db3d.cli" "from db3d.diffusion import build_backend"; do
        "$PY" -c "$what" >/dev/null 2>&1
        local t=$EPOCHREALTIME
        "$PY" -c "$what" >/dev/null 2>&1
        awk -v a="$t" -v b="$EPOCHREALTIME" -v w="$what" 'BEGIN { printf "  %6.2f s  python -c \"%s\"\n", b - a, w }'
    done
    say "== python -X importtime (top 25 by cumulative µs)"
    "$PY" -X importtime -c "$code" 2>/tmp/imp.txt
    sort -t'|' -k2 -n /tmp/imp.txt | tail -n 25
    for stage in stage1 stage3; do
        say "== profile $stage"
        local tr=()
        [ "$stage" = stage1 ] && tr=(--trace /tmp/trace_stage1.json)
        timeout 240 "$PY" -m db3d.bench.profile --config config/paper.yaml --set backend=sd --set models.sd=random \
            --set device=cuda --stage "$stage" --steps "$STEPS" --top 30 --out "$OUT/profile_$stage.json" "${tr[@]}" 2>&1 \
            | grep -v "it/s]$" | tail -n 80
    done
    [ -f /tmp/trace_stage1.json ] && gzip -c /tmp/trace_stage1.json > "$OUT/trace_stage1.json.gz"
    ls -la "$OUT"
}
main 2>&1 | tee "$OUT/device_profile.log"
