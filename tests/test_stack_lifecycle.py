"""`make up` / `make down` for real: the whole local stack in a temporary TANDEM_HOME on free ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tandem.config import Settings
from tandem.errors import UserError
from tandem.stack import postgres, process

REPO = Path(__file__).resolve().parents[1]


def _stack(home: Path, action: str, env_extra: dict) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TANDEM_", "AIRFLOW"))}
    env.update({"TANDEM_HOME": str(home), **env_extra})
    return subprocess.run([sys.executable, "-m", "tandem.stack", action], env=env, capture_output=True,
                          text=True, timeout=400, cwd=str(REPO))


def _procs_mentioning(text: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if text in line and "ps -eo" not in line]


# Compose-style credentials: a role of its own whose password holds every character that breaks a hand-built URL.
NASTY_PASSWORD = "p@ss/w:rd %20 x"


@pytest.mark.slow
def test_up_status_down_leaves_no_process(base_model_path):
    from conftest import short_tmp

    home = short_tmp("stack")
    (home / "models").symlink_to(base_model_path.parent)  # the prepared model, not a second conversion
    ports = {"TANDEM_AIRFLOW_PORT": str(process.free_port()), "TANDEM_MLFLOW_PORT": str(process.free_port()),
             "TANDEM_SERVE_PORT": str(process.free_port()),
             "TANDEM_PG_USER": "tandem", "TANDEM_PG_PASSWORD": NASTY_PASSWORD}
    try:
        up = _stack(home, "up", ports)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Tandem is up" in up.stdout and "password" in up.stdout
        assert NASTY_PASSWORD not in up.stdout  # the database URL is printed redacted
        from tandem.stack import services

        up_settings = Settings.load(env={"TANDEM_HOME": str(home), **ports})
        from tandem import mlflow_auth

        mlflow_password = mlflow_auth.password(up_settings)
        assert mlflow_password  # the stack's MLflow asks for a password, generated on the first start
        for secret in (services.airflow_password(up_settings), services.serve_token_file(up_settings).read_text().strip(),
                       mlflow_password):
            assert secret not in up.stdout + up.stderr  # only the files holding them are named
        assert str(services.serve_token_file(up_settings)) in up.stdout
        assert str(mlflow_auth.password_file(up_settings)) in up.stdout
        mlflow_url = f"http://127.0.0.1:{ports['TANDEM_MLFLOW_PORT']}/api/2.0/mlflow/experiments/search?max_results=1"
        assert httpx.get(mlflow_url, timeout=10).status_code == 401  # no anonymous reads
        assert httpx.get(mlflow_url, auth=("tandem", mlflow_password), timeout=10).status_code == 200

        from tandem.airflow import rest

        base = f"http://127.0.0.1:{ports['TANDEM_AIRFLOW_PORT']}"
        health = rest.health(base, timeout=10)
        assert health["scheduler"]["status"] == "healthy"

        assert httpx.get(f"http://127.0.0.1:{ports['TANDEM_MLFLOW_PORT']}/health", timeout=10).status_code == 200

        import psycopg

        settings = Settings.load(env={"TANDEM_HOME": str(home), **ports})
        # Airflow's metadata DB and MLflow's store run as that role (MLflow answered health above; Airflow's
        # api-server too), and the knowledge DB takes its password; a wrong password is refused
        with psycopg.connect(settings.db_url) as conn:
            assert conn.execute("SELECT current_user").fetchone()[0] == "tandem"
            assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(Settings.load(env={"TANDEM_HOME": str(home), **ports, "TANDEM_PG_PASSWORD": "wrong"}).db_url)
        with psycopg.connect(postgres.url(home / "postgres" / "data", "airflow")) as conn:
            owners = dict(conn.execute("SELECT datname, pg_get_userbyid(datdba) FROM pg_database "
                                       "WHERE datname IN ('airflow', 'mlflow', 'tandem')").fetchall())
        assert owners == {"airflow": "tandem", "mlflow": "tandem", "tandem": "tandem"}

        # the connections reach Airflow as AIRFLOW_CONN_* variables, with the password intact
        from tandem.stack import services

        got = subprocess.run([services._bin("airflow"), "connections", "get", "tandem_db", "-o", "json"],
                             env={**os.environ, **services.airflow_env(settings)}, capture_output=True, text=True,
                             timeout=120, cwd=str(home))
        assert got.returncode == 0, got.stderr
        (conn_row,) = json.loads(got.stdout)
        assert (conn_row["login"], conn_row["password"], conn_row["schema"]) == ("tandem", NASTY_PASSWORD, "tandem")

        # pools through the REST client; a CLI promotion's asset event through the same client
        with pytest.raises(UserError, match="refused the login"):
            rest.AirflowClient(base, "admin", "not-the-password")
        client = rest.AirflowClient(base, "admin", services.airflow_password(settings))
        assert client.ensure_pools(services.POOLS) == {"knowledge": "kept", "training": "kept"}
        client.wait_for_dag("adapter_rollback")
        from tandem.airflow.events import ASSET_URI, KNOWLEDGE_URI, emit_adapter_event, emit_knowledge_event

        assert emit_adapter_event(settings, {"tandem.test": "lifecycle"}) is None
        events = client.assets.get_asset_events(asset_id=client.asset_id(ASSET_URI)).asset_events
        assert [e.extra.get("tandem.test") for e in events] == ["lifecycle"]
        client.wait_for_dag("knowledge_reindex")  # `tandem index rollback` posts its event the same way
        assert emit_knowledge_event(settings, {"index_version": 7, "action": "rollback"}) is None
        events = client.assets.get_asset_events(asset_id=client.asset_id(KNOWLEDGE_URI)).asset_events
        assert [(e.extra.get("index_version"), e.extra.get("action")) for e in events] == [(7, "rollback")]

        again = _stack(home, "up", ports)
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr

        status = _stack(home, "status", ports)
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("healthy") >= 7 and "tandem-serve" in status.stdout

        # the answer process: health without a login, the API only with the token `make up` printed
        serve = f"http://127.0.0.1:{ports['TANDEM_SERVE_PORT']}"
        assert httpx.get(f"{serve}/health", timeout=10).json()["status"] == "ok"
        assert httpx.post(f"{serve}/api/ask", json={"question": "hi"}, timeout=10).status_code == 401
        token = services.serve_env(settings)["TANDEM_SERVE_TOKEN"]
        assert token not in up.stdout and str(services.serve_token_file(settings)) in up.stdout  # named, not shown
        assert services.serve_token_file(settings).read_text().strip() == token
        authed = httpx.post(f"{serve}/api/ask", json={"question": ""}, headers={"Authorization": f"Bearer {token}"},
                            timeout=10)
        assert authed.status_code == 400, authed.text  # past the token check, refused for the empty question
    finally:
        down = _stack(home, "down", ports)
    assert down.returncode == 0, down.stderr
    assert "Tandem is down" in down.stdout
    assert _procs_mentioning(str(home)) == []
    assert _procs_mentioning(f"port:{ports['TANDEM_AIRFLOW_PORT']}") == []
    assert not any((home / "run").glob("*.pid"))
    import shutil

    shutil.rmtree(home, ignore_errors=True)


def test_port_taken_is_a_clear_error(tmp_path):
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        svc = process.Service("mlflow", ["true"], port=port)
        with pytest.raises(UserError) as err:
            process.start(svc, tmp_path / "run", tmp_path / "logs")
    assert str(port) in str(err.value) and "TANDEM_MLFLOW_PORT" in str(err.value)


def test_a_reused_pid_is_not_mistaken_for_our_service(tmp_path, capsys):
    """The pid file names a live process that is not the one we started (the pid was reused)."""
    svc = process.Service("mlflow", ["true"])
    run = tmp_path / "run"
    run.mkdir()
    other = subprocess.Popen(["sleep", "30"], start_new_session=True)  # stop() signals its group
    try:
        started = process.psutil.Process(other.pid).create_time()
        svc.pidfile(run).write_text(json.dumps({"pid": other.pid, "create_time": started - 3600}))
        assert process.running_pid(svc, run) is None
        assert not svc.pidfile(run).exists()
        assert "belongs to another program" in capsys.readouterr().out
        assert other.poll() is None  # and nothing was done to that program
        # the same process, recorded with its own start time, is ours
        svc.pidfile(run).write_text(json.dumps({"pid": other.pid, "create_time": started}))
        assert process.running_pid(svc, run) == other.pid
        assert process.stop(svc, run, timeout=5)
        assert other.wait(timeout=5) is not None
    finally:
        other.kill()


def test_stale_pid_file_is_recovered(tmp_path, capsys):
    svc = process.Service("mlflow", ["true"])
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    svc.pidfile(run).write_text(json.dumps({"pid": dead.pid, "create_time": None}))
    assert process.running_pid(svc, run) is None
    assert not svc.pidfile(run).exists()
    assert "stale pid file" in capsys.readouterr().out


def test_service_group_is_stopped_with_children(tmp_path):
    # a parent that forks a child which ignores nothing: both must be gone after stop()
    svc = process.Service("demo-svc", ["bash", "-c", "sleep 300 & sleep 300; wait"])
    pid = process.start(svc, tmp_path / "run", tmp_path / "logs")
    pgid = os.getpgid(pid)
    assert process.group_alive(pgid)
    assert process.stop(svc, tmp_path / "run", timeout=10)
    assert not process.group_alive(pgid)


def test_other_postgres_major_is_refused(tmp_path):
    pgdata = tmp_path / "data"
    pgdata.mkdir()
    (pgdata / "PG_VERSION").write_text("15\n")
    with pytest.raises(UserError) as err:
        postgres.check_data_dir(pgdata)
    assert "PostgreSQL 15" in str(err.value) and "fix:" in str(err.value)


def test_missing_model_is_a_clear_error(tmp_path):
    from tandem.stack.cli import check_models

    settings = Settings.load(home=tmp_path)
    with pytest.raises(UserError) as err:
        check_models(settings)
    assert "make setup" in str(err.value)
