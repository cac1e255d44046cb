"""A reindex, end to end: ``plan.make`` -> ``batch.process`` (once per batch) -> ``publish.finalize``.

The CLI runs the three in one process (``run``); the DAG runs the plan as one task, the batches as
dynamically-mapped tasks (pool ``knowledge``) and ``finalize`` as the last task. State between them lives in
Postgres (the run's row and its documents) and in the ``ReindexPlan`` they pass on, so any task can run on
any worker and be retried. This module also holds the run's bookkeeping: the lease, a run recorded as failed
when it stops before ``finalize``, and ``tandem index rollback``.

1. ``tandem.knowledge.plan``: scan, diff, brake, candidate release, the persisted plan.
2. ``tandem.knowledge.batch``: read, extract, chunk, embed and write each new/changed document.
3. ``tandem.knowledge.publish``: deletes, canary, publish, record.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid

from psycopg import sql

from tandem import db
from tandem.config import Settings
from tandem.db import ident
from tandem.errors import JobFailed
from tandem.knowledge import batch, lock, plan, publish, releases, store
from tandem.knowledge import summary as summaries
from tandem.knowledge.progress import Progress

log = logging.getLogger("tandem.knowledge")


def new_run_id(prefix: str = "cli") -> str:
    return f"{prefix}-{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def acquire_lease(settings: Settings, owner: str, *, keep_connection: bool) -> lock.Lease:
    n = store.names(settings.index_name)
    with db.connection(settings.db_url) as conn:
        store.ensure_schema(conn, n)
    return lock.acquire(settings.db_url, n, owner, wait_s=settings.lock_wait_seconds,
                        stale_s=settings.lock_stale_seconds, keep_connection=keep_connection)


def mark_failed(settings: Settings, run_id: str, message: str) -> None:
    """Record a run that stopped before finalize (a batch raised, the process is going down)."""
    n = store.names(settings.index_name)
    try:
        with db.connection(settings.db_url) as conn:
            conn.execute(sql.SQL("""
                UPDATE {r} SET status = 'failed', finished_at = now(),
                    summary = coalesce(summary, plan) || jsonb_build_object('status', 'failed', 'message', %s::text)
                WHERE run_id = %s AND status = 'running'""").format(r=ident(n.runs)), (message[:2000], run_id))
            if store.exists(conn, n.releases):
                conn.execute(sql.SQL("""UPDATE {r} SET status = 'failed', ended_at = now(), message = %s
                                        WHERE run_id = %s AND status = 'candidate'""").format(r=ident(n.releases)),
                             (message[:2000], run_id))
            conn.commit()
    except Exception as exc:  # noqa: BLE001 - best effort while failing
        log.warning("could not record run %s as failed: %s", run_id, exc)


def mark_failed_by_owner(settings: Settings, owner: str, message: str) -> None:
    """Record every still-running run of ``owner`` as failed (the DAG's teardown)."""
    n = store.names(settings.index_name)
    with db.connection(settings.db_url) as conn:
        if not store.exists(conn, n.runs):
            return
        rows = conn.execute(sql.SQL("SELECT run_id FROM {r} WHERE owner = %s AND status = 'running'")
                            .format(r=ident(n.runs)), (owner,)).fetchall()
    for (run_id,) in rows:
        mark_failed(settings, run_id, message)


def run(settings: Settings, *, sources=None, full: bool = False, dry_run: bool = False,
        allow_mass_delete: bool = False, progress: bool = True, force: list[str] | None = None) -> dict:
    """The whole reindex in this process (the CLI). Returns the summary; raises JobFailed when the run failed."""
    run_id = new_run_id("cli")
    if dry_run:
        return summaries.jsonable(plan.make(settings, run_id=run_id, owner=None, sources=sources, full=full,
                                            dry_run=True, allow_mass_delete=allow_mass_delete,
                                            progress=progress).to_xcom())
    owner = lock.new_owner("cli")
    lease = acquire_lease(settings, owner, keep_connection=True)
    try:
        try:
            the_plan = plan.make(settings, run_id=run_id, owner=owner, sources=sources, full=full,
                                 allow_mass_delete=allow_mass_delete, progress=progress, force=force)
        except plan.Brake as exc:
            raise JobFailed(str(exc.message), fix=exc.fix, summary=summaries.jsonable(exc.summary)) from None
        todo = the_plan.new + the_plan.changed
        stats = []
        try:
            with Progress("embed", todo, bar=progress) as pr:
                for batch_no in the_plan.batches:
                    stats.append(batch.process(settings, the_plan, batch_no, owner=owner, progress=pr))
            return publish.finalize(settings, the_plan, stats, owner=owner)
        except JobFailed:
            raise
        except BaseException as exc:
            mark_failed(settings, run_id, f"{type(exc).__name__}: {exc}")
            raise
    finally:
        lease.release()


def rollback(settings: Settings) -> dict:
    """``tandem index rollback``: the previous published release is served again, in the same embedding space
    or in the previous one (under the lease)."""
    n = store.names(settings.index_name)
    owner = lock.new_owner("rollback")
    with acquire_lease(settings, owner, keep_connection=True):
        with db.connection(settings.db_url) as conn:
            result = releases.rollback(conn, n)
    log.info("rolled back index %s to version %s", n.index, result["index_version"])
    return result


__all__ = ["run", "rollback", "acquire_lease", "new_run_id", "mark_failed", "mark_failed_by_owner"]
