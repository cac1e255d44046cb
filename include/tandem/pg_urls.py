"""Postgres connection URLs: built with every part percent-encoded, read back, shown without the password.

One place for the URL code, below both the settings (``config``) and the connections (``db``).
"""

from __future__ import annotations

from typing import Any, Mapping
from urllib.parse import quote

from tandem.errors import UserError


def pg_url(*, dbname: str, user: str = "postgres", password: str = "", host: str = "", port: int | None = None) -> str:
    """A libpq URL with every part percent-encoded, so a password such as ``p@ss/w:rd %`` survives.

    A host that is a folder (a Unix socket, as the local embedded Postgres uses) goes in ``?host=``.
    """
    auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "") + "@"
    db = quote(dbname, safe="")
    if host.startswith("/"):
        return f"postgresql://{auth}/{db}?host={quote(host)}" + (f"&port={port}" if port else "")
    return f"postgresql://{auth}{host}{f':{port}' if port else ''}/{db}"


def local_pg_url(values: Mapping[str, Any], database: str) -> str:
    """libpq URL of one of the stack's databases (``airflow``, ``mlflow``, ``tandem``) from the TANDEM_PG_* settings."""
    port = values["pg_port"]
    return pg_url(dbname=database, user=values["pg_user"], password=values["pg_password"], host=str(values["pg_host"]),
                  port=None if port == 5432 else port)


def url_parts(url: str) -> dict:
    """host/port/user/password/dbname of a libpq connection string (URL or ``key=value``), decoded."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except ProgrammingError as exc:
        raise UserError(f"the database URL is not a valid libpq connection string: {exc}",
                        fix="write it as postgresql://user:password@host:port/db, percent-encoding special "
                            "characters of the password (@ as %40, / as %2F, : as %3A, % as %25, space as %20)") from None
    return {
        "host": str(parts.get("host") or "localhost"),
        "port": int(parts.get("port") or 5432),
        "user": str(parts.get("user") or "postgres"),
        "password": str(parts.get("password") or ""),
        "dbname": str(parts.get("dbname") or "postgres"),
    }


def redact(url: str) -> str:
    """A connection string with its password hidden, for messages and logs."""
    try:
        parts = url_parts(url)
    except UserError:
        return "<unparsable connection string>"
    shown = pg_url(dbname=parts["dbname"], user=parts["user"], host=parts["host"],
                   port=None if parts["port"] == 5432 else parts["port"])
    return shown.replace("@", ":***@", 1) if parts["password"] else shown


def sqlalchemy_url(url: str, driver: str = "psycopg") -> str:
    """The libpq connection string as a SQLAlchemy URL for ``driver`` (psycopg, psycopg2, asyncpg)."""
    from sqlalchemy.engine import URL

    parts = url_parts(url)
    socket = parts["host"].startswith("/")
    return URL.create(
        f"postgresql+{driver}", username=parts["user"], password=parts["password"] or None,
        host=None if socket else parts["host"], port=None if socket else parts["port"], database=parts["dbname"],
        query={"host": parts["host"]} if socket else {},
    ).render_as_string(hide_password=False)
