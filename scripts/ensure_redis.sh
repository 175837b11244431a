#!/usr/bin/env bash
# Install Debian's redis-server (for tests/deployment: scripts/deployment.py starts a Redis of its
# own, on a free port, as the Celery broker) unless a redis-server is already on the PATH.
# Idempotent; needs root and Debian's package registry. Only the binary is needed: the package's
# own service is not used. Tests never install: without redis-server the deployment test skips.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ensure_redis: redis-server is missing and this is not root: sudo apt-get install redis-server" >&2
    exit 1
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure_redis: no apt-get here; install Redis so that redis-server is on the PATH" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends redis-server >/dev/null
redis-server --version
