"""Settings inside an Airflow task: TANDEM_* env, with the Airflow connections layered on top.

The connections ``tandem_db`` (the knowledge database) and ``tandem_mlflow`` (the tracking server) reach
Airflow the supported Airflow 3 way: as ``AIRFLOW_CONN_TANDEM_DB`` / ``AIRFLOW_CONN_TANDEM_MLFLOW``
environment variables in Airflow's JSON format, which ``make up`` and compose set from the same TANDEM_*
settings (``connection_env``). A secrets backend that defines the same ids wins over them; users who keep
connections elsewhere configure them there. JSON needs no URL encoding, so any password works.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import urlsplit

from tandem.config import Settings
from tandem.pg_urls import pg_url, url_parts

log = logging.getLogger(__name__)

DB_CONN_ID = "tandem_db"
MLFLOW_CONN_ID = "tandem_mlflow"


def connection_specs(settings: Settings) -> dict[str, dict]:
    """The connections' fields (Airflow's JSON connection format) for the settings' database and MLflow."""
    db = url_parts(settings.db_url)
    ml = urlsplit(settings.mlflow_uri)
    return {
        DB_CONN_ID: {
            "conn_type": "postgres", "host": db["host"], "port": db["port"], "login": db["user"],
            "password": db["password"] or None, "schema": db["dbname"],
            "description": "Tandem knowledge database (pgvector)",
        },
        MLFLOW_CONN_ID: {
            "conn_type": "http", "host": ml.hostname or "", "port": ml.port, "schema": ml.scheme or "http",
            "description": "Tandem MLflow tracking server",
        },
    }


def connection_env(settings: Settings) -> dict[str, str]:
    """``AIRFLOW_CONN_<ID>`` variables for every Airflow process (api-server, scheduler, workers)."""
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps({k: v for k, v in spec.items() if v is not None})
            for conn_id, spec in connection_specs(settings).items()}


def _connection(conn_id: str):
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - connection not defined: fall back to TANDEM_* settings
        return None


def db_url_from_connection(conn) -> str:
    """The knowledge database URL of an Airflow connection (a socket folder as host works too).

    Airflow's ``Connection.get_uri()`` percent-encodes a socket folder into the host, which libpq can't read,
    so the URL is built from the connection's fields.
    """
    return pg_url(dbname=conn.schema or "tandem", user=conn.login or "postgres", password=conn.password or "",
                  host=conn.host or "localhost", port=conn.port)


def task_settings() -> Settings:
    settings = Settings.load()
    changes = {}
    db = _connection(DB_CONN_ID)
    if db is not None and db.host:
        changes["db_url"] = db_url_from_connection(db)
    ml = _connection(MLFLOW_CONN_ID)
    if ml is not None and ml.host:
        scheme = ml.schema or "http"
        changes["mlflow_uri"] = f"{scheme}://{ml.host}:{ml.port}" if ml.port else f"{scheme}://{ml.host}"
    return settings.replace(**changes) if changes else settings
