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

from tandem.errors import ServiceUnavailable, UserError
from tandem.pg_urls import redact

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
