"""What every task process of a Celery worker would otherwise import again: done once per worker.

A Celery worker forks its pool processes, each pool process forks a task supervisor's task process,
and none of them exec: what the worker has imported, every task process inherits. Airflow preloads
its own operators that way (``on_celery_import_modules``); a sync task also spends about 1 core-second
before its first Sage request on loading the plugins (``integrate_macros_plugins``: our Connect
pages and cosmos' plugin, with FastAPI and Jinja) and the sync stack (psycopg, the client, the
loader). On 2 cores, with a dozen companies of 13 tasks a day, that was a large share of the day.

Nothing here opens a connection, a socket or a thread: forked children must not share those.
"""

from __future__ import annotations

import gc

from airflow.sdk.plugins_manager import integrate_macros_plugins

import sage_sync.orchestration.airflow_api
import sage_sync.orchestration.companies
import sage_sync.orchestration.tasks
import sage_sync.pipeline.sync
import sage_sync.sage.streams
import sage_sync.warehouse.snapshot  # noqa: F401 - imported for the forked task processes

# Loads every plugin (their import is cached in the plugins manager for the forks).
integrate_macros_plugins()
# As Airflow's own preload does: keep the imported objects out of the collector's reach, so the
# forks do not copy the pages the collector would touch.
gc.freeze()
