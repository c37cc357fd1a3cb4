#!/usr/bin/env bash
# The GPU end-to-end graph through Snakemake on a lent GPU (issue 20): one subject x one prompt of the
# paper track (config/paper.yaml + config/device_e2e.yaml: SD 2.1-base with random weights), the jobs
# one at a time as profiles/default runs them, then the per-rule table from the jobs' own log lines
# (db3d.jobperf -> python -m db3d.bench.joblog). From the repository root:
#
#   DB3D_E2E_MODE=small OUT=/some/folder bash scripts/device_e2e.sh       # reduced counts, one call
#   DB3D_E2E_MODE=paper OUT=/some/folder bash scripts/device_e2e.sh       # paper counts, resumable
#   DB3D_E2E_MODE=small,paper ...                                          # both, in this order
#
# The graph: dataset -> class priors -> DreamBooth (partial + full) -> stage 1 -> pseudo views ->
# multi-view DreamBooth -> stage 3, and the naive baseline (full DreamBooth -> one SDS NeRF).
#   small  config/device_e2e_small.yaml's counts: every rule once in about three minutes. It is the
#          check that the GPU path of the workflow runs: it fails when a job fails or when any GPU job
#          rendered with the dense torch sampler (nerfacc's CUDA ops missing).
#   paper  the paper's counts (150/800/150 DreamBooth steps, 200 class images, 5,000 NeRF iterations a
#          stage), more than one call holds: it runs the graph target by target and starts a job only
#          when its estimated time (DB3D_E2E_EST, seconds per rule) fits in what is left of
#          DB3D_E2E_LIMIT_S; run it again on the same (warm) machine to go on where it stopped
#          (Snakemake skips what is done; a job killed at the limit resumes from its resume state).
#          Exit 3 = stopped early, run again.
# Set-up as scripts/device_bench.sh (scripts/device_env.sh): the wheels carried in .carry/wheels
# (scripts/carry_wheels.sh makes them; Snakemake among them), nerfacc's CUDA ops built once. The
# subject's photos: DB3D_E2E_SOURCE (default .carry/dreambooth), a copy of the google/dreambooth
# folder holding at least the subject (`mkdir -p .carry/dreambooth && cp -r ../shared/datasets/dreambooth/dog .carry/dreambooth/`).
# DB3D_E2E_CODE names the code in the table's notes (default: the checkout's git HEAD; say so when
# files were copied over it, as a helper's worktree is on the lent machine).
# Work folders: $DB3D_E2E_WORK/<mode> (default /tmp/db3d_e2e), kept between calls on a warm machine.
# For a dry run of the plumbing on a CPU machine: DB3D_E2E_LOCAL=1 (the active python and its packages,
# no carried wheels, no nerfacc build) and DB3D_E2E_CONFIGS="tests/data/device_e2e_cpu.yaml" (config
# files added last; that one: the tiny backend on the CPU, where the torch sampler is the right one).
# Writes into $OUT (flat): device_e2e.log, e2e_<mode>.{md,tsv}, logs_<mode>.tgz (the jobs' logs).
set -uo pipefail

T0=$SECONDS
LIMIT=${DB3D_E2E_LIMIT_S:-570}
MODES=${DB3D_E2E_MODE:-small}
OUT=${OUT:-reports/bench/device}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPO=$PWD
SOURCE=$(cd "${DB3D_E2E_SOURCE:-.carry/dreambooth}" 2>/dev/null && pwd) || SOURCE=""
WORK_ROOT=${DB3D_E2E_WORK:-/tmp/db3d_e2e}
# seconds a paper-count job may take (start-up included; measured on an H200, docs/performance.md),
# used only to decide whether to start it in this call
EST="dataset=30 class_priors=150 dreambooth=250 nerf_stage1=340 pseudo_views=50 dreambooth_multiview=90 nerf_stage3=400 nerf_baseline=340 ${DB3D_E2E_EST:-}"
source scripts/device_env.sh

left() { echo $((LIMIT - (SECONDS - T0))); }
say() { echo "[$((SECONDS - T0))s] $*"; }
est() { local kv v=60; for kv in $EST; do [ "${kv%%=*}" = "$1" ] && v=${kv#*=}; done; echo "$v"; }

setup() { db3d_setup; }  # scripts/device_env.sh

# The targets in graph order, one line each: <rule> <file> (db3d.workflow's paths for the config)
targets() {
    "$PY" - "$@" <<'EOF'
import sys
import db3d.config as c, db3d.workflow as wf
cfg = c.load_config(sys.argv[1:])
subject = wf.subjects(cfg)[0]
pid = wf.prompt_ids(cfg, subject)[0]
setting = wf.main_settings(cfg)[0]
print("dataset", wf.subject_meta(cfg).format(subject=subject))
print("class_priors", wf.class_priors_manifest(cfg, subject))
for rule, stage in [("dreambooth", "dreambooth"), ("nerf_stage1", "stage1"), ("pseudo_views", "stage2"),
                    ("dreambooth_multiview", "multiview"), ("nerf_stage3", "stage3"), ("nerf_baseline", "naive")]:
    print(rule, wf.stage_file(setting, stage, subject, pid))
EOF
}

run_mode() {  # small | paper
    local mode=$1 work=$WORK_ROOT/$1 configs rule target t_start rc=0 graph_s
    mkdir -p "$work"
    for n in Snakefile rules config ablations profiles db3d tests; do ln -sfn "$REPO/$n" "$work/$n"; done
    printf 'dataset:\n  source: %s\n' "$SOURCE" > "$work/source.yaml"
    configs="config/paper.yaml config/device_e2e.yaml"
    [ "$mode" = small ] && configs="$configs config/device_e2e_small.yaml"
    configs="$configs ${DB3D_E2E_CONFIGS:-} source.yaml"
    cd "$work" || return 1
    mapfile -t lines < <(targets config/config.yaml $configs)
    [ ${#lines[@]} -eq 8 ] || { echo "could not list the targets: ${lines[*]}"; cd "$REPO"; return 1; }
    say "== $mode: ${#lines[@]} targets in $work (configs: $configs)"
    local sm=("$PY" -m snakemake --cores "$(nproc)" --configfile $configs --)
    if [ "$mode" = small ]; then  # one Snakemake run for the whole graph: no time guard needed
        local all=()
        for line in "${lines[@]}"; do all+=("${line#* }"); done
        lines=("graph ${all[*]}")
    fi
    for line in "${lines[@]}"; do
        rule=${line%% *} target=${line#* }
        if [ "$mode" = paper ]; then
            # made by an earlier call in this work folder (same configs): no planning needed
            if [ -e "$target" ]; then say "$rule: done already ($target)"; continue; fi
            if [ "$(left)" -lt "$(est "$rule")" ]; then
                say "$rule: needs ~$(est "$rule") s, $(left) s left in this call: stopping here; run again to go on"
                rc=3; break
            fi
        fi
        say "-- $rule -> $target"
        t_start=$SECONDS
        timeout -s INT -k 30 "$(( $(left) > 30 ? $(left) : 30 ))" "${sm[@]}" $target > "$work/snakemake_$rule.log" 2>&1
        local src=$?
        graph_s=$((SECONDS - t_start))
        echo "$rule $graph_s" >> "$work/graph_walls.txt"
        say "$rule: snakemake exit $src after ${graph_s}s"
        if [ $src -ne 0 ]; then
            tail -n 30 "$work/snakemake_$rule.log"
            if [ $src -eq 124 ] || [ $src -eq 130 ]; then rc=3; else rc=1; fi
            break
        fi
    done
    graph_s=$(awk '{s += $2} END {print s + 0}' "$work/graph_walls.txt")
    say "== $mode: per-rule table (the graph's Snakemake time so far: ${graph_s}s)"
    local gpu
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    "$PY" -m db3d.bench.joblog "$work/logs" --out "$OUT/e2e_$mode" --graph-wall-s "$graph_s" \
        --title "GPU end-to-end graph ($mode counts): ${gpu:-no GPU}" \
        --note "configs: config/config.yaml + $configs; one subject x one prompt, jobs one at a time (profiles/default)" \
        --note "code: ${DB3D_E2E_CODE:-git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')}; $(date -u +%FT%TZ)" \
        --fail-on-torch-sampler
    local jrc=$?
    tar czf "$OUT/logs_$mode.tgz" -C "$work" logs graph_walls.txt $(cd "$work" && ls snakemake_*.log 2>/dev/null) 2>/dev/null
    cd "$REPO"
    [ $jrc -ne 0 ] && [ $rc -eq 0 ] && rc=1
    [ $jrc -ne 0 ] && say "FAIL: a job failed or ran on the torch sampler (lines above)"
    return $rc
}

main() {
    [ -n "$SOURCE" ] || { echo "no subject photos: put the google/dreambooth subject folder(s) in .carry/dreambooth or set DB3D_E2E_SOURCE"; return 1; }
    setup || return 1
    local mode rc=0
    for mode in ${MODES//,/ }; do
        case "$mode" in small|paper) ;; *) echo "DB3D_E2E_MODE: unknown mode $mode (small, paper)"; return 1 ;; esac
        run_mode "$mode"
        rc=$?
        say "$mode: exit $rc"
        [ $rc -ne 0 ] && break
    done
    ls -la "$OUT"
    return $rc
}

main 2>&1 | tee -a "$OUT/device_e2e.log"
exit "${PIPESTATUS[0]}"
