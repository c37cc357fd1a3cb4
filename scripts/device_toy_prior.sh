#!/usr/bin/env bash
# The toy prior's GPU recipe (the toy_prior section of config/config.yaml) on the lent GPU, one device
# call: `python -m db3d toy-prior` with device cuda, into $OUT/toy (model.safetensors,
# config.json, samples.png, train_log.json). Copy $OUT/toy to models/toy (joining the weights' parts) and `dvc add models/toy`.
#   run: bash scripts/device_toy_prior.sh   (needs the wheels in .carry/wheels, scripts/device_env.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/device_env.sh
db3d_env || exit 1
OUT=${OUT:-reports/bench/device}
mkdir -p "$OUT/toy"
nproc
time timeout 560 "$PY" -m db3d toy-prior --config config/config.yaml \
    --set device=cuda --out "$OUT/toy" 2>&1 | tail -n 40
# files come back from the device in pieces of at most 16 MiB: the weights (~19 MB) go in two parts
# (cat model.safetensors.part* > model.safetensors)
if [ -f "$OUT/toy/model.safetensors" ]; then
    split -b 15m -d "$OUT/toy/model.safetensors" "$OUT/toy/model.safetensors.part" && rm "$OUT/toy/model.safetensors"
fi
ls -la "$OUT/toy"
