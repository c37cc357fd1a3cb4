# Sourced by scripts/device_bench.sh, scripts/device_perf.sh and scripts/device_e2e.sh (not run on its own): the set-up of a
# lent GPU machine that has python + torch + CUDA but cannot download anything.
#
#   db3d_env        picks PY, installs the wheels carried in .carry/wheels (scripts/carry_wheels.sh; or the folder
#                   DB3D_WHEELS names) into /tmp/pydeps (rich/ninja
#                   from .carry/wheels/extra only where missing), exports PYTHONPATH & co; with a
#                   prebuilt nerfacc extension in .carry/nerfacc/nerfacc_cuda.so (what db3d_keep_builds
#                   saved on an earlier machine of the same kind) nerfacc loads it instead of building;
#                   with .carry/inductor/cache.tgz.part* it unpacks torch.compile's on-disk cache
#   db3d_setup      all of a workflow run's set-up (db3d_env or a warm machine's variables, `python`,
#                   Snakemake, nerfacc); DB3D_E2E_LOCAL=1: the active python, for a CPU dry run
#   db3d_nerfacc    loads (or JIT-builds, ~80 s) nerfacc's CUDA ops once, before anything is timed
#   db3d_keep_builds DIR  copies the nerfacc extension and torch.compile's cache (tar.gz in parts of
#                   15 MiB, at most MAX_MIB) to DIR, for the next machine: carry them as .carry/nerfacc
#                   and .carry/inductor
INDUCTOR_CACHE=${TORCHINDUCTOR_CACHE_DIR:-/tmp/torchinductor_$(id -un)}

db3d_env() {
    local c
    PY=""
    for c in python python3; do
        if command -v "$c" >/dev/null && "$c" -c "import torch" 2>/dev/null; then PY=$c; break; fi
    done
    if [ -z "$PY" ]; then echo "no python with torch found"; return 1; fi
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    "$PY" -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.is_available() and torch.cuda.get_device_name())"
    command -v nvcc >/dev/null && nvcc --version | tail -n 2 || echo "nvcc: not found (nerfacc will fall back to the torch sampler)"
    nproc; free -g | head -n 2; df -h /tmp . | tail -n 2

    "$PY" -m pip install --no-deps --no-index --quiet --disable-pip-version-check --target /tmp/pydeps "${DB3D_WHEELS:-.carry/wheels}"/*.whl \
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

    if [ -f .carry/nerfacc/nerfacc_cuda.so ]; then
        # nerfacc first tries `from nerfacc import csrc` (a setup.py build), then JIT-builds: give it
        # the carried build under that name (an ImportError falls back to the JIT build)
        cat > /tmp/pydeps/nerfacc/csrc.py <<EOF
# written by scripts/device_env.sh: the prebuilt nerfacc_cuda extension carried in .carry/nerfacc
import importlib.util as _util

import torch  # noqa: F401  (the extension links against torch's libraries)

try:
    _spec = _util.spec_from_file_location("nerfacc_cuda", "$PWD/.carry/nerfacc/nerfacc_cuda.so")
    _mod = _util.module_from_spec(_spec)
    _spec.loader.exec_module(_mod)
except Exception as exc:  # noqa: BLE001
    raise ImportError(f"carried nerfacc_cuda.so does not load: {exc}") from exc
globals().update({k: getattr(_mod, k) for k in dir(_mod) if not k.startswith("__")})
EOF
        echo "nerfacc: using the carried prebuilt extension .carry/nerfacc/nerfacc_cuda.so"
    fi
    if ls .carry/inductor/cache.tgz.part* >/dev/null 2>&1; then
        mkdir -p "$INDUCTOR_CACHE"
        cat .carry/inductor/cache.tgz.part* | tar xzf - -C "$INDUCTOR_CACHE" \
            && echo "torch.compile cache: unpacked $(du -sh "$INDUCTOR_CACHE" | cut -f1) into $INDUCTOR_CACHE" \
            || echo "torch.compile cache: unpacking failed (compiles from scratch)"
    fi
    "$PY" -c "import diffusers, transformers, nerfacc, open_clip, jsonschema; print('diffusers', diffusers.__version__, '| transformers', transformers.__version__, '| nerfacc', nerfacc.__version__, '| open_clip', open_clip.__version__)" \
        || { echo "imports failed"; return 1; }
}

db3d_nerfacc() {
    timeout 300 "$PY" - <<'EOF' || echo "nerfacc build step failed/timed out: the stages use the torch sampler"
import time, traceback
t = time.time()
try:
    from nerfacc.cuda._backend import _C
    print("nerfacc CUDA ops:", "loaded" if _C is not None else "NOT available", f"({time.time() - t:.0f} s)")
except Exception:
    print("nerfacc CUDA ops: build failed"); traceback.print_exc(limit=3)
EOF
}

db3d_setup() {  # REPO: the checkout. The whole set-up of a workflow run on a lent GPU, warm-aware:
    # a warm machine (an earlier call's /tmp/pydeps) only sets the variables again; DB3D_E2E_LOCAL=1
    # uses the active python (a CPU dry run of the plumbing); `python` is the interpreter with torch
    # (the rules call it); Snakemake must import; nerfacc's CUDA ops are loaded once.
    local c
    echo "== environment + carried wheels -> /tmp/pydeps"
    if [ -n "${DB3D_E2E_LOCAL:-}" ]; then
        PY=python; export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
        "$PY" -m snakemake --version | sed 's/^/snakemake /'
        return 0
    elif [ -f /tmp/pydeps/.db3d_wheels_done ]; then
        for c in python python3; do
            if command -v "$c" >/dev/null && "$c" -c "import torch" 2>/dev/null; then PY=$c; break; fi
        done
        export PYTHONPATH=/tmp/pydeps:$REPO PATH=/tmp/pydeps/bin:$PATH PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
        export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16} TOKENIZERS_PARALLELISM=false
    else
        db3d_env || return 1
        touch /tmp/pydeps/.db3d_wheels_done
    fi
    if [ "$(command -v python 2>/dev/null)" != "$(command -v "$PY")" ]; then
        mkdir -p /tmp/pybin && ln -sf "$(command -v "$PY")" /tmp/pybin/python && export PATH=/tmp/pybin:$PATH
    fi
    "$PY" -m snakemake --version | sed 's/^/snakemake /' || { echo "snakemake does not import"; return 1; }
    echo "== nerfacc CUDA ops"
    db3d_nerfacc
}

db3d_keep_builds() {
    local dest=$1 max=${MAX_MIB:-40} so
    mkdir -p "$dest"
    so=$("$PY" -c "from torch.utils.cpp_extension import _get_build_directory as d; print(d('nerfacc_cuda', False))" 2>/dev/null)/nerfacc_cuda.so
    if [ -f "$so" ] && [ "$(stat -c %s "$so")" -lt $((16 * 1024 * 1024)) ]; then cp "$so" "$dest/"; fi
    if [ -d "$INDUCTOR_CACHE" ]; then
        tar czf /tmp/inductor_cache.tgz -C "$INDUCTOR_CACHE" . 2>/dev/null
        local size=$(( $(stat -c %s /tmp/inductor_cache.tgz) / 1024 / 1024 ))
        echo "torch.compile cache: $(du -sh "$INDUCTOR_CACHE" | cut -f1) -> ${size} MiB compressed"
        if [ "$size" -lt "$max" ]; then
            split -b 15m -d /tmp/inductor_cache.tgz "$dest/cache.tgz.part"
        else
            echo "torch.compile cache over ${max} MiB: not kept"
        fi
    fi
    ls -la "$dest"
}
