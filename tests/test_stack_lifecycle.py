"""`make up` / `make down` for real: the whole local stack in a temporary TANDEM_HOME on free ports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

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


@pytest.mark.slow
def test_up_status_down_leaves_no_process(base_model_path):
    from conftest import short_tmp

    home = short_tmp("stack")
    (home / "models").symlink_to(base_model_path.parent)  # the prepared model, not a second conversion
    ports = {"TANDEM_AIRFLOW_PORT": str(process.free_port()), "TANDEM_MLFLOW_PORT": str(process.free_port())}
    try:
        up = _stack(home, "up", ports)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "Tandem is up" in up.stdout and "password" in up.stdout

        base = f"http://127.0.0.1:{ports['TANDEM_AIRFLOW_PORT']}"
        with urllib.request.urlopen(f"{base}/api/v2/monitor/health", timeout=10) as resp:
            assert resp.status == 200
            health = json.loads(resp.read())
        assert health["scheduler"]["status"] == "healthy"
        with urllib.request.urlopen(f"http://127.0.0.1:{ports['TANDEM_MLFLOW_PORT']}/health", timeout=10) as resp:
            assert resp.status == 200

        import psycopg

        with psycopg.connect(postgres.url(home / "postgres" / "data", "tandem")) as conn:
            assert conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone()
        with psycopg.connect(postgres.url(home / "postgres" / "data", "airflow")) as conn:
            conns = {r[0] for r in conn.execute("SELECT conn_id FROM connection")}
            pools = {r[0] for r in conn.execute("SELECT pool FROM slot_pool")}
        assert {"tandem_db", "tandem_mlflow"} <= conns
        assert {"training", "knowledge"} <= pools

        again = _stack(home, "up", ports)
        assert again.returncode == 0 and "already running" in again.stdout, again.stdout + again.stderr

        status = _stack(home, "status", ports)
        assert status.returncode == 0, status.stdout
        assert status.stdout.count("healthy") >= 6
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


def test_stale_pid_file_is_recovered(tmp_path, capsys):
    svc = process.Service("mlflow", ["true"])
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    svc.pidfile(run).write_text(f"{dead.pid}\n")
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
