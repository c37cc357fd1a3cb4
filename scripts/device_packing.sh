#!/usr/bin/env bash
# Jobs per GPU through Snakemake on a lent GPU (issue 17 item 5): the GPU end-to-end graph of
# scripts/device_e2e.sh (config/paper.yaml + config/device_e2e.yaml + device_e2e_small.yaml's counts:
# dataset -> class priors -> DreamBooth -> per prompt stage 1, pseudo views, multi-view DreamBooth,
# stage 3 and the naive baseline) with DB3D_PACK_PROMPTS (default 4) prompts, run from scratch once
# per jobs-per-GPU value: DB3D_PACK_SLOTS (default "1,default": device_slots 1, then config.yaml's).
# Each run is a fresh work folder with the same configs but `device_slots`; Snakemake runs it
# with profiles/default (gpu: 1, so gpu_slots = device_slots) and every job leases its slot
# (db3d.devices). From the repository root:
#
#   OUT=/some/folder bash scripts/device_packing.sh
#
# One call holds 10 minutes; a run that does not finish in it is stopped at DB3D_PACK_LIMIT_S and
# resumes in the next call on the same (warm) machine (Snakemake reruns the incomplete jobs; its
# time is summed over the calls): exit 3 = run again. A run not yet started is started only when
# the time left is over DB3D_PACK_MIN_S (default 150 s).
# Writes into $OUT (flat): device_packing.log, packing.{md,tsv} (the comparison, by
# python -m db3d.bench.packing), packing_runs.tsv (one row per run and call: merge the files of
# several calls with `python -m db3d.bench.packing a.tsv b.tsv --out reports/bench/packing`),
# packing_slots<N>.{md,tsv} (each run's per-rule table, db3d.bench.joblog), logs_slots<N>.tgz.
# Set-up as scripts/device_e2e.sh (scripts/device_env.sh; the wheels in .carry/wheels, the subject
# photos in DB3D_E2E_SOURCE, default .carry/dreambooth). CPU dry run of the plumbing (no GPU: no
# lease, no sharing; the walls say nothing): DB3D_E2E_LOCAL=1 DB3D_PACK_CONFIGS=tests/data/device_e2e_cpu.yaml
# (tests/test_device_packing.py).
set -uo pipefail

T0=$SECONDS
LIMIT=${DB3D_PACK_LIMIT_S:-570}
MIN_START=${DB3D_PACK_MIN_S:-150}
SLOTS_LIST=${DB3D_PACK_SLOTS:-1,default}
PROMPTS=${DB3D_PACK_PROMPTS:-4}
OUT=${OUT:-reports/bench/device}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPO=$PWD
SOURCE=$(cd "${DB3D_E2E_SOURCE:-.carry/dreambooth}" 2>/dev/null && pwd) || SOURCE=""
WORK_ROOT=${DB3D_PACK_WORK:-/tmp/db3d_pack}
RUNS=$WORK_ROOT/packing_runs.tsv  # kept on the warm machine: later calls add to it
source scripts/device_env.sh

left() { echo $((LIMIT - (SECONDS - T0))); }
say() { echo "[$((SECONDS - T0))s] $*"; }

setup() { db3d_setup; }  # scripts/device_env.sh

# The graph's final targets (stage 3 and naive NeRFs of every prompt), db3d.workflow's paths
targets() {
    "$PY" - "$@" <<'PYEOF'
import sys
import db3d.config as c, db3d.workflow as wf
cfg = c.load_config(sys.argv[1:])
setting = wf.main_settings(cfg)[0]
for subject in wf.subjects(cfg):
    for pid in wf.prompt_ids(cfg, subject):
        for stage in ("stage3", "naive"):
            print(wf.stage_file(setting, stage, subject, pid))
PYEOF
}

gpu_mem_sampler() {  # the GPU's used memory every second, MiB, until killed
    while nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n 1; do sleep 1; done
}

run_slots() {  # slots value -> 0 complete, 3 stopped at the limit, 1 failed
    local slots=$1 work=$WORK_ROOT/slots$1 configs rc=0 t_start graph_s src sampler="" peak complete=0
    mkdir -p "$work"
    for n in Snakefile rules config ablations profiles db3d tests envs; do ln -sfn "$REPO/$n" "$work/$n"; done
    printf 'dataset:\n  source: %s\n  prompts_per_subject: %s\ndevice_slots: %s\n' "$SOURCE" "$PROMPTS" "$slots" > "$work/pack.yaml"
    configs="config/paper.yaml config/device_e2e.yaml config/device_e2e_small.yaml ${DB3D_PACK_CONFIGS:-} pack.yaml"
    cd "$work" || return 1
    mapfile -t tg < <(targets config/config.yaml $configs)
    [ ${#tg[@]} -ge 8 ] || { echo "could not list the targets (>= 4 prompts x 2): ${tg[*]}"; cd "$REPO"; return 1; }
    say "== device_slots $slots: ${#tg[@]} targets (${PROMPTS} prompts) in $work (configs: $configs)"
    if command -v nvidia-smi >/dev/null; then gpu_mem_sampler > "$work/gpu_mem_$SECONDS.txt" & sampler=$!; fi
    t_start=$SECONDS
    # own lease folder per run: a lease left by a call stopped at the limit is the only one there
    DB3D_LEASE_DIR=$work/leases timeout -s INT -k 30 "$(( $(left) > 30 ? $(left) : 30 ))" \
        "$PY" -m snakemake --cores "$(nproc)" --configfile $configs -- "${tg[@]}" > "$work/snakemake_$SECONDS.log" 2>&1
    src=$?
    graph_s=$((SECONDS - t_start))
    [ -n "$sampler" ] && kill "$sampler" 2>/dev/null && wait "$sampler" 2>/dev/null
    say "device_slots $slots: snakemake exit $src after ${graph_s}s"
    if [ $src -eq 0 ]; then complete=1
    elif [ $src -eq 124 ] || [ $src -eq 130 ]; then rc=3
    else tail -n 30 "$(ls -t "$work"/snakemake_*.log | head -n 1)"; rc=1; fi
    peak=$(cat "$work"/gpu_mem_*.txt 2>/dev/null | awk '$1 + 0 > m {m = $1 + 0} END {if (NR) printf "%.2f", m / 1024; else print "n/a"}')
    local gpu
    gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
    "$PY" -m db3d.bench.joblog "$work/logs" --out "$OUT/packing_slots$slots" --graph-wall-s "$graph_s" \
        --title "GPU graph, ${PROMPTS} prompts, device_slots $slots: ${gpu:-no GPU}" \
        --note "configs: config/config.yaml + $configs; profiles/default (gpu: 1, gpu_slots = device_slots)" \
        --note "code: ${DB3D_E2E_CODE:-git $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')}; $(date -u +%FT%TZ)" \
        --fail-on-torch-sampler > "$work/joblog.txt" 2>&1
    local jrc=$?
    [ $jrc -ne 0 ] && [ $complete -eq 1 ] && { cat "$work/joblog.txt" | grep FAIL; rc=1; }
    "$PY" - "$OUT/packing_slots$slots.tsv" "$slots" "$graph_s" "$peak" "$complete" >> "$RUNS" <<'PYEOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
walls = [float(r["wall_s"]) for r in rows if r["wall_s"]]
peaks = [float(r["peak_reserved_gib"]) for r in rows if r["peak_reserved_gib"]]
print("\t".join([sys.argv[2], "1", sys.argv[3], str(len(rows)), f"{sum(walls):.1f}",
                 f"{max(peaks):.2f}" if peaks else "n/a", sys.argv[4], sys.argv[5]]))
PYEOF
    tar czf "$OUT/logs_slots$slots.tgz" -C "$work" logs $(cd "$work" && ls snakemake_*.log 2>/dev/null) 2>/dev/null
    cd "$REPO"
    return $rc
}

main() {
    [ -n "$SOURCE" ] || { echo "no subject photos: put the google/dreambooth subject folder(s) in .carry/dreambooth or set DB3D_E2E_SOURCE"; return 1; }
    setup || return 1
    mkdir -p "$WORK_ROOT"
    [ -f "$RUNS" ] || printf 'slots\tcalls\tgraph_wall_s\tjobs\tjob_wall_s\tpeak_job_gib\tpeak_device_gib\tcomplete\n' > "$RUNS"
    local default s rc=0
    default=$("$PY" -c "import db3d.config as c; print(c.load_config('config/config.yaml')['device_slots'])") || return 1
    for s in ${SLOTS_LIST//,/ }; do
        [ "$s" = default ] && s=$default
        if awk -F'\t' -v s="$s" 'NR > 1 && $1 == s && $8 == 1 {f = 1} END {exit !f}' "$RUNS"; then
            say "device_slots $s: done in an earlier call"; continue
        fi
        if [ ! -d "$WORK_ROOT/slots$s/logs" ] && [ "$(left)" -lt "$MIN_START" ]; then
            say "device_slots $s: $(left) s left, under DB3D_PACK_MIN_S=$MIN_START: run again to start it"; rc=3; break
        fi
        run_slots "$s"; rc=$?
        [ $rc -ne 0 ] && break
    done
    cp "$RUNS" "$OUT/packing_runs.tsv"
    "$PY" -m db3d.bench.packing "$RUNS" --out "$OUT/packing" \
        --note "the same graph (${PROMPTS} prompts; paper.yaml + device_e2e.yaml + device_e2e_small.yaml${DB3D_PACK_CONFIGS:+ + $DB3D_PACK_CONFIGS}) from scratch per row; one GPU: ${gpu_name:-$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)}" \
        || rc=1
    ls -la "$OUT"
    return $rc
}

main 2>&1 | tee -a "$OUT/device_packing.log"
exit "${PIPESTATUS[0]}"
