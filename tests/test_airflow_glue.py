"""Airflow glue: connections become Tandem settings inside tasks; assets carry the contract names."""

from __future__ import annotations

from types import SimpleNamespace

from tandem.airflow.assets import BEHAVIOR_ADAPTER, KNOWLEDGE_INDEX
from tandem.airflow.settings import db_url_from_connection
from tandem.config import Settings
from tandem.stack.airflow_init import connection_specs


def test_assets_match_contracts():
    assert (KNOWLEDGE_INDEX.name, KNOWLEDGE_INDEX.uri) == ("knowledge_index", "tandem://knowledge/index")
    assert (BEHAVIOR_ADAPTER.name, BEHAVIOR_ADAPTER.uri) == ("behavior_adapter", "tandem://behavior/adapter")


def test_socket_and_tcp_connections_round_trip(tmp_path):
    settings = Settings.load(home=tmp_path)
    spec = connection_specs(settings)["tandem_db"]
    conn = SimpleNamespace(login=spec["login"], password=spec["password"], schema=spec["schema"],
                           host=spec["host"], port=spec["port"])
    assert db_url_from_connection(conn) == settings.db_url

    tcp = SimpleNamespace(login="tandem", password="s3cret", schema="tandem", host="postgres", port=5432)
    assert db_url_from_connection(tcp) == "postgresql://tandem:s3cret@postgres:5432/tandem"


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
