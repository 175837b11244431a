#!/usr/bin/env bash
# Debian's redis-server, for tests/deployment (scripts/deployment.py starts a Redis of its own, on
# a free port, as the Celery broker; the package's own service is not used), unless a
# redis-server is already on the PATH. Without it the deployment test skips.
exec bash "$(dirname "$0")/ensure_debian_package.sh" redis-server redis-server
