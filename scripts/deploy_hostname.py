"""The hostname a Celery worker of the scripted deployment reports for the tasks it runs.

Airflow records ``task_instance.hostname`` from ``[core] hostname_callable`` (the machine's FQDN by
default), so two workers on one machine would look like one in the UI, in the logs' links and in
the metadata. ``scripts/deployment.py`` points that setting here for its workers and gives each
its Celery hostname in ``SAGE_WORKER_HOSTNAME``. In compose every worker is a container with a
hostname of its own, so it needs none of this.
"""

from __future__ import annotations

import os
import socket


def hostname() -> str:
    """The worker's Celery hostname (``worker1@host``), else the machine's FQDN."""
    return os.environ.get("SAGE_WORKER_HOSTNAME") or socket.getfqdn()
