"""Connections to the knowledge database, and safe SQL identifiers.

All SQL in Tandem is parameterised. Identifiers (table names built from the index name and
version) are validated against a strict pattern here and quoted with ``psycopg.sql.Identifier``.
"""

from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Iterator

import psycopg
from psycopg import sql

from tandem.config import pg_url  # noqa: F401 - re-exported: URLs are built in one place
from tandem.errors import ServiceUnavailable, UserError

_IDENT = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def ident(name: str) -> sql.Identifier:
    """A validated, quoted SQL identifier. Raises UserError for anything else."""
    if not isinstance(name, str) or not _IDENT.match(name):
        raise UserError(f"invalid SQL identifier {name!r}",
                        fix="use lowercase letters, digits and underscores (max 63 chars), starting with a letter")
    return sql.Identifier(name)


def connect(url: str, *, autocommit: bool = False, register_vector: bool = True) -> psycopg.Connection:
    """Open a psycopg 3 connection; registers pgvector types when the extension exists."""
    try:
        conn = psycopg.connect(url, autocommit=autocommit)
    except psycopg.OperationalError as exc:
        raise ServiceUnavailable(
            f"cannot connect to the knowledge database ({redact(url)}): {str(exc).strip().splitlines()[0]}",
            fix="start the local stack with `make up`, or set TANDEM_DB_URL to a reachable Postgres with pgvector",
        ) from None
    if register_vector:
        from pgvector.psycopg import register_vector as _register

        try:
            _register(conn)
        except psycopg.ProgrammingError:
            conn.rollback()  # extension not created yet: callers that need it create it first
    return conn


@contextmanager
def connection(url: str, **kwargs) -> Iterator[psycopg.Connection]:
    conn = connect(url, **kwargs)
    try:
        yield conn
    finally:
        conn.close()


def url_parts(url: str) -> dict:
    """host/port/user/password/dbname of a libpq connection string (URL or ``key=value``), decoded."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        parts = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
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
