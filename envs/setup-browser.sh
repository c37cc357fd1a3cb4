#!/usr/bin/env bash
# Installs headless Chromium and its WebDriver from Debian (for tests/test_userstudy_e2e.py).
# Idempotent: does nothing when /usr/bin/chromium and /usr/bin/chromedriver are already there.
# Needs root (CI runs as root); without root or apt-get it says so and exits 0, and the browser
# test skips itself with the reason. No browser download of its own: Debian's packages only
# (`playwright install` / Selenium Manager downloads are not used anywhere).
set -euo pipefail
if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
  echo "db3d: chromium $(/usr/bin/chromium --version 2>/dev/null | awk '{print $2}') and chromedriver present"
  exit 0
fi
source "${BASH_SOURCE[0]%/*}/apt.sh"
db3d_apt_ready "chromium + chromium-driver" "browser test" || exit 0
echo "db3d: installing chromium + chromium-driver from Debian"
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null
/usr/bin/chromium --version
