"""Settings inside an Airflow task: TANDEM_* env, with the Airflow connections layered on top.

``make up`` (and compose's init job) create the connections ``tandem_db`` (the knowledge database) and
``tandem_mlflow`` (the tracking server); users who manage connections in Airflow edit them there.
"""

from __future__ import annotations

import logging

from tandem.config import Settings

log = logging.getLogger(__name__)

DB_CONN_ID = "tandem_db"
MLFLOW_CONN_ID = "tandem_mlflow"


def _connection(conn_id: str):
    try:
        from airflow.sdk import BaseHook

        return BaseHook.get_connection(conn_id)
    except Exception:  # noqa: BLE001 - connection not defined: fall back to TANDEM_* settings
        return None


def db_url_from_connection(conn) -> str:
    user = conn.login or "postgres"
    auth = f"{user}:{conn.password}@" if conn.password else f"{user}@"
    db = conn.schema or "tandem"
    if conn.host and conn.host.startswith("/"):  # Unix socket folder (local embedded Postgres)
        return f"postgresql://{auth}/{db}?host={conn.host}"
    return f"postgresql://{auth}{conn.host}:{conn.port or 5432}/{db}"


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
