"""Airflow's room: everything that knows it runs under Airflow, and the one way the package talks to it.

The DAG files import only this layer to parse: the names (``airflow_api``: DAG and task ids, UI
paths, and the REST client the use cases pause and trigger DAGs with), the DAGs' defaults
(``defaults``), the task wrappers (``tasks``), the companies a parse builds (``companies``), the
backfill's trigger form (``backfill_form``) and the callbacks' notifier (``notifier``, with the
``notices`` it sends). The deployment's side is here too: the pools (``pools``) and the Celery
workers' config and preload (``celery_config``, ``worker_preload``).

It sits below ``lifecycle`` (whose use cases pause and trigger DAGs through ``airflow_api``), so
nothing here calls a use case: the DAG files' task bodies do that, inside the task.
"""
