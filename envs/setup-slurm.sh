#!/usr/bin/env bash
# Installs Slurm (slurmctld, slurmd, the client commands) and munge from Debian, for
# tests/test_slurm.py, which starts a single-node cluster of its own on localhost
# (tests/slurm_cluster.py) and runs profiles/slurm against it.
# Idempotent: does nothing when the binaries are already there. Only installs: no daemon is
# enabled or started and no /etc/slurm config is written (Debian ships none; the test writes its
# own there while it runs and removes it). Needs root (CI runs as root); without root or apt-get it
# says so and exits 0, and the Slurm test skips itself with the reason.
set -euo pipefail
# the package's version (`sinfo --version` needs a cluster config, which exists only while the test runs)
slurm_version() { dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null || echo "(not from Debian)"; }
need=(munged slurmctld slurmd sbatch squeue sinfo scontrol sacct)
missing=()
for b in "${need[@]}"; do command -v "$b" >/dev/null 2>&1 || missing+=("$b"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "db3d: slurm $(slurm_version) and munge present"
  exit 0
fi
source "${BASH_SOURCE[0]%/*}/apt.sh"
db3d_apt_ready "slurm-wlm + munge" "Slurm test" || exit 0
echo "db3d: installing slurm-wlm + munge from Debian (missing: ${missing[*]})"
# policy-rc.d 101: the packages' postinst must not start system daemons (the test runs its own)
policy=/usr/sbin/policy-rc.d
added_policy=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy" && added_policy=1
fi
$SUDO apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
[ -n "$added_policy" ] && $SUDO rm -f "$policy"
echo "db3d: slurm $(slurm_version) installed"
