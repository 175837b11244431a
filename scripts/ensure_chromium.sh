#!/usr/bin/env bash
# Debian's headless Chromium, for tests/browser (the browser test of the Sage connections pages),
# unless /usr/bin/chromium is already there (~100 MB download). Without it the browser test skips.
exec bash "$(dirname "$0")/ensure_debian_package.sh" /usr/bin/chromium chromium
