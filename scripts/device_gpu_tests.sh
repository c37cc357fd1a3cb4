#!/usr/bin/env bash
# The GPU-marked tests (@pytest.mark.gpu; CI has no GPU and skips them) on a lent CUDA machine that
# has torch but cannot install anything. From the repository root, carrying .carry/wheels
# (scripts/carry_wheels.sh) and, if kept from an earlier call, .carry/nerfacc (scripts/device_env.sh):
#
#   OUT=/some/folder bash scripts/device_gpu_tests.sh      # -> $OUT/env.log, $OUT/gpu_tests.log
#
# Seen on an H200 (2026-12-03): 7 passed in 37 s (CUDA graphs against eager, the bench's CUDA rows,
# SDS + DreamBooth steps in fp16/fp32, nerfacc against the dense sampler, every variant end to end).
set -uo pipefail
OUT="${OUT:-/tmp/db3d-out}"; mkdir -p "$OUT"
source scripts/device_env.sh
db3d_env > "$OUT/env.log" 2>&1 || { tail -n 20 "$OUT/env.log"; exit 1; }
db3d_nerfacc >> "$OUT/env.log" 2>&1
set -o pipefail
timeout 540 "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/ 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 25
