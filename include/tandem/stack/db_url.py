"""Print the SQLAlchemy URL of one of the stack's databases, built from the TANDEM_PG_* settings.

    python -m tandem.stack.db_url airflow|mlflow|tandem [--driver psycopg2] [--prefix db+]

Every part is percent-encoded, so a password with ``@``, ``/``, ``:``, ``%`` or a space works. Compose reads
Airflow's metadata and Celery result-backend URLs through it (``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_CMD``,
``AIRFLOW__CELERY__RESULT_BACKEND_CMD``) and the MLflow server its store, instead of splicing the password
from ``.env`` into a URL.
"""

from __future__ import annotations

import argparse
import sys

from tandem.config import Settings
from tandem.pg_urls import local_pg_url, sqlalchemy_url
from tandem.errors import TandemError
from tandem.stack.postgres import DATABASES


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tandem.stack.db_url", description=__doc__.splitlines()[0])
    parser.add_argument("database", choices=DATABASES)
    parser.add_argument("--driver", default="psycopg", choices=["psycopg", "psycopg2"])
    parser.add_argument("--prefix", default="", choices=["", "db+"], help="db+ for Celery's result backend")
    args = parser.parse_args(argv)
    try:
        settings = Settings.load()
        print(args.prefix + sqlalchemy_url(local_pg_url(settings.values, args.database), args.driver))
    except TandemError as exc:
        print(f"db_url: error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
