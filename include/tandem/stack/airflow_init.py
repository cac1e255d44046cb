"""Create what Tandem's DAGs need in Airflow's metadata DB: connections and pools. Idempotent.

Run inside the Airflow environment (``python -m tandem.stack.airflow_init``) by ``make up`` after
``airflow db migrate``, and by compose's init job. Connections are the Airflow user's handle on
Tandem's services: ``tandem_db`` (the knowledge database) and ``tandem_mlflow`` (the tracking server).
"""

from __future__ import annotations

import json
from urllib.parse import urlsplit

from tandem.airflow.settings import DB_CONN_ID, MLFLOW_CONN_ID
from tandem.config import Settings
from tandem.db import url_parts
from tandem.stack.services import POOLS


def connection_specs(settings: Settings) -> dict[str, dict]:
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


def main() -> None:
    from airflow.models import Connection, Pool
    from airflow.utils.session import create_session

    settings = Settings.load()
    with create_session() as session:
        for conn_id, spec in connection_specs(settings).items():
            existing = session.query(Connection).filter(Connection.conn_id == conn_id).one_or_none()
            if existing is None:
                session.add(Connection(conn_id=conn_id, **spec))
                print(f"  connection {conn_id}: created")
            else:
                print(f"  connection {conn_id}: kept (edit it in the Airflow UI to point elsewhere)")
        for name, (slots, description) in POOLS.items():
            pool = session.query(Pool).filter(Pool.pool == name).one_or_none()
            if pool is None:
                session.add(Pool(pool=name, slots=slots, description=description, include_deferred=False))
                print(f"  pool {name}: created ({slots} slots)")
    print(json.dumps({"connections": sorted(connection_specs(settings)), "pools": sorted(POOLS)}))


if __name__ == "__main__":
    main()
