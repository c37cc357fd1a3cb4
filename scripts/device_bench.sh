#!/usr/bin/env bash
# The GPU benchmark run, in one command (docs/performance.md, "Device run"). From the repository root:
#
#   OUT=/some/folder bash scripts/device_bench.sh
#
# For a machine that cannot download anything: installs the wheels carried in .carry/wheels (diffusers,
# nerfacc, open_clip, ftfy, jsonschema and its deps; rich/ninja from .carry/wheels/extra only where
# missing) into /tmp/pydeps, builds nerfacc's CUDA ops once (JIT, ~80 s), runs the bench's GPU test,
# then benchmarks `sd` (SD 2.1-base architecture, random weights, config/paper.yaml) with a sweep of
# optimisation variants, then `if` (IF-I-XL + T5-XXL, random weights, LoRA r=4) and a torch.compile run
# of `sd` while time is left. Everything ends within DB3D_BENCH_LIMIT_S seconds (default 530).
# Writes at most 7 files, flat, into $OUT: device_bench.log sd.{tsv,md} if.{tsv,md} sd_compile.{tsv,md}
# DB3D_BENCH_ARGS (optional) is appended to every bench command, e.g. for a quick local dry run on CPU:
#   DB3D_BENCH_ARGS="--set backend=tiny --set device=cpu --repeats 1 --warmup 0 --sds-block 1" bash scripts/device_bench.sh
set -uo pipefail

T0=$SECONDS
LIMIT=${DB3D_BENCH_LIMIT_S:-530}
OUT=${OUT:-reports/bench/device}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
LOG="$OUT/device_bench.log"

left() { echo $((LIMIT - (SECONDS - T0))); }
say() { echo "[$((SECONDS - T0))s] $*"; }

main() {
    local PY="" c
    for c in python python3; do
        if command -v "$c" >/dev/null && "$c" -c "import torch" 2>/dev/null; then PY=$c; break; fi
    done
    if [ -z "$PY" ]; then echo "no python with torch found"; return 1; fi

    say "== environment"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.is_available() and torch.cuda.get_device_name())"
    command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "nvcc: not found (nerfacc will fall back to the torch sampler)"
    nproc; free -g | head -n 2; df -h /tmp . | tail -n 2

    say "== carried wheels -> /tmp/pydeps"
    "$PY" -m pip install --no-deps --no-index --quiet --disable-pip-version-check --target /tmp/pydeps .carry/wheels/*.whl \
        || { echo "pip install of the carried wheels failed"; return 1; }
    local extra=() mod whl
    for mod in rich:rich markdown_it:markdown_it_py mdurl:mdurl pygments:pygments; do
        if ! "$PY" -c "import ${mod%%:*}" 2>/dev/null; then
            whl=$(ls .carry/wheels/extra/${mod##*:}-*.whl 2>/dev/null | head -n 1)
            [ -n "$whl" ] && extra+=("$whl")
        fi
    done
    if ! command -v ninja >/dev/null; then
        whl=$(ls .carry/wheels/extra/ninja-*.whl 2>/dev/null | head -n 1)
        [ -n "$whl" ] && extra+=("$whl")
    fi
    if [ ${#extra[@]} -gt 0 ]; then
        echo "also installing: ${extra[*]}"
        "$PY" -m pip install --no-deps --no-index --quiet --disable-pip-version-check --target /tmp/pydeps "${extra[@]}" || true
    fi
    export PYTHONPATH=/tmp/pydeps:$PWD PATH=/tmp/pydeps/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
    export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} TOKENIZERS_PARALLELISM=false
    "$PY" -c "import diffusers, transformers, nerfacc, open_clip, jsonschema; print('diffusers', diffusers.__version__, '| transformers', transformers.__version__, '| nerfacc', nerfacc.__version__, '| open_clip', open_clip.__version__)" \
        || { echo "imports failed"; return 1; }

    say "== nerfacc CUDA ops (JIT build, once)"
    timeout 300 "$PY" - <<'EOF' || echo "nerfacc build step failed/timed out: the bench uses the torch sampler"
import time, traceback
t = time.time()
try:
    from nerfacc.cuda._backend import _C
    print("nerfacc CUDA ops:", "loaded" if _C is not None else "NOT available", f"({time.time() - t:.0f} s)")
except Exception:
    print("nerfacc CUDA ops: build failed"); traceback.print_exc(limit=3)
EOF

    if [ "$(left)" -gt 430 ]; then
        say "== GPU test of the bench (tiny backend on CUDA)"
        timeout 100 "$PY" -m pytest -q -x -m gpu -p no:cacheprovider tests/test_bench.py 2>&1 | tail -n 15 || true
    else
        say "skipping the GPU test (time)"
    fi

    local budget
    budget=$(( $(left) - 170 ))
    [ "$budget" -lt 120 ] && budget=$(( $(left) - 40 ))
    say "== sd sweep (time budget ${budget}s)"
    timeout -s INT -k 20 $((budget + 45)) "$PY" -m db3d bench --config config/paper.yaml \
        --set backend=sd --set models.sd=random --name sd-paper-random --out "$OUT/sd.tsv" \
        --time-budget "$budget" --sds-repeats 2 ${DB3D_BENCH_ARGS:-} \
        --variant "bf16 precision=bf16 rows=unet,sds,db,ref" \
        --variant "mem24 memlimit=24 rows=db,sds" \
        --variant "mem24_te memlimit=24 train_text_encoder=1 rows=db" \
        --variant "mem24_te_ckpt memlimit=24 train_text_encoder=1 grad_ckpt=1 rows=db" \
        --variant "tf32 tf32=1 rows=unet,sds,db" \
        --variant "chlast channels_last=1 rows=unet,sds,db" \
        --variant "nogrid occgrid=off rows=sds" \
        --variant "nondet deterministic=0 rows=sds,db" \
        --variant "classic attention=classic rows=unet,sds,db"
    say "sd exit code $?"

    if [ "$(left)" -gt 100 ]; then
        budget=$(( $(left) - 60 ))
        [ "$(left)" -gt 230 ] && budget=$(( $(left) - 140 ))
        say "== if with LoRA r=4 (time budget ${budget}s)"
        timeout -s INT -k 20 $((budget + 40)) "$PY" -m db3d bench --config config/paper.yaml \
            --set backend=if --set models.if=random --lora-rank 4 --name if-paper-random-lora4 \
            --out "$OUT/if.tsv" --time-budget "$budget" --sds-repeats 2 ${DB3D_BENCH_ARGS:-} --sds-resolutions 64 \
            --rows build,db,ref,unet,sds,sds3,img2img,priors,save
        say "if exit code $?"
    else
        say "skipping if (time)"
    fi

    if [ "$(left)" -gt 90 ]; then
        budget=$(( $(left) - 50 ))
        say "== sd with torch.compile of the UNet (time budget ${budget}s)"
        timeout -s INT -k 20 $((budget + 30)) "$PY" -m db3d bench --config config/paper.yaml \
            --set backend=sd --set models.sd=random --name sd-compile --out "$OUT/sd_compile.tsv" \
            --time-budget "$budget" --sds-repeats 2 ${DB3D_BENCH_ARGS:-} --rows build,unet,sds --sds-resolutions 64 \
            --variant "compiled compile=1 rows=unet,sds"
        say "sd compile exit code $?"
    else
        say "skipping the compile run (time)"
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
