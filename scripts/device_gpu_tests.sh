#!/usr/bin/env bash
# GPU check on a lent CUDA machine that has torch but cannot install anything: the marked GPU
# tests, then the stage-1 SDS loop with the full-size SD-2.1-base architecture (random weights:
# a step costs the same whatever the weights) at 64x64 and 128x128 renders.
# Needs the wheels in .carry/wheels (diffusers, nerfacc, open_clip, ftfy, wcwidth, jsonschema...).
# Results go to $OUT (gpu_tests.log, stage1_sd_<res>.json).
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/db3d-out}"; mkdir -p "$OUT"
ITERS="${ITERS:-200}"
pip install -q --no-deps --target /tmp/pydeps .carry/wheels/*.whl
export PYTHONPATH="/tmp/pydeps:$PWD"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/device.txt"
# nerfacc JIT-builds its CUDA ops on first use (~80 s): do it once, before anything is timed
time python3 -c "from db3d.nerf.render import nerfacc_cuda_available as a; print('nerfacc cuda ops:', a())"
python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_nerf.py tests/test_diffusion.py \
  tests/test_guidance.py tests/test_dreambooth.py tests/test_stages.py 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
for res in 64 128; do
  python3 -m db3d nerf --stage stage1 --config config/config.yaml --config config/paper.yaml \
    --set models.sd=random --set device=cuda --set stage1.iters="$ITERS" --set nerf.render_resolution="$res" \
    --subject-dir data/subjects/dog --prompt-id plain --out-dir "/tmp/stage1_$res" 2>&1 | tail -2
  python3 -c "import json; d=json.load(open('/tmp/stage1_$res/losses.json')); print(json.dumps(d['perf']))" \
    | tee "$OUT/stage1_sd_$res.json"
done
