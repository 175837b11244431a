#!/usr/bin/env bash
# ensure_debian_package.sh COMMAND PACKAGE: install Debian's PACKAGE unless COMMAND (a name on the
# PATH or an absolute path) is already there, then check that it starts. Idempotent; needs root
# and Debian's package registry (apt-get update is ~30 s on a 2-core box). For what a test needs
# from the machine (scripts/ensure_chromium.sh, scripts/ensure_redis.sh); tests never install:
# without it, the test that needs it skips and says so.
set -euo pipefail
command=$1
package=$2
if command -v "$command" >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure: $command is missing and this is not root: sudo apt-get install $package" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure: no apt-get here; install $package so that $command exists" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "$package" >/dev/null
"$command" --version >/dev/null 2>&1 || { echo "ensure: $command did not start" >&2; exit 1; }
