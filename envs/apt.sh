# Sourced by envs/setup-browser.sh and envs/setup-slurm.sh (not run on its own).
#   db3d_apt_ready WHAT TEST   sets SUDO ("" as root, "sudo -n" with passwordless sudo), runs
#                              apt-get update and returns 0 when Debian packages can be installed;
#                              otherwise says why in one line (WHAT to install by hand, TEST skips)
#                              and returns 1, so the caller exits 0 and the test skips itself.
db3d_apt_ready() {
  local what=$1 test=$2
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "db3d: apt-get not found; install $what by hand (the $test will skip)" >&2
    return 1
  fi
  SUDO=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo -n"; else
      echo "db3d: not root and no passwordless sudo; cannot install $what (the $test will skip)" >&2
      return 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
}
