"""The Celery config of our deployment (``[celery] celery_config_options`` names ``CELERY_CONFIG``).

Airflow's own, plus ``imports``: the module each Celery worker imports once, before it forks its
pool (see ``worker_preload`` for why). A whole config, not only the difference: ``airflow celery
worker`` takes this dict as its entire Celery config (without Airflow's broker and result backend
in it, a worker fell back to Celery's default broker, ``amqp://localhost``, and never saw a task).
"""

from __future__ import annotations

from typing import Any

from airflow.providers.celery.executors.default_celery import DEFAULT_CELERY_CONFIG

CELERY_CONFIG: dict[str, Any] = {
    **DEFAULT_CELERY_CONFIG,
    "imports": (*DEFAULT_CELERY_CONFIG.get("imports", ()), "sage_sync.orchestration.worker_preload"),
}
