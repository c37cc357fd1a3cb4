#!/usr/bin/env bash
# Fill .carry/wheels (git-ignored) with the wheels scripts/device_env.sh installs on a lent GPU machine,
# which has python 3.12 + torch + CUDA (docs: /work/.library/device/KINDS.md) but cannot download:
#
#   bash scripts/carry_wheels.sh [DEST]        # default DEST=.carry/wheels; then carry it with the run
#
# The packages db3d and Snakemake need that the device's image lacks (its package list in KINDS.md),
# at the versions of envs/requirements-cpu.txt; --no-deps, so each dependency is named here. Binary
# wheels for CPython 3.12 on manylinux x86_64; a package published as an sdist only is built here into a
# (pure-Python) wheel. Not carried because the image has them: torch, transformers, huggingface_hub,
# safetensors, numpy, pillow, pyyaml, jinja2, requests, psutil, tabulate, wrapt, rich, ninja, timm, ...
# (huggingface_hub 2.x's httpx2/httpcore2 are not needed beside the image's 1.x).
# Check on the device: `python3 -c 'import snakemake, diffusers, nerfacc, open_clip, jsonschema, trimesh'`
# (scripts/device_env.sh does; scripts/device_e2e.sh also runs `snakemake --version`).
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.carry/wheels}
REQ=envs/requirements-cpu.txt
mkdir -p "$DEST"

# db3d's own imports on the GPU path
DB3D="diffusers nerfacc open_clip_torch ftfy wcwidth jsonschema jsonschema-specifications referencing rpds-py
      trimesh importlib_metadata"
# snakemake 9 and what it imports (its Requires-Dist, recursively, minus the image's packages)
SNAKEMAKE="snakemake snakemake-interface-common snakemake-interface-executor-plugins
           snakemake-interface-logger-plugins snakemake-interface-report-plugins
           snakemake-interface-scheduler-plugins snakemake-interface-storage-plugins
           tenacity platformdirs sqlmodel SQLAlchemy greenlet pydantic pydantic_core annotated-types
           typing-inspection argparse-dataclass conda-inject ConfigArgParse connection_pool docutils dpath
           fastjsonschema GitPython gitdb smmap humanfriendly immutables nbformat jupyter_core traitlets
           PuLP smart_open throttler yte truststore"

PY=${PYTHON:-python3}
PIP=("$PY" -m pip)
BIN=(--no-deps --only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)

pin() {  # NAME -> NAME==VERSION from envs/requirements-cpu.txt (case- and -/_-insensitive), else NAME
    local norm line
    norm=$(echo "$1" | tr 'A-Z_.' 'a-z--')
    line=$(grep -v '^#' "$REQ" | awk -F'==' -v n="$norm" '{k=tolower($1); gsub(/[_.]/, "-", k); if (k == n) print $0}')
    echo "${line:-$1}"
}

fetch() {  # one requirement: a wheel for the device, else an sdist built here into a wheel
    local spec=$1 tries
    for tries in 1 2 3 4 5; do  # PyPI resets connections now and then
        if "${PIP[@]}" download -q "${BIN[@]}" -d "$DEST" "$spec" 2>/tmp/carry_wheels.err; then return 0; fi
        grep -q "No matching distribution\|Could not find a version" /tmp/carry_wheels.err && break
        sleep 3
    done
    echo "  $spec: no wheel for cp312 manylinux; building one from the sdist"
    local tmp
    tmp=$(mktemp -d)
    for tries in 1 2 3; do
        "${PIP[@]}" wheel -q --no-deps --no-binary=:all: -w "$tmp" "$spec" && break
        sleep 3
    done
    local w
    w=$(ls "$tmp"/*.whl)
    case "$w" in *-none-any.whl) mv "$w" "$DEST"/ ;; *) echo "  $spec built a platform wheel ($w): not for the device"; return 1 ;; esac
    rm -rf "$tmp"
}

specs=()
for name in $DB3D $SNAKEMAKE; do specs+=("$(pin "$name")"); done
echo "${specs[*]}"
# one pip run for all (pip's start-up is most of the cost); what it could not get, one at a time
"${PIP[@]}" download -q "${BIN[@]}" -d "$DEST" "${specs[@]}" || echo "(some failed: fetching one at a time)"
have() {  # a wheel of NAME==VERSION in DEST (wheel names use _ for - and .)
    local n=${1%%==*} v=${1#*==}
    n=$(echo "$n" | tr 'A-Z.-' 'a-z__')
    ls "$DEST" | tr 'A-Z' 'a-z' | grep -q "^${n}-${v}-"
}
for spec in "${specs[@]}"; do
    have "$spec" || { echo "$spec"; fetch "$spec"; }
done
ls "$DEST"
du -sh "$DEST"
