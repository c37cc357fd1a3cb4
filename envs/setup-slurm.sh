#!/usr/bin/env bash
# Installs Slurm (slurmctld, slurmd, the client commands) and munge from Debian, for
# tests/test_slurm.py, which starts a single-node cluster of its own on localhost
# (tests/slurm_cluster.py) and runs profiles/slurm against it.
# Idempotent: does nothing when the binaries are already there. Only installs: no daemon is
# enabled or started and no /etc/slurm config is written (Debian ships none; the test writes its
# own there while it runs and removes it). Needs root (CI runs as root); without root or apt-get it
# says so and exits 0, and the Slurm test skips itself with the reason.
set -euo pipefail
need=(munged slurmctld slurmd sbatch squeue sinfo scontrol sacct)
missing=()
for b in "${need[@]}"; do command -v "$b" >/dev/null 2>&1 || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "db3d: slurm $(sinfo --version 2>/dev/null | awk '{print $2}') and munge present"
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "db3d: apt-get not found; install slurm-wlm + munge by hand (the Slurm test will skip)" >&2
  exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
    echo "db3d: not root and no passwordless sudo; cannot install slurm-wlm (the Slurm test will skip)" >&2
    exit 0
  fi
fi
echo "db3d: installing slurm-wlm + munge from Debian (missing: ${missing[*]})"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d 101: the packages' postinst must not start system daemons (the test runs its own)
policy=/usr/sbin/policy-rc.d
added_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && added_policy=1
fi
$SUDO apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
[ -n "$added_policy" ] && $SUDO rm -f "$policy"
sinfo --version
