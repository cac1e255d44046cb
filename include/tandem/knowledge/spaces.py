"""Embedding-space versions: one chunk table per fingerprint, a live pointer, shadow builds, rollback.

- The configured fingerprint equals the live space's: the run updates the live table in place.
- It differs (a new model, dimension, chunker or normalisation): the run builds (or resumes) a ``building``
  space beside the live one, validates it with the canary, then switches atomically: in one transaction the
  spaces rows change status and the ``kn_NAME_live`` view is re-pointed. Queries read one table only.
- The space that was live becomes ``previous`` and is kept for ``tandem index rollback``; the one before it
  is retired and its table dropped.
- The index version is ``<space_no>.<rev>``: ``rev`` goes up with every run that changed the space.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import psycopg
from psycopg import sql

from tandem.db import ident
from tandem.errors import UserError
from tandem.knowledge import store
from tandem.knowledge.store import Names

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Space:
    space_no: int
    fingerprint: str
    spec: dict
    table: str
    dim: int
    status: str
    rev: int

    @property
    def version(self) -> str:
        return version(self.space_no, self.rev)


def version(space_no: int, rev: int) -> str:
    return f"{space_no}.{rev}"


_COLS = "space_no, fingerprint, spec, table_name, dim, status, rev"


def _row(row) -> Space:
    spec = row[2] if isinstance(row[2], dict) else json.loads(row[2])
    return Space(space_no=row[0], fingerprint=row[1], spec=spec, table=row[3], dim=row[4], status=row[5], rev=row[6])


def by_status(conn: psycopg.Connection, n: Names, status: str) -> Space | None:
    if not store.exists(conn, n.spaces):
        return None
    row = conn.execute(sql.SQL("SELECT " + _COLS + " FROM {s} WHERE status = %s ORDER BY space_no DESC LIMIT 1")
                       .format(s=ident(n.spaces)), (status,)).fetchone()
    return _row(row) if row else None


def live(conn: psycopg.Connection, n: Names) -> Space | None:
    return by_status(conn, n, "live")


def by_fingerprint(conn: psycopg.Connection, n: Names, fingerprint: str) -> Space | None:
    if not store.exists(conn, n.spaces):
        return None
    row = conn.execute(sql.SQL("SELECT " + _COLS + " FROM {s} WHERE fingerprint = %s").format(s=ident(n.spaces)),
                       (fingerprint,)).fetchone()
    return _row(row) if row else None


def target(conn: psycopg.Connection, n: Names, fingerprint: str, spec: dict, dim: int, *,
           full: bool, create: bool = True) -> tuple[Space | None, str]:
    """The space this run writes to, and the mode: ``incremental`` (the live space), ``build`` (a new or
    resumed shadow). With ``create=False`` (dry run) nothing is created and the space may be None."""
    current = live(conn, n)
    if current is not None and current.fingerprint == fingerprint:
        return current, "incremental"
    existing = by_fingerprint(conn, n, fingerprint)
    if existing is not None and existing.status == "rolled_back" and not full:
        raise UserError(
            f"the configured embedding space {fingerprint} was rolled back "
            f"(the live index is version {current.version if current else '-'} with fingerprint "
            f"{current.fingerprint if current else '-'})",
            fix="set the embedding settings (model, chunk size/overlap) back to those of the live space, "
                "or run with --full (full_rebuild) to rebuild and re-validate the rolled-back space")
    if not create:
        return existing, "build"
    if existing is not None:
        if existing.status != "building":
            conn.execute(sql.SQL("UPDATE {s} SET status = 'building' WHERE space_no = %s").format(s=ident(n.spaces)),
                         (existing.space_no,))
        store.create_chunk_table(conn, n, existing.space_no, existing.dim, hnsw=False)
        conn.commit()
        log.info("resuming the shadow build of space %s (fingerprint %s)", existing.space_no, fingerprint)
        return dataclasses.replace(existing, status="building"), "build"
    row = conn.execute(sql.SQL("""
        INSERT INTO {s} (fingerprint, spec, table_name, dim, status)
        VALUES (%s, %s, '', %s, 'building') RETURNING space_no""").format(s=ident(n.spaces)),
        (fingerprint, json.dumps(spec), dim)).fetchone()
    space_no = row[0]
    table = store.create_chunk_table(conn, n, space_no, dim, hnsw=False)  # HNSW built once filled (finalize)
    conn.execute(sql.SQL("UPDATE {s} SET table_name = %s WHERE space_no = %s").format(s=ident(n.spaces)),
                 (table, space_no))
    conn.commit()
    log.info("building a new embedding space %s (fingerprint %s) in %s", space_no, fingerprint, table)
    return Space(space_no, fingerprint, spec, table, dim, "building", 0), "build"


def activate(conn: psycopg.Connection, n: Names, space: Space, rev: int) -> list[str]:
    """Switch ``space`` live atomically (caller commits). Returns the tables to drop after commit."""
    s = ident(n.spaces)
    old_previous = by_status(conn, n, "previous")
    old_live = live(conn, n)
    drop: list[str] = []
    if old_previous is not None and old_previous.space_no != space.space_no:
        conn.execute(sql.SQL("UPDATE {s} SET status = 'retired' WHERE space_no = %s").format(s=s),
                     (old_previous.space_no,))
        conn.execute(sql.SQL("DELETE FROM {m} WHERE space_no = %s").format(m=ident(n.manifest)),
                     (old_previous.space_no,))
        drop.append(old_previous.table)
    # rolled-back spaces that are not being activated are dropped too
    rows = conn.execute(sql.SQL("SELECT space_no, table_name FROM {s} WHERE status = 'rolled_back' AND space_no <> %s")
                        .format(s=s), (space.space_no,)).fetchall()
    for space_no, table in rows:
        conn.execute(sql.SQL("UPDATE {s} SET status = 'retired' WHERE space_no = %s").format(s=s), (space_no,))
        conn.execute(sql.SQL("DELETE FROM {m} WHERE space_no = %s").format(m=ident(n.manifest)), (space_no,))
        drop.append(table)
    if old_live is not None and old_live.space_no != space.space_no:
        conn.execute(sql.SQL("UPDATE {s} SET status = 'previous' WHERE space_no = %s").format(s=s),
                     (old_live.space_no,))
    conn.execute(sql.SQL("UPDATE {s} SET status = 'live', rev = %s, activated_at = now() WHERE space_no = %s")
                 .format(s=s), (rev, space.space_no))
    store.point_live_view(conn, n, space.table)
    return drop


def drop_tables(conn: psycopg.Connection, tables: list[str]) -> None:
    for table in tables:
        conn.execute(sql.SQL("DROP TABLE IF EXISTS {t}").format(t=ident(table)))
    conn.commit()


def bump(conn: psycopg.Connection, n: Names, space: Space, rev: int) -> None:
    conn.execute(sql.SQL("UPDATE {s} SET rev = %s WHERE space_no = %s").format(s=ident(n.spaces)),
                 (rev, space.space_no))


def rollback(conn: psycopg.Connection, n: Names) -> dict:
    """Make the previous space live again (the current one becomes ``rolled_back``). Commits."""
    if not store.exists(conn, n.spaces):
        raise UserError(f"index {n.index!r} has not been built yet: nothing to roll back",
                        fix="run `tandem reindex` first")
    conn.commit()  # end the implicit transaction: the block below must be a real transaction, not a savepoint
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("tandem-spaces-" + n.index,))
        current = live(conn, n)
        previous = by_status(conn, n, "previous")
        if previous is None:
            raise UserError(f"index {n.index!r} has no previous embedding space to roll back to",
                            fix="a previous space exists only after an embedding-model/chunker change was switched in")
        s = ident(n.spaces)
        if current is not None:
            conn.execute(sql.SQL("UPDATE {s} SET status = 'rolled_back' WHERE space_no = %s").format(s=s),
                         (current.space_no,))
        conn.execute(sql.SQL("UPDATE {s} SET status = 'live', activated_at = now() WHERE space_no = %s").format(s=s),
                     (previous.space_no,))
        store.point_live_view(conn, n, previous.table)
    return {"index_version": previous.version, "fingerprint": previous.fingerprint,
            "rolled_back_version": current.version if current else None,
            "rolled_back_fingerprint": current.fingerprint if current else None}
