"""Session fixtures: a real embedded PostgreSQL 18 + pgvector, a real MLflow tracking server, and
Settings pointing at them. Nothing here is mocked.

The converted base model is taken from the checkout's state folder (prepared by `make setup`), or
prepared once into it if missing.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tandem_home(tmp_path_factory) -> Path:
    # short path: the Postgres socket lives in the data folder
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="session")
def pg(tandem_home):
    """A running embedded Postgres with the airflow, mlflow and tandem databases; stopped at the end."""
    from tandem.stack import postgres

    pgdata = tandem_home / "postgres" / "data"
    postgres.start(pgdata)
    postgres.ensure_databases(pgdata)
    yield pgdata
    postgres.stop(pgdata)


@pytest.fixture(scope="session")
def base_model_path() -> Path:
    """The real SmolLM2-135M-Instruct HF folder (converted from the wheel's GGUF once)."""
    from tandem.models import prepare_base_model

    home = Path(os.environ.get("TANDEM_HOME", REPO / ".tandem"))
    dest = home / "models" / "SmolLM2-135M-Instruct"
    prepare_base_model(dest)
    return dest


@pytest.fixture(scope="session")
def mlflow_server(pg, tandem_home):
    """A real MLflow tracking server on a free loopback port, backed by the test Postgres."""
    from tandem.config import Settings
    from tandem.stack import process, services

    settings = Settings.load(home=tandem_home, mlflow_port=process.free_port())
    service = services.mlflow_service(settings)
    process.start(service, settings.run_dir, settings.logs_dir)
    try:
        process.wait_healthy(service, settings.run_dir, settings.logs_dir, timeout=120)
        yield settings.mlflow_uri
    finally:
        process.stop(service, settings.run_dir)


@pytest.fixture(scope="session")
def settings(pg, tandem_home, mlflow_server, base_model_path):
    """Settings for the test stack: knowledge DB, MLflow server and base model all real."""
    from tandem.config import Settings

    return Settings.load(home=tandem_home, mlflow_uri=mlflow_server, base_model=str(base_model_path),
                         sources=(str(tandem_home / "knowledge"),))


@pytest.fixture
def db_url(pg) -> str:
    from tandem.stack import postgres

    return postgres.url(pg, "tandem")
