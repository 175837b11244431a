"""The one list of settings a CeleryExecutor deployment runs with, shared by compose and the script.

``docker-compose.yaml`` (``x-airflow-common.environment``) and ``scripts/deployment.py`` must run
the same processes with the same settings; they must not drift. So both take them from here:
``SHARED`` holds the values that are the same wherever the deployment runs (compose writes them
literally, ``tests/test_compose.py`` checks they are equal to these), ``PER_SITE`` the names whose
value depends on the site (hosts, ports, secrets: compose takes them from ``.env`` and its service
names, the script from ``.local/env.sh`` and the ports it picks). A name in compose that is in
neither list, or one missing from it, fails that test.
"""

from __future__ import annotations

# Same value in compose and in the scripted deployment.
SHARED: dict[str, str] = {
    "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    # Task slots the scheduler hands out, all workers together. Keep it above workers x concurrency:
    # a worker killed mid-task keeps its tasks' slots taken in the executor until the scheduler
    # restarts (seen in tests/deployment), and the pool, not this, bounds the Sage calls.
    "AIRFLOW__CORE__PARALLELISM": "16",
    # Task processes per worker: a task is mostly waiting on Sage or PostgreSQL, but each one is a
    # Python process of about 150 MB; scale out with more workers rather than a bigger number here.
    "AIRFLOW__CELERY__WORKER_CONCURRENCY": "4",
    # A worker takes one message at a time, so a long first sync never holds back queued tasks that
    # another worker could run now.
    "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
    # A dead worker's tasks are failed (then retried elsewhere) after this long without a heartbeat.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "120",
    # How long a worker's task supervisor blocks between looks at its task process (and its
    # heartbeat interval). The task runner closes its socket to the supervisor before the process
    # has exited; when the supervisor sees that close first, it then sleeps a whole interval
    # before noticing the exit. At Airflow's 5 s, a third of the sync tasks (about 1.5 s of work
    # each) held their worker slot 5 s longer (tests/deployment's worker logs: "Workload
    # finished duration" in two clusters, about 1.5 s and 6.5 s). At 1 s the tail is at most 1 s,
    # for one heartbeat a second per running task.
    "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL": "1",
    # Each Celery worker imports the plugins and the sync stack once, before it forks its pool, so
    # a task process does not (about 1 core-second a task on 2 busy cores): see
    # plugins/sage_sync/orchestration/worker_preload.py.
    "AIRFLOW__CELERY__CELERY_CONFIG_OPTIONS": "sage_sync.orchestration.celery_config.CELERY_CONFIG",
    "AIRFLOW__COSMOS__ENABLE_TELEMETRY": "False",
    "DBT_SEND_ANONYMOUS_USAGE_STATS": "False",
}

# Same name everywhere, value from the site.
PER_SITE: tuple[str, ...] = (
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",
    "AIRFLOW__CELERY__RESULT_BACKEND",
    "AIRFLOW__CELERY__BROKER_URL",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW_CONN_SAGE_WAREHOUSE",
    "AIRFLOW_CONN_SAGE_DEFAULT",
    "SAGE_RATE_LIMIT_PER_S",
    "SAGE_HISTORY_RATE_SHARE",
    "SAGE_TOKEN_KEYS",
    "SAGE_AIRFLOW_API_URL",
    # The metadata DB again, for the housekeeping DAG's task (Airflow 3 keeps tasks out of it).
    "SAGE_AIRFLOW_METADATA_DB_URL",
)

# The processes of one deployment: (name, airflow sub-command). Compose has one service per entry
# (airflow-apiserver, ...); the script runs each once, plus `WORKERS` Celery workers.
PROCESSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("api-server", ("api-server",)),
    ("scheduler", ("scheduler",)),
    ("dag-processor", ("dag-processor",)),
    ("triggerer", ("triggerer",)),
)
WORKER_COMMAND: tuple[str, ...] = ("celery", "worker")
WORKERS = 2
