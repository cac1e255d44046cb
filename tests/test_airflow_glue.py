"""Airflow glue: connections become Tandem settings inside tasks; assets carry the contract names."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tandem.airflow.assets import BEHAVIOR_ADAPTER, KNOWLEDGE_INDEX
from tandem.airflow.settings import connection_env, connection_specs, db_url_from_connection
from tandem.config import Settings
from tandem.pg_urls import url_parts

NASTY = "p@ss/w:rd %20 x"  # every character that breaks a hand-built URL


def test_assets_match_contracts():
    assert (KNOWLEDGE_INDEX.name, KNOWLEDGE_INDEX.uri) == ("knowledge_index", "tandem://knowledge/index")
    assert (BEHAVIOR_ADAPTER.name, BEHAVIOR_ADAPTER.uri) == ("behavior_adapter", "tandem://behavior/adapter")


def test_socket_and_tcp_connections_round_trip(tmp_path):
    settings = Settings.load(home=tmp_path)
    spec = connection_specs(settings)["tandem_db"]
    conn = SimpleNamespace(login=spec["login"], password=spec["password"], schema=spec["schema"],
                           host=spec["host"], port=spec["port"])
    assert url_parts(db_url_from_connection(conn)) == url_parts(settings.db_url)

    tcp = SimpleNamespace(login="tandem", password="s3cret", schema="tandem", host="postgres", port=5432)
    assert db_url_from_connection(tcp) == "postgresql://tandem:s3cret@postgres:5432/tandem"


def test_a_password_with_url_characters_round_trips_through_airflow(tmp_path, monkeypatch):
    """settings -> AIRFLOW_CONN_TANDEM_DB (JSON) -> Airflow's own connection parsing -> the task's db URL."""
    from airflow.models.connection import Connection

    settings = Settings.load(home=tmp_path, pg_user="tandem", pg_password=NASTY, pg_host="db.internal", pg_port=6543)
    assert url_parts(settings.db_url) == {"host": "db.internal", "port": 6543, "user": "tandem",
                                          "password": NASTY, "dbname": "tandem"}
    env = connection_env(settings)
    conn = Connection(conn_id="tandem_db", **json.loads(env["AIRFLOW_CONN_TANDEM_DB"]))
    assert (conn.login, conn.password, conn.host, conn.port, conn.schema) == ("tandem", NASTY, "db.internal", 6543,
                                                                               "tandem")
    assert url_parts(db_url_from_connection(conn)) == url_parts(settings.db_url)

    # the task side: Airflow's environment-variable secrets backend reads the same JSON
    from airflow.secrets.environment_variables import EnvironmentVariablesBackend

    monkeypatch.setenv("AIRFLOW_CONN_TANDEM_DB", env["AIRFLOW_CONN_TANDEM_DB"])
    found = EnvironmentVariablesBackend().get_connection("tandem_db")
    assert found.password == NASTY and found.login == "tandem"


def test_sqlalchemy_urls_keep_the_password(tmp_path):
    from sqlalchemy.engine import make_url

    from tandem.pg_urls import local_pg_url, redact, sqlalchemy_url

    settings = Settings.load(home=tmp_path, pg_user="tandem", pg_password=NASTY)
    for db in ("airflow", "mlflow"):
        url = make_url(sqlalchemy_url(local_pg_url(settings.values, db), "psycopg2"))
        assert (url.username, url.password, url.database) == ("tandem", NASTY, db)
        assert url.query["host"] == str(tmp_path / "postgres" / "data")
    shown = redact(settings.db_url)
    assert NASTY not in shown and "%40" not in shown and ":***@" in shown


def test_mlflow_connection_spec_matches_setting(tmp_path):
    settings = Settings.load(home=tmp_path, mlflow_port=5123)
    spec = connection_specs(settings)["tandem_mlflow"]
    assert (spec["schema"], spec["host"], spec["port"]) == ("http", "127.0.0.1", 5123)


def test_a_fresh_stack_waits_for_the_next_scheduled_slot(tmp_path, monkeypatch):
    """On first unpause the nightly reindex and the daily eval do not fire the most recent past slot at once
    (Airflow 3 does that when a DAG has a start_date): `make up` at 15:00 means the next 02:00 / 06:00."""
    import datetime as dt
    from pathlib import Path

    monkeypatch.setenv("AIRFLOW_HOME", str(tmp_path))
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import DagSerialization
    from airflow.timetables.base import TimeRestriction

    dags = Path(__file__).resolve().parents[1] / "dags"
    now = dt.datetime.now(dt.timezone.utc)
    for name in ("knowledge_reindex", "behavior_eval"):
        parsed = DagBag(dag_folder=str(dags / f"{name}.py")).dags[name]
        dag = DagSerialization.from_dict(DagSerialization.to_dict(parsed))  # the scheduler's view of it
        timetable = getattr(dag.timetable, "timetable", dag.timetable)  # behavior_eval: asset OR time
        info = timetable.next_dagrun_info(last_automated_data_interval=None, restriction=TimeRestriction(
            earliest=dag.start_date, latest=None, catchup=dag.catchup))
        assert info.run_after > now, (name, info.run_after)
        assert info.run_after - now <= dt.timedelta(days=1)


def test_compose_reads_database_urls_through_the_db_url_command(tmp_path):
    """What compose's AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD and RESULT_BACKEND_CMD print, from compose's env."""
    import os
    import subprocess
    import sys

    from sqlalchemy.engine import make_url

    env = {**os.environ, "TANDEM_HOME": str(tmp_path), "TANDEM_PG_HOST": "postgres", "TANDEM_PG_USER": "tandem",
           "TANDEM_PG_PASSWORD": NASTY}
    out = subprocess.run([sys.executable, "-m", "tandem.stack.db_url", "airflow", "--driver", "psycopg2",
                          "--prefix", "db+"], env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out.startswith("db+postgresql+psycopg2://")
    url = make_url(out.removeprefix("db+"))
    assert (url.username, url.password, url.host, url.port, url.database) == ("tandem", NASTY, "postgres", 5432,
                                                                              "airflow")


def test_rest_client_says_when_airflow_is_not_there():
    """Nothing listens on the port: a ServiceUnavailable naming the fix, and an empty health (not a traceback)."""
    import pytest

    from tandem.airflow import rest
    from tandem.errors import ServiceUnavailable
    from tandem.stack.process import free_port

    base = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ServiceUnavailable) as err:
        rest.login(base, "admin", "secret", timeout=5)
    assert base in str(err.value) and "make up" in err.value.fix
    assert rest.health(base, timeout=2) == {}
