"""docker-compose.yaml describes a deployable stack (no Docker engine here, so check its shape)."""

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def test_services_of_a_celery_deployment() -> None:
    services = _compose()["services"]
    expected = {"postgres", "redis", "airflow-init", "airflow-apiserver", "airflow-scheduler",
                "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "fake-sage"}
    assert expected <= set(services)
    commands = {name: str(svc.get("command", "")) for name, svc in services.items()}
    assert commands["airflow-apiserver"] == "api-server"
    assert commands["airflow-worker"] == "celery worker"
    assert commands["airflow-dag-processor"] == "dag-processor"


def test_airflow_services_share_celery_settings_and_mount_the_project() -> None:
    services = _compose()["services"]
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                 "airflow-triggerer", "airflow-worker", "airflow-init"):
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
    for path in ("dags", "plugins", "dbt", "docker/Dockerfile", "docker/requirements.txt",
                 "docker/init-warehouse.sql", ".env.example"):
        assert (ROOT / path).exists(), path
