"""docker-compose.yaml describes a deployable stack (no Docker engine here, so check its shape)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_services_of_a_celery_deployment() -> None:
    services = _compose()["services"]
    expected = {
        "postgres",
        "redis",
        "airflow-init",
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "fake-sage",
    }
    assert expected <= set(services)
    commands = {name: str(svc.get("command", "")) for name, svc in services.items()}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-worker"] == "celery worker"
    assert commands["airflow-dag-processor"] == "dag-processor"


def test_airflow_services_share_celery_settings_and_mount_the_project() -> None:
    services = _compose()["services"]
    for name in (
        "airflow-apiserver",
        "airflow-scheduler",
        "airflow-dag-processor",
        "airflow-triggerer",
        "airflow-worker",
        "airflow-init",
    ):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:"), name
        assert "AIRFLOW_CONN_SAGE_WAREHOUSE" in env and "AIRFLOW_CONN_SAGE_DEFAULT" in env, name
        mounts = {v.split(":")[1] for v in services[name]["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/dbt"} <= mounts, name
        if name != "airflow-init":
            init = services[name]["depends_on"]["airflow-init"]
            assert init["condition"] == "service_completed_successfully"


def test_fake_sage_only_in_demo_profile_and_no_secret_in_file() -> None:
    compose = _compose()
    assert compose["services"]["fake-sage"]["profiles"] == ["demo"]
    text = (ROOT / "docker-compose.yaml").read_text()
    assert "FERNET_KEY: ${" in text and "POSTGRES_PASSWORD: ${" in text


def test_mounted_paths_and_build_files_exist() -> None:
    for path in (
        "dags",
        "plugins",
        "dbt",
        "docker/Dockerfile",
        "docker/requirements.txt",
        "docker/init-warehouse.sql",
        ".env.example",
    ):
        assert (ROOT / path).exists(), path


def _settings():
    import importlib.util

    spec = importlib.util.spec_from_file_location("deploy_settings", ROOT / "scripts" / "deploy_settings.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compose_environment_is_the_deployment_settings_list() -> None:
    """Compose and scripts/deployment.py run with one list of settings (scripts/deploy_settings.py)."""
    settings = _settings()
    env = _compose()["x-airflow-common"]["environment"]
    assert set(env) == set(settings.SHARED) | set(settings.PER_SITE), (
        f"only in compose: {sorted(set(env) - set(settings.SHARED) - set(settings.PER_SITE))}; "
        f"only in deploy_settings: {sorted(set(settings.SHARED) | set(settings.PER_SITE) - set(env))}"
    )
    for key, value in settings.SHARED.items():
        assert str(env[key]) == value, key
    for key in settings.PER_SITE:  # site values come from .env or service names, never a literal secret
        assert key not in settings.SHARED


def test_compose_runs_the_processes_of_the_scripted_deployment_and_the_same_pool() -> None:
    settings = _settings()
    services = _compose()["services"]
    commands = {str(svc.get("command", "")) for svc in services.values()}
    for _name, command in settings.PROCESSES:
        assert " ".join(command) in commands
    assert " ".join(settings.WORKER_COMMAND) == services["airflow-worker"]["command"]
    # The pools are declared once (sage_sync.core.pools): compose, the Makefile (the dev metadata DB
    # and the tests') and scripts/deployment.py all set them with the one module, none by hand.
    setter = "python -m sage_sync.orchestration.pools"
    assert setter in services["airflow-init"]["command"]
    makefile = (ROOT / "Makefile").read_text()
    assert makefile.count(setter.replace("python", "$(BIN)/python")) == 2
    deployment = (ROOT / "scripts" / "deployment.py").read_text()
    assert '"sage_sync.orchestration.pools"' in deployment
    for text in (str(services["airflow-init"]["command"]), makefile, deployment):
        assert "pools set" not in text and '"pools", "set"' not in text


def test_the_pools_module_sets_every_declared_pool() -> None:
    from sage_sync.core.pools import POOLS

    run = [sys.executable, "-m", "sage_sync.orchestration.pools"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    probe = (
        "import json; from airflow.models.pool import Pool; "
        "print(json.dumps([[p.pool, p.slots, p.description] for p in Pool.get_pools()]))"
    )
    found = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    in_airflow = {tuple(p) for p in json.loads(found.stdout.strip().splitlines()[-1])}
    assert {(p.name, p.slots, p.description) for p in POOLS} <= in_airflow


PRELOAD_PROBE = """
import threading
from airflow.providers.celery.executors.celery_executor_utils import app
from airflow.sdk import plugins_manager
print('PROBE', list(app.conf.imports), app.conf.broker_url)
before = plugins_manager._get_plugins.cache_info().currsize
app.loader.import_default_modules()  # what `airflow celery worker` does before it forks its pool
print('PROBE', before, plugins_manager._get_plugins.cache_info().currsize)
print('PROBE', sorted(p.name for p in plugins_manager._get_plugins()[0]))
print('PROBE', 'sage_sync.pipeline.sync' in __import__('sys').modules, threading.active_count())
"""


def test_celery_workers_load_the_plugins_and_the_sync_stack_before_they_fork() -> None:
    # Every task process is forked from its worker, never exec'd: what the worker loaded once, the
    # task does not load again (about 1 core-second a task on this machine).
    settings = _settings()
    env = {**os.environ, **settings.SHARED, "AIRFLOW__CELERY__BROKER_URL": "redis://127.0.0.1:1/0"}
    probe = subprocess.run(
        [sys.executable, "-c", PRELOAD_PROBE], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert probe.returncode == 0, probe.stderr[-3000:]
    lines = [line.removeprefix("PROBE ") for line in probe.stdout.splitlines() if line.startswith("PROBE ")]
    imports, cache, plugins, stack = lines
    # the worker's whole config: Airflow's broker with our import (a partial dict fell back to amqp)
    assert imports == "['sage_sync.orchestration.worker_preload'] redis://127.0.0.1:1/0"
    assert cache == "0 1"  # the plugins were loaded by the import, not before
    assert "sage_connect" in plugins
    assert stack == "True 1"  # the sync stack is imported, and no thread was started in the parent
