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


def test_the_celery_stack_as_data(tmp_path):
    """TANDEM_EXECUTOR=celery: Redis, N CPU workers on `default`, one on `training`, each with a scratch home."""
    from tandem.stack import services

    local = Settings.load(home=tmp_path)
    assert [s.name for s in services.all_services(local) if "worker" in s.name or s.name == "redis"] == []
    assert services.airflow_env(local)["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"

    settings = Settings.load(home=tmp_path, executor="celery", workers=3, redis_port=16399)
    store = {"uri": "models:/tandem-base-model@current", "sha256": "a" * 64}
    svcs = {s.name: s for s in services.all_services(settings, store)}
    workers = [n for n in svcs if n.startswith("airflow-worker-")]
    assert workers == ["airflow-worker-cpu-1", "airflow-worker-cpu-2", "airflow-worker-cpu-3",
                       "airflow-worker-training-1"]
    assert list(svcs)[0] == "redis" and svcs["redis"].port == 16399
    for name in workers:
        argv, env = svcs[name].argv, svcs[name].env
        queue = argv[argv.index("--queues") + 1]
        assert queue == ("training" if "training" in name else "default")
        assert argv[argv.index("--concurrency") + 1] == "1" and "--skip-serve-logs" in argv
        own = tmp_path / "workers" / name.removeprefix("airflow-worker-")
        assert env["TANDEM_HOME"] == str(own) and env["AIRFLOW_HOME"] == str(own / "airflow")
        assert env["TANDEM_BASE_MODEL"] == str(own / "models" / "SmolLM2-135M-Instruct")
        assert (env["TANDEM_BASE_MODEL_URI"], env["TANDEM_BASE_MODEL_SHA256"]) == (store["uri"], store["sha256"])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
        assert env["AIRFLOW__CORE__HOSTNAME_CALLABLE"] == "tandem.airflow.hostname.worker_hostname"
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql+psycopg2://")
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://:") and "@127.0.0.1:16399/0" in \
            env["AIRFLOW__CELERY__BROKER_URL"]
    # the scheduler and the api-server keep the stack's own home
    assert svcs["airflow-scheduler"].env["TANDEM_HOME"] == str(tmp_path)
    conf = services.write_redis_conf(settings).read_text()
    assert "bind 127.0.0.1\n" in conf and "port 16399\n" in conf and f"requirepass {services.redis_password(settings)}" in conf
    assert oct(services.write_redis_conf(settings).stat().st_mode & 0o777) == "0o600"


def test_a_missing_redis_server_names_the_install_command(monkeypatch):
    from tandem.stack import services

    monkeypatch.setattr(services.shutil, "which", lambda name: None)
    monkeypatch.setattr(services, "REDIS_PATHS", ())
    with pytest.raises(UserError, match="redis-server is not installed") as err:
        services.redis_binary()
    assert "apt-get install -y redis-server" in err.value.fix


def test_each_worker_records_its_own_name_as_the_task_hostname(monkeypatch):
    import socket

    from tandem.airflow.hostname import worker_hostname

    monkeypatch.setenv("TANDEM_WORKER_NAME", "cpu-2")
    assert worker_hostname() == f"cpu-2.{socket.gethostname()}"
    monkeypatch.delenv("TANDEM_WORKER_NAME")
    assert worker_hostname() == socket.getfqdn()


def test_status_and_down_see_the_executor_up_started_with(tmp_path, monkeypatch):
    from tandem.stack import cli

    settings = Settings.load(home=tmp_path, executor="celery", workers=3)
    cli._remember(settings)
    monkeypatch.delenv("TANDEM_EXECUTOR", raising=False)
    monkeypatch.delenv("TANDEM_WORKERS", raising=False)
    seen = cli.started_as(Settings.load(home=tmp_path))
    assert (seen.executor, seen.workers) == ("celery", 3)
    monkeypatch.setenv("TANDEM_EXECUTOR", "local")
    assert cli.started_as(Settings.load(home=tmp_path)).executor == "local"


def test_down_stops_what_up_started_whatever_the_executor_setting_says_now(tmp_path, monkeypatch):
    from tandem.stack import cli, process, services

    started = Settings.load(home=tmp_path, executor="celery", workers=2)
    cli._remember(started)
    stopped = []
    monkeypatch.setattr(process, "stop", lambda svc, run_dir: stopped.append(svc.name) or True)
    monkeypatch.setattr(cli.postgres, "stop", lambda data: False)
    assert cli.down(Settings.load(home=tmp_path, executor="local")) == 0
    assert stopped == [s.name for s in reversed(services.all_services(started))]
    assert {"airflow-worker-cpu-1", "airflow-worker-cpu-2", "airflow-worker-training-1", "redis"} <= set(stopped)
