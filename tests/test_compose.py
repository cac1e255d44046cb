"""docker-compose.yaml for teams. No Docker engine runs here, so the file is checked as data:
services, images, healthchecks, start-up order, secrets from .env, loopback-only ports. Where the
`docker compose` CLI plugin exists, `docker compose config` validates it too."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]
ONE_SHOT = {"airflow-init"}
AIRFLOW_SERVICES = {"airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
                    "airflow-worker", "airflow-worker-training"}
WORKERS = {"airflow-worker", "airflow-worker-training"}


def _env_example() -> dict[str, str]:
    values = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def test_same_topology_as_the_local_stack():
    assert {"postgres", "redis", "mlflow", "airflow-init"} | AIRFLOW_SERVICES <= set(SERVICES)
    assert SERVICES["postgres"]["image"].startswith("pgvector/pgvector:")
    for name in AIRFLOW_SERVICES | ONE_SHOT:
        assert SERVICES[name]["build"]["dockerfile"] == "docker/airflow/Dockerfile", name
        assert SERVICES[name]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    dockerfile = (REPO / "docker/airflow/Dockerfile").read_text()
    assert re.search(r"apache/airflow:3\.3\.2", dockerfile)
    assert "requirements.txt" in dockerfile and "pip install --no-cache-dir --no-deps -e ." in dockerfile
    init_sql = (REPO / "docker/postgres/init.sql").read_text()
    for db in ("airflow", "mlflow", "tandem"):
        assert f"CREATE DATABASE {db};" in init_sql
    assert "CREATE EXTENSION IF NOT EXISTS vector" in init_sql


def test_every_long_running_service_has_a_healthcheck():
    for name, svc in SERVICES.items():
        if name in ONE_SHOT:
            assert svc.get("restart") == "no"
            continue
        test = svc.get("healthcheck", {}).get("test")
        assert test and test != ["CMD", "true"], f"{name} has no real healthcheck"


def test_start_order_waits_on_health():
    for name in AIRFLOW_SERVICES:
        deps = SERVICES[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["redis"]["condition"] == "service_healthy"
    for name in AIRFLOW_SERVICES - WORKERS:
        assert SERVICES[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
    assert SERVICES["mlflow"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_workers_scale_out_and_training_queue_exists():
    worker = SERVICES["airflow-worker"]
    assert "container_name" not in worker  # a fixed name would block --scale
    assert "ports" not in worker
    assert re.search(r"celery worker --queues default( |$)", worker["command"])  # never `training`
    for name in ("airflow-worker-training", "airflow-worker-gpu"):
        assert "--queues training" in SERVICES[name]["command"], name
    assert "profiles" not in SERVICES["airflow-worker-training"]  # the training queue always has a worker
    gpu = SERVICES["airflow-worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_no_task_depends_on_a_shared_tandem_state_volume():
    """Each container's TANDEM_HOME is its own: the base model comes from MLflow, verified by sha256."""
    from tandem import model_store

    assert "tandem-state" not in (COMPOSE.get("volumes") or {})
    for name, svc in SERVICES.items():
        home = (svc.get("environment") or {}).get("TANDEM_HOME")
        for volume in svc.get("volumes") or []:
            assert not (home and str(volume).split(":")[1].startswith(home)), f"{name} mounts {volume} over TANDEM_HOME"
        if home:
            assert svc["environment"]["TANDEM_BASE_MODEL_URI"] == model_store.STORE_URI, name
    init = " ".join(SERVICES["airflow-init"]["command"])
    assert "python -m tandem.setup_models" in init and "tandem models publish" in init


def test_ports_are_published_on_loopback_only():
    published = [(name, port) for name, svc in SERVICES.items() for port in svc.get("ports", [])]
    assert published, "the UIs must be reachable"
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_secrets_come_from_env_file():
    text = (REPO / "docker-compose.yaml").read_text()
    referenced = set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))  # $${X} is the container's own
    example = _env_example()
    missing = referenced - set(example)
    assert not missing, f".env.example lacks {sorted(missing)}"
    for key in ("POSTGRES_PASSWORD", "AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY"):
        assert key in referenced
        assert example[key].startswith("change-me"), f"{key} in .env.example must be a placeholder"
    # every secret-looking value is a reference to .env, never a literal
    for name, svc in SERVICES.items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"(PASSWORD|SECRET|SECRET_KEY|FERNET_KEY)$", key):
                assert str(value).startswith("${"), f"{name}: {key} must come from .env"
            # a password spliced into a URL breaks on @ / : % or a space: URLs come from tandem.stack.db_url
            assert not ("://" in str(value) and "@" in str(value)), f"{name}: {key} splices a credential into a URL"
        command = " ".join(svc.get("command") or []) if isinstance(svc.get("command"), list) else str(svc.get("command"))
        assert "${POSTGRES_PASSWORD" not in command, f"{name}: its command splices the password into a URL"
    assert ".env" in (REPO / ".gitignore").read_text().split()


def test_tandem_settings_are_the_same_layer_as_local():
    from tandem.config import SETTINGS

    known = {s.env for s in SETTINGS}
    env = SERVICES["airflow-scheduler"]["environment"]
    # TANDEM_AIRFLOW_PASSWORD is a secret, read only where it is needed (tandem.airflow.events, the api-server's
    # start); it is not a setting, so `tandem config` never prints it
    tandem_vars = {k for k in env if k.startswith("TANDEM_")} - {"TANDEM_AIRFLOW_PASSWORD"}
    assert tandem_vars and tandem_vars <= known, tandem_vars - known


@pytest.mark.skipif(subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
                    if shutil.which("docker") else True, reason="the docker compose CLI plugin is not installed")
def test_docker_compose_config_validates(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text((REPO / ".env.example").read_text())
    proc = subprocess.run(["docker", "compose", "--env-file", str(env_file), "-f", str(REPO / "docker-compose.yaml"),
                           "config", "--quiet"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_one_password_file_path_everywhere():
    """Compose's Airflow reads the admin password from where the CLI's asset events look for it."""
    from tandem.config import Settings

    env = SERVICES["airflow-apiserver"]["environment"]
    settings = Settings.load(env={"TANDEM_HOME": env["TANDEM_HOME"]})
    path = str(settings.airflow_home / "passwords.json")
    assert env["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"] == path
    # the api-server writes it in its own container at start, from .env (tandem.stack passwords-file)
    assert SERVICES["airflow-apiserver"]["command"][-1].startswith("python -m tandem.stack passwords-file && ")


def test_the_password_file_action_writes_where_airflow_and_the_cli_read(tmp_path, monkeypatch):
    from tandem.airflow import events
    from tandem.config import Settings
    from tandem.stack import cli

    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    monkeypatch.setenv("TANDEM_AIRFLOW_PASSWORD", "p@ss/w:rd %")
    assert cli.main(["passwords-file"]) == 0
    settings = Settings.load()
    assert json.loads((settings.airflow_home / "passwords.json").read_text()) == {"admin": "p@ss/w:rd %"}
    monkeypatch.delenv("TANDEM_AIRFLOW_PASSWORD")
    assert events._credentials(settings)[1] == "p@ss/w:rd %"
    assert cli.main(["passwords-file"]) == 2  # unset: a clear error, exit 2
