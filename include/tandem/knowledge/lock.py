"""One reindex per index at a time: a Postgres advisory lock guarding a lease row.

A run takes the lease before it writes anything and gives it back at the end. Taking, checking and
giving back the lease happen under ``pg_advisory_xact_lock`` on the index's key, so two runs never both
get it. The lease outlives one process because an Airflow run spans several tasks (plan, mapped batches,
finalize) on possibly different workers; each write transaction checks the lease (``FOR SHARE``), so a
run that lost its lease can never interleave a write with another run.

A dead holder is detected without waiting for a timeout when it held a connection (CLI runs keep one
open: its backend pid vanishes from ``pg_stat_activity`` when the process dies), else when its heartbeat is
older than ``lock_stale_seconds`` (a killed Airflow worker).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid

import psycopg
from psycopg import sql

from tandem import db
from tandem.db import ident
from tandem.errors import JobFailed
from tandem.knowledge.store import Names

log = logging.getLogger(__name__)

LOCK_CLASS = 0x7A4D  # first key of pg_advisory_xact_lock(int, int); the second is hashtext(index name)


class IndexBusy(JobFailed):
    """Another reindex of the same index holds the lease."""


class LeaseLost(JobFailed):
    """This run's lease was taken over (it was considered dead); it must stop writing."""


def new_owner(kind: str) -> str:
    return f"{kind}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _xact_lock(conn: psycopg.Connection, n: Names) -> None:
    conn.execute("SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (LOCK_CLASS, n.index))


def holder(conn: psycopg.Connection, n: Names) -> dict | None:
    row = conn.execute(sql.SQL(
        "SELECT owner, backend_pid, acquired_at, heartbeat_at FROM {l} WHERE index_name = %s AND owner IS NOT NULL"
    ).format(l=ident(n.lease)), (n.index,)).fetchone()
    if row is None:
        return None
    return {"owner": row[0], "backend_pid": row[1], "acquired_at": row[2], "heartbeat_at": row[3]}


def _is_stale(conn: psycopg.Connection, lease: dict, stale_s: int) -> bool:
    """A holder with a connection is alive exactly while that connection is; one without (an Airflow run)
    while its heartbeat is younger than ``stale_s``."""
    if lease["backend_pid"] is not None:
        alive = conn.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (lease["backend_pid"],)).fetchone()
        return alive is None
    age = conn.execute("SELECT extract(epoch FROM now() - %s::timestamptz)", (lease["heartbeat_at"],)).fetchone()[0]
    return float(age) > stale_s


class Lease:
    """A held lease. ``keep_connection`` (CLI runs) ties its liveness to this process's connection."""

    def __init__(self, url: str, n: Names, owner: str, conn: psycopg.Connection | None):
        self.url, self.n, self.owner, self._conn = url, n, owner, conn
        self._last_beat = time.monotonic()

    def heartbeat(self, conn: psycopg.Connection | None = None, every_s: float = 30.0) -> None:
        if time.monotonic() - self._last_beat < every_s:
            return
        heartbeat(conn or self._conn, self.n, self.owner, self.url)
        self._last_beat = time.monotonic()

    def release(self) -> None:
        release(self.url, self.n, self.owner)
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def acquire(url: str, n: Names, owner: str, *, wait_s: float = 0, stale_s: int = 1800,
            keep_connection: bool = False) -> Lease:
    """Take the index's lease, waiting up to ``wait_s`` seconds; raises IndexBusy with who holds it."""
    held_conn = db.connect(url, autocommit=True, register_vector=False) if keep_connection else None
    pid = held_conn.info.backend_pid if held_conn is not None else None
    deadline = time.monotonic() + wait_s
    announced = False
    try:
        with db.connection(url, register_vector=False) as conn:
            while True:
                with conn.transaction():
                    _xact_lock(conn, n)
                    current = holder(conn, n)
                    if current is None or current["owner"] == owner or _is_stale(conn, current, stale_s):
                        if current is not None and current["owner"] != owner:
                            log.warning("taking over the lease of index %s from %s (holder is gone)", n.index,
                                        current["owner"])
                        conn.execute(sql.SQL("""
                            INSERT INTO {l} (index_name, owner, backend_pid, acquired_at, heartbeat_at)
                            VALUES (%s, %s, %s, now(), now())
                            ON CONFLICT (index_name) DO UPDATE SET owner = EXCLUDED.owner,
                                backend_pid = EXCLUDED.backend_pid, acquired_at = now(), heartbeat_at = now()
                            """).format(l=ident(n.lease)), (n.index, owner, pid))
                        return Lease(url, n, owner, held_conn)
                if time.monotonic() >= deadline:
                    raise IndexBusy(
                        f"another reindex of index {n.index!r} is running (holder {current['owner']}, "
                        f"since {current['acquired_at']:%Y-%m-%d %H:%M:%S %Z}); nothing was changed",
                        fix="wait for it to finish, or set TANDEM_LOCK_WAIT_SECONDS (--wait) to wait for it")
                if not announced:
                    log.warning("index %s is being reindexed by %s: waiting up to %.0fs", n.index,
                                current["owner"], wait_s)
                    announced = True
                time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
    except BaseException:
        if held_conn is not None:
            held_conn.close()
        raise


def check(conn: psycopg.Connection, n: Names, owner: str) -> None:
    """Inside a write transaction: fail unless ``owner`` still holds the lease (row locked until commit)."""
    row = conn.execute(sql.SQL("SELECT owner FROM {l} WHERE index_name = %s FOR SHARE").format(l=ident(n.lease)),
                       (n.index,)).fetchone()
    if row is None or row[0] != owner:
        raise LeaseLost(f"this run ({owner}) no longer holds the lease of index {n.index!r} "
                        f"(now {row[0] if row else 'nobody'}); it stopped before writing",
                        fix="another run took over; check `tandem index status`")


def heartbeat(conn: psycopg.Connection | None, n: Names, owner: str, url: str | None = None) -> None:
    def _beat(c):
        cur = c.execute(sql.SQL("UPDATE {l} SET heartbeat_at = now() WHERE index_name = %s AND owner = %s")
                        .format(l=ident(n.lease)), (n.index, owner))
        if cur.rowcount == 0:
            raise LeaseLost(f"this run ({owner}) lost the lease of index {n.index!r}",
                            fix="another run took over; check `tandem index status`")

    if conn is not None and conn.autocommit:
        _beat(conn)
        return
    with db.connection(url, autocommit=True, register_vector=False) as c:
        _beat(c)


def release(url: str, n: Names, owner: str) -> bool:
    with db.connection(url, register_vector=False) as conn:
        with conn.transaction():
            _xact_lock(conn, n)
            cur = conn.execute(sql.SQL(
                "UPDATE {l} SET owner = NULL, backend_pid = NULL WHERE index_name = %s AND owner = %s"
            ).format(l=ident(n.lease)), (n.index, owner))
            return cur.rowcount > 0
