"""The foundation pieces against the real embedded Postgres and MLflow server."""

from __future__ import annotations

import pytest

from tandem import db
from tandem.config import Settings, markdown_table
from tandem.errors import ConfigError, UserError


def test_settings_defaults_and_env_override(tmp_path):
    s = Settings.load(env={"TANDEM_HOME": str(tmp_path), "TANDEM_AIRFLOW_PORT": "9090"})
    assert s.home == tmp_path
    assert s.airflow_port == 9090
    assert s.db_url == f"postgresql://postgres@/tandem?host={tmp_path}/postgres/data"
    assert s.airflow_url == "http://127.0.0.1:9090"
    assert s.sources == (str(tmp_path / "knowledge"),)


def test_bad_setting_names_the_variable_and_fix(tmp_path):
    with pytest.raises(ConfigError) as err:
        Settings.load(env={"TANDEM_HOME": str(tmp_path), "TANDEM_MLFLOW_PORT": "70000"})
    assert "TANDEM_MLFLOW_PORT" in str(err.value) and "fix:" in str(err.value)
    with pytest.raises(ConfigError):
        Settings.load(env={"TANDEM_MASS_DELETE_FRACTION": "1.5"})


def test_config_table_lists_every_setting():
    table = markdown_table()
    for var in ("TANDEM_HOME", "TANDEM_DB_URL", "TANDEM_MLFLOW_URI", "TANDEM_BASE_MODEL"):
        assert f"`{var}`" in table


def test_identifiers_are_validated():
    assert db.ident("chunks_v1").as_string(None) == '"chunks_v1"'
    for bad in ("Chunks", "x;drop table y", "1abc", "a" * 64, ""):
        with pytest.raises(UserError):
            db.ident(bad)


def test_embedded_postgres_has_pgvector(db_url):
    with db.connection(db_url) as conn:
        version = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
        server = conn.execute("SHOW server_version").fetchone()[0]
    assert version is not None
    assert server.startswith("18.")


def test_mlflow_server_is_real(mlflow_server):
    import mlflow

    mlflow.set_tracking_uri(mlflow_server)
    exp = mlflow.set_experiment("tandem-fixture-check")
    with mlflow.start_run(experiment_id=exp.experiment_id) as run:
        mlflow.log_metric("x", 1.5)
    got = mlflow.get_run(run.info.run_id)
    assert got.data.metrics["x"] == 1.5
