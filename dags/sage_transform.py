"""
### dbt transform of the Sage warehouse

Scheduled on the `sage_raw` Asset: whenever any company's sync lands new data, this DAG runs
the dbt project (`dbt/`) that deduplicates the raw versions, applies deletions and builds the
analyst models. Rendered by astronomer-cosmos from dbt's manifest, so every model and its tests
is its own task in the UI. dbt connects through the Airflow connection `sage_warehouse`.

If the manifest has not been built yet (`make dbt-parse`), a single `dbt build` task stands in,
so a fresh deployment still transforms.
"""

from __future__ import annotations

import os
import sys
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import DAG, Asset

SAGE_RAW_ASSET = Asset(name="sage_raw", uri="x-sage://warehouse/sage_raw")
DBT_PROJECT = Path(os.environ.get("SAGE_DBT_PROJECT_DIR", Path(__file__).resolve().parent.parent / "dbt"))
MANIFEST = DBT_PROJECT / "target" / "manifest.json"
DBT_EXECUTABLE = os.environ.get("SAGE_DBT_EXECUTABLE", str(Path(sys.executable).parent / "dbt"))

DAG_ARGS = {
    "dag_id": "sage_transform",
    "dag_display_name": "Sage transform (dbt)",
    "description": "Builds the analyst models from the raw Sage tables",
    "doc_md": __doc__,
    "schedule": [SAGE_RAW_ASSET],
    "start_date": datetime(2024, 1, 1),
    "catchup": False,
    "max_active_runs": 1,
    "default_args": {"owner": "data-engineering", "retries": 1, "retry_delay": timedelta(minutes=2)},
    "tags": ["sage", "dbt", "transform"],
}


def _cosmos_dag() -> DAG:
    from cosmos import DbtDag, ExecutionConfig, ProfileConfig, ProjectConfig, RenderConfig  # noqa: PLC0415
    from cosmos.constants import InvocationMode, LoadMode, TestBehavior  # noqa: PLC0415
    from cosmos.profiles import PostgresUserPasswordProfileMapping  # noqa: PLC0415

    return DbtDag(
        project_config=ProjectConfig(
            dbt_project_path=DBT_PROJECT, manifest_path=MANIFEST, project_name="sage_carbon",
            install_dbt_deps=False,
        ),
        profile_config=ProfileConfig(
            profile_name="sage_carbon",
            target_name="airflow",
            profile_mapping=PostgresUserPasswordProfileMapping(
                conn_id="sage_warehouse", profile_args={"schema": "analytics"}
            ),
        ),
        execution_config=ExecutionConfig(
            dbt_executable_path=DBT_EXECUTABLE, invocation_mode=InvocationMode.DBT_RUNNER
        ),
        # One task per model, then every test in one task at the end: a test spanning several
        # models (the reconciliation) can only run once all of them are built, and a task per
        # test would double the run's fixed per-task cost.
        render_config=RenderConfig(load_method=LoadMode.DBT_MANIFEST, test_behavior=TestBehavior.AFTER_ALL),
        **DAG_ARGS,
    )


def _single_task_dag() -> DAG:
    from airflow.providers.standard.operators.bash import BashOperator  # noqa: PLC0415

    with DAG(**DAG_ARGS) as dag:  # noqa: AIR002 - schedule is in DAG_ARGS
        BashOperator(
            task_id="dbt_build",
            bash_command=f"{DBT_EXECUTABLE} build --project-dir {DBT_PROJECT} --profiles-dir {DBT_PROJECT}",
            env={"DBT_SEND_ANONYMOUS_USAGE_STATS": "False", "DBT_TARGET": "prod"},  # dbt/profiles.yml
            append_env=True,
        )
    return dag


sage_transform = _cosmos_dag() if MANIFEST.exists() else _single_task_dag()
