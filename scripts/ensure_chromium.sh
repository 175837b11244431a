#!/usr/bin/env bash
# Install Debian's headless Chromium (for tests/browser, the browser test of the Sage connections
# pages) unless /usr/bin/chromium is already there. Idempotent; needs root and Debian's package
# registry (~30 s with apt-get update on a 2-core box, ~100 MB download). Tests never install:
# without /usr/bin/chromium the browser test is skipped.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_chromium: $CHROMIUM is missing and this is not root: sudo apt-get install chromium" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_chromium: no apt-get here; install Chromium so that $CHROMIUM exists" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends chromium >/dev/null
"$CHROMIUM" --version 2>/dev/null || { echo "ensure_chromium: $CHROMIUM did not start" >&2; exit 1; }
